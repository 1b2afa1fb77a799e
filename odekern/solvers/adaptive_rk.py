"""Adaptive embedded Runge-Kutta (Dormand-Prince 5(4)) with dense output.

Step semantics match torchdiffeq's ``dopri5`` so the same problem takes the same steps:
time is held in float64; the first step comes from ``controllers.select_initial_step``; steps are
never clipped to the output times (outputs come from the quartic dense output of the step that
covers them); the error ratio is ``norm(err / (atol + rtol * max(|y0|, |y1|)))`` and a step is
accepted when it is <= 1 (or when ``dt <= min_step``); the next step comes from
``controllers.IntegralController``; ``max_num_steps`` bounds the attempts per output interval.

Beyond torchdiffeq:

- exceeding ``max_num_steps`` raises ``RuntimeError`` naming the time reached and the last step
  size (``on_max_steps="raise"``, default) or stops and returns the partial solution with a
  ``SolveStatus`` (``on_max_steps="return"``);
- a non-finite error estimate rejects the step and shrinks it by ``dfactor`` (a trial step that
  blew up); if that cannot help (step at ``min_step`` or step-size underflow) a
  ``NonFiniteError`` / ``RuntimeError`` names the time reached.
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Optional, Sequence

import torch

from odekern.solvers import interpolation, stages
from odekern.solvers.base import RHS, SolveStatus, Solver, store
from odekern.solvers.checks import check_positive, check_step_bounds, raise_non_finite
from odekern.solvers.controllers import IntegralController, select_initial_step
from odekern.solvers.explicit_rk import RKStepper
from odekern.solvers.norms import rms_norm
from odekern.solvers.tableau import ButcherTableau
from odekern.solvers.tableaus import DOPRI5

Tensor = torch.Tensor

ADAPTIVE_OPTIONS = frozenset({"first_step", "safety", "ifactor", "dfactor", "min_step", "max_step", "max_num_steps",
                              "step_t", "jump_t", "norm", "on_max_steps"})
ON_MAX_STEPS = ("raise", "return")


def _time_points(values: Any, name: str) -> list[float]:
    if values is None:
        return []
    if isinstance(values, Tensor):
        values = values.reshape(-1).tolist()
    try:
        points = sorted(float(v) for v in values)
    except TypeError:
        raise TypeError(f"options['{name}'] must be a 1-D tensor or sequence of times") from None
    return points


def _beside(t: Tensor, dtype: torch.dtype, direction: int) -> Tensor:
    """The ``dtype`` float next to ``t`` (where ``func`` will see it), keeping d/dt = 1.

    The nudge is done in the state's dtype because the RHS receives time in that dtype: a float64
    nudge would round back onto the discontinuity for a float32 state.
    """
    t_y = t.to(dtype)
    with torch.no_grad():
        nudge = torch.nextafter(t_y, t_y + direction) - t_y
    return t_y + nudge


class AdaptiveRK(Solver):
    OPTIONS = ADAPTIVE_OPTIONS
    tableau: ButcherTableau = DOPRI5
    time_dtype = torch.float64

    def __init__(self, rhs: RHS, y0: Tensor, rtol: Any, atol: Any, *, method: str, norm: Any = None,
                 first_step: Optional[float] = None, safety: float = 0.9, ifactor: float = 10.0,
                 dfactor: float = 0.2, min_step: float = 0.0, max_step: float = math.inf,
                 max_num_steps: int = 2 ** 31 - 1, step_t: Any = None, jump_t: Any = None,
                 on_max_steps: str = "raise"):
        super().__init__(rhs, y0, rtol, atol, method=method)
        min_step, max_step = float(min_step), float(max_step)
        check_step_bounds(min_step, max_step)
        check_positive(first_step, "first_step")
        for name, v in (("safety", safety), ("ifactor", ifactor), ("dfactor", dfactor)):
            check_positive(v, name, allow_none=False)
        if isinstance(max_num_steps, bool) or not isinstance(max_num_steps, int) or max_num_steps < 1:
            raise ValueError(f"options['max_num_steps'] must be an int >= 1, got {max_num_steps!r}")
        if on_max_steps not in ON_MAX_STEPS:
            raise ValueError(f"options['on_max_steps'] must be one of {list(ON_MAX_STEPS)}, got {on_max_steps!r}")
        self.norm = rms_norm if norm is None else norm
        self.first_step = None if first_step is None else float(first_step)
        self.controller = IntegralController(order=self.tableau.order, safety=float(safety), ifactor=float(ifactor),
                                             dfactor=float(dfactor), min_step=min_step, max_step=max_step)
        self.max_num_steps = max_num_steps
        self.on_max_steps = on_max_steps
        self.step_t = _time_points(step_t, "step_t")
        self.jump_t = _time_points(jump_t, "jump_t")
        if set(self.step_t) & set(self.jump_t):
            raise ValueError("options['step_t'] and options['jump_t'] must not share any time point")
        self.dense = interpolation.QuarticDenseOutput.for_tableau(self.tableau)
        self.tab = self.tableau.floats()
        reuse = not torch.is_grad_enabled()
        # The error estimate is computed without autograd, so its buffer is always reusable.
        self._stepper = RKStepper(self.tableau, y0, reuse)
        buf = (lambda: torch.empty_like(y0)) if reuse else (lambda: None)  # noqa: E731
        self._y_buffers = [buf(), buf()]
        self._err_buffer = torch.empty_like(y0)
        self._coeff_buffers = [None, buf(), buf(), buf(), buf()]

    @property
    def order(self) -> int:  # type: ignore[override]
        return self.tableau.order

    def _next_y_buffer(self, current: Tensor) -> Optional[Tensor]:
        a, b = self._y_buffers
        return b if current is a else a

    def _landing_point(self, t0f: float, t1f: float) -> tuple[float, bool]:
        """Shorten the step to the first ``step_t`` / ``jump_t`` point inside it (jump wins)."""
        target, is_jump = t1f, False
        for points, jump in ((self.step_t, False), (self.jump_t, True)):
            k = bisect.bisect_right(points, t0f)
            if k < len(points) and points[k] < target:
                target, is_jump = points[k], jump
        return target, is_jump

    def integrate(self, t: Tensor) -> tuple[Tensor, SolveStatus]:
        t = t.to(self.time_dtype)
        tv = t.tolist()
        solution = self._new_solution(len(t))
        rhs, ctrl, tab = self.rhs, self.controller, self.tab
        t0, t0f, y0 = t[0], tv[0], self.y0
        f0 = rhs(t0, y0)
        if self.first_step is None:
            dt = select_initial_step(rhs, t0, y0, f0, self.order - 1, self.rtol, self.atol, self.norm)
        else:
            dt = self.first_step
        coeffs, t_prev = None, t0
        n_accepted = n_rejected = 0
        last_dt = dt
        last_ratio_non_finite = False
        for i in range(1, len(tv)):
            attempts = 0
            while tv[i] > t0f:
                if attempts >= self.max_num_steps:
                    msg = (f"odeint(method={self.method!r}): max_num_steps={self.max_num_steps} exceeded while "
                           f"integrating towards t={rhs.user_time(tv[i]):.6g}; reached t={rhs.user_time(t0f):.6g} "
                           f"with last dt={last_dt:.3e} ({n_accepted} accepted, {n_rejected} rejected steps). "
                           "Increase options['max_num_steps'], loosen rtol/atol, or pass "
                           "options={'on_max_steps': 'return'} to get the partial solution and a SolveStatus.")
                    if self.on_max_steps == "raise":
                        raise RuntimeError(msg)
                    for j in range(i, len(tv)):
                        store(solution, j, None, y0)
                    return solution, SolveStatus(False, msg, rhs.user_time(t0f), i, last_dt, n_accepted,
                                                 n_rejected, rhs.nfe)
                attempts += 1
                if not math.isfinite(dt):
                    dt = ctrl.min_step
                dt = ctrl.clamp(dt)
                t1f = t0f + dt
                if not t1f > t0f:
                    if last_ratio_non_finite:
                        raise_non_finite(self.method, rhs.user_time(t0f), "every step beyond this time, down to "
                                         f"dt={dt:.3e}, gave a non-finite error estimate (func returns NaN/inf?)")
                    raise RuntimeError(f"odeint(method={self.method!r}): step size underflow at "
                                       f"t={rhs.user_time(t0f):.6g} (dt={dt:.3e}); the problem may be stiff or "
                                       "its solution non-finite here")
                t_land, on_jump = self._landing_point(t0f, t1f)
                if t_land == t1f:
                    t1 = t0 + dt
                else:  # shortened to hit a step_t / jump_t point exactly
                    t1f, dt = t_land, t_land - t0f
                    t1 = torch.tensor(t1f, dtype=self.time_dtype, device=t.device)
                last_dt = dt
                # Landing on a discontinuity: the c = 1 stages see f from the side we come from.
                t_end = _beside(t1, y0.dtype, -1) if on_jump else None
                y1, ks = self._stepper.step(rhs, t0, dt, t1, y0, f0, out=self._next_y_buffer(y0),
                                            t_end_stages=t_end)
                ratio = float(stages.embedded_error_ratio(y0, y1, dt, tab.b_err, ks, self.rtol, self.atol,
                                                          self.norm, err_out=self._err_buffer))
                last_ratio_non_finite = not math.isfinite(ratio)
                if last_ratio_non_finite:
                    if dt <= ctrl.min_step:
                        raise_non_finite(self.method, rhs.user_time(t0f),
                                         f"a step of dt={dt:.3e} (min_step) gave a non-finite error estimate")
                    n_rejected += 1
                    dt = ctrl.clamp(dt * ctrl.dfactor)
                    continue
                accept = (ratio <= 1 and dt <= ctrl.max_step) or dt <= ctrl.min_step
                if accept:
                    if not bool(torch.isfinite(y1).all()):
                        raise_non_finite(self.method, rhs.user_time(t0f), f"the accepted step to "
                                         f"t={rhs.user_time(t1f):.6g} produced NaN/inf")
                    coeffs = self.dense.fit(y0, y1, ks, dt, out=self._coeff_buffers)
                    t_prev, t0, t0f, y0, f0 = t0, t1, t1f, y1, ks[-1]
                    if on_jump:
                        # Past a discontinuity of f: take the slope from its far side.
                        f0 = rhs(_beside(t1, y0.dtype, +1), y1)
                    n_accepted += 1
                else:
                    n_rejected += 1
                dt = ctrl.next_step(dt, ratio)
            row = solution[i]
            store(solution, i, row, interpolation.evaluate(coeffs, t_prev, t0, t[i], out=row))
        return solution, SolveStatus(True, "reached the last output time", rhs.user_time(tv[-1]), len(tv),
                                     last_dt, n_accepted, n_rejected, rhs.nfe)


class Dopri5(AdaptiveRK):
    """Dormand-Prince 5(4), FSAL, quartic dense output (torchdiffeq's ``dopri5``)."""

    tableau = DOPRI5
