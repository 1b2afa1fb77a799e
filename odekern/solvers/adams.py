"""Adams-Bashforth (explicit) and Adams-Bashforth-Moulton (predictor-corrector) on a fixed grid.

Behaviour matches torchdiffeq's ``explicit_adams`` / ``implicit_adams``:

- every step evaluates ``f(t_n, y_n)`` and pushes it on a history of at most ``max_order - 1``
  slopes (newest first);
- while fewer than 3 slopes are known the step is an RK4 (3/8 rule) step;
- otherwise the predictor is the Bashforth rule using all ``m`` known slopes; the implicit method
  then iterates the Moulton corrector (``m + 1`` slopes incl. the new point) up to ``max_iters``
  times until two iterates agree to ``rtol``/``atol`` in the max norm; if they never do, it warns
  and drops the oldest slope (lowering the order) before continuing.

Observed global orders (tests/solvers/test_analytic.py): explicit_adams 4 with ``max_order=5``
(its default AB11 steady state is unstable unless the step is tiny, as in torchdiffeq);
implicit_adams 5 (Moulton corrector of order >= 5; the RK4 start-up's local error is O(h^5)).
``order`` below is torchdiffeq's nominal value.
"""

from __future__ import annotations

import collections
import warnings
from typing import Any

import torch

from odekern.solvers import stages, state
from odekern.solvers.adams_coefficients import MAX_ORDER, bashforth, moulton
from odekern.solvers.base import RHS
from odekern.solvers.checks import AssertedValueError
from odekern.solvers.explicit_rk import RKStepper
from odekern.solvers.fixed_grid import FIXED_GRID_OPTIONS, FixedGridSolver
from odekern.solvers.tableaus import RK4_38

Tensor = torch.Tensor

# Fewer known slopes than this and the step falls back to RK4 (torchdiffeq's _MIN_ORDER - 1).
_MIN_HISTORY = 3


class AdamsBashforthMoulton(FixedGridSolver):
    OPTIONS = FIXED_GRID_OPTIONS | {"max_order", "max_iters", "implicit"}
    # The multistep coefficients assume equal steps: differentiating a moved grid point
    # differentiates that assumption (a step_size grid point moved with an output time gave
    # derivatives ~100x |f|), so the step_size grid stays torchdiffeq's and a solve whose inner
    # times are differentiated warns.
    ONE_STEP = False
    order = 4
    implicit = True

    def __init__(self, rhs: RHS, y0: Tensor, rtol: Any, atol: Any, *, max_order: int = MAX_ORDER,
                 max_iters: int = 4, implicit: bool | None = None, **options: Any):
        super().__init__(rhs, y0, rtol, atol, **options)
        if implicit is not None:
            if type(self).implicit is False:
                # torchdiffeq's explicit_adams passes implicit=False itself: a second value is a TypeError.
                raise TypeError(f"options['implicit'] cannot be given to method {self.method!r}: "
                                "it is always explicit; use method='implicit_adams' with implicit=True/False")
            self.implicit = bool(implicit)
        if isinstance(max_order, bool) or not isinstance(max_order, int) or not 1 <= max_order <= MAX_ORDER:
            raise AssertedValueError(f"options['max_order'] must be an int in [1, {MAX_ORDER}], got {max_order!r}")
        if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
            raise ValueError(f"options['max_iters'] must be an int >= 1, got {max_iters!r}")
        if max_order <= _MIN_HISTORY:
            # torchdiffeq's text first, so warning filters written for it keep matching.
            warnings.warn(f"max_order is below {_MIN_HISTORY + 1}, so the solver reduces to `rk4`. "
                          f"(options['max_order']={max_order}: every step is an RK4 step)")
        self.max_order = max_order
        self.max_iters = max_iters
        # torchdiffeq's text first, so filters written for it match. The same text at every step:
        # Python's default filter then shows it once, as torchdiffeq's, instead of once per
        # step of every solve, and no time is read from the device to name the step.
        self._unconverged_message = (
            f"Functional iteration did not converge. Solution may be incorrect. ({self.method}: the corrector "
            f"did not converge in {max_iters} iteration{'s' if max_iters != 1 else ''} at some step; the "
            "order is lowered at each such step)")
        self._bashforth = {m: bashforth(m).floats() for m in range(1, max_order)}
        self._moulton = {m + 1: moulton(m + 1).floats() for m in range(1, max_order)}
        self._rk4 = RKStepper(RK4_38, y0, self._reuse_buffers)
        self._stages = self._rk4.stages
        buffer = state.empty_like if self._reuse_buffers else (lambda _: None)
        self._dy_buffers = [buffer(y0), buffer(y0)]
        self._corrector_input = buffer(y0)
        self._known_buffer = buffer(y0)
        self._history: collections.deque = collections.deque(maxlen=max_order - 1)

    def _before_integrate(self) -> None:
        self._history.clear()

    def _step(self, t0, dt, t1, y0):
        f0 = self.rhs(t0, y0, self._start_perturb())
        if self._reuse_buffers:
            # The history outlives the state buffers: a slope that is (a view of) the RHS's input
            # (e.g. the velocity of a second-order state) must be copied before they are reused.
            f0 = state.map_state(lambda f: f.clone() if state.shares_storage(f, y0) else f, f0)
        self._history.appendleft(f0)
        m = min(len(self._history), self.max_order - 1)
        if m < _MIN_HISTORY:
            y1, _ = self._rk4.step(self.rhs, t0, dt, t1, y0, f0, out=self._next_buffer(y0),
                                   t_end_stages=self._end_time(t1))
            return y1, f0
        history = list(self._history)[:m]
        dy = self._stages.adams_increment(dt, self._bashforth[m], history, out=self._dy_buffers[0])
        if self.implicit:
            dy = self._correct(t1, dt, y0, dy, history, m)
        return self._stages.add(y0, dy, out=self._next_buffer(y0)), f0

    def _correct(self, t1, dt, y0, dy, history, m):
        weights = self._moulton[m + 1]
        known = self._stages.adams_increment(dt, weights[1:], history, out=self._known_buffer)
        converged = False
        for it in range(self.max_iters):
            dy_old = dy
            f1 = self.rhs(t1, self._stages.add(y0, dy_old, out=self._corrector_input), self._end_perturb())
            dy = self._stages.linear_combination((weights[0],), (f1,), scale=dt, base=known,
                                           out=self._dy_buffers[(it + 1) % 2])
            # The convergence test only steers the iteration: nothing of it is recorded.
            converged = stages.corrector_converged(dy_old, dy, self.rtol, self.atol)
            if converged:
                break
        if not converged:
            warnings.warn(self._unconverged_message)
            self._history.pop()
        return dy


class AdamsBashforth(AdamsBashforthMoulton):
    # ``max_iters`` is accepted (and unused) as in torchdiffeq; ``implicit`` is refused (TypeError).
    OPTIONS = FIXED_GRID_OPTIONS | {"max_order", "max_iters", "implicit"}
    implicit = False
