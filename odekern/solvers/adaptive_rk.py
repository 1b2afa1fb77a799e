"""Adaptive embedded Runge-Kutta methods with dense output, each one a tableau (``tableaus.py``).

A method is data: its ``ButcherTableau`` gives the stages, the solution, the embedded error
weights and the dense output (``interpolation.DenseOutput.for_tableau``); ``adaptive_rk(tableau)``
makes its solver class. Step semantics match torchdiffeq's adaptive methods (``dopri5``,
``dopri8``, ``bosh3``, ``fehlberg2``, ``adaptive_heun``) so the same problem takes the same steps:
time is held in float64; the first step comes from ``controllers.select_initial_step``; steps are
never clipped to the output times (outputs come from the quartic dense output of the step that
covers them); the error ratio is ``norm(err / (atol + rtol * max(|y0|, |y1|)))`` and a step is
accepted when it is <= 1 (or when ``dt <= min_step``); the next step comes from
``controllers.IntegralController`` with the tableau's order; the last stage of an accepted step is
the next step's first (exact for FSAL tableaus, torchdiffeq's choice for the others);
``max_num_steps`` bounds the attempts per output interval.

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
import dataclasses
import math
from typing import Any

import torch

from odekern.solvers import interpolation, stages, state
from odekern.solvers.base import CALLBACK_NAMES, RHS, Perturb, Solver, SolveStatus, beside, store
from odekern.solvers.checks import (
    AssertedValueError,
    SolveError,
    check_on_max_steps,
    check_positive,
    check_step_bounds,
    raise_non_finite,
    time_points,
    zero_error_scale,
)
from odekern.solvers.controllers import (DFACTOR, IFACTOR, SAFETY, IntegralController, error_scale_has_zero,
                                        select_initial_step)
from odekern.solvers.explicit_rk import RKStepper
from odekern.solvers.norms import BUILT_IN_NORMS, rms_norm
from odekern.solvers.tableau import ButcherTableau
from odekern.solvers.tableaus import ADAPTIVE_HEUN, BOSH3, DOPRI5, DOPRI8, FEHLBERG2, TSIT5

Tensor = torch.Tensor

ADAPTIVE_OPTIONS = frozenset({"first_step", "safety", "ifactor", "dfactor", "min_step", "max_step", "max_num_steps",
                              "step_t", "jump_t", "norm", "control", "dtype", "on_max_steps"})


class AdaptiveRK(Solver):
    """An adaptive solver for the embedded tableau in the class attribute ``tableau``."""

    OPTIONS = ADAPTIVE_OPTIONS
    CALLBACKS = frozenset(CALLBACK_NAMES)
    tableau: ButcherTableau
    dense: interpolation.DenseOutput  # of the tableau (adaptive_rk)
    time_dtype = torch.float64

    def __init__(self, rhs: RHS, y0: Tensor, rtol: Any, atol: Any, *, method: str, norm: Any = None,
                 first_step: float | None = None, safety: float = SAFETY, ifactor: float = IFACTOR,
                 dfactor: float = DFACTOR, min_step: float = 0.0, max_step: float = math.inf,
                 max_num_steps: int = 2 ** 31 - 1, step_t: Any = None, jump_t: Any = None,
                 dtype: torch.dtype = torch.float64, on_max_steps: str = "raise"):
        super().__init__(rhs, y0, rtol, atol, method=method)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"options['dtype'] must be a floating torch.dtype (the dtype time is held in), got {dtype!r}")
        # torchdiffeq: time in ``dtype`` promoted with the state's dtype (float64 by default).
        self.time_dtype = torch.promote_types(dtype, state.real_dtype(state.first(y0).dtype))
        min_step, max_step = check_step_bounds(min_step, max_step)
        check_positive(first_step, "first_step")
        for name, v in (("safety", safety), ("ifactor", ifactor), ("dfactor", dfactor)):
            check_positive(v, name, allow_none=False)
        if isinstance(max_num_steps, bool) or not isinstance(max_num_steps, int):
            raise TypeError(f"options['max_num_steps'] must be an int >= 1, got {type(max_num_steps).__name__}")
        if max_num_steps < 1:
            # torchdiffeq's budget assert fails before the first step when max_num_steps is 0.
            raise AssertedValueError(f"options['max_num_steps'] must be an int >= 1, got {max_num_steps!r}")
        check_on_max_steps(on_max_steps)
        self.norm = rms_norm if norm is None else norm
        self.first_step = None if first_step is None else float(first_step)
        self.controller = IntegralController(order=self.tableau.order, safety=float(safety), ifactor=float(ifactor),
                                             dfactor=float(dfactor), min_step=min_step, max_step=max_step)
        self.max_num_steps = max_num_steps
        self.on_max_steps = on_max_steps
        self.step_t = time_points(step_t, "step_t")
        self.jump_t = time_points(jump_t, "jump_t")
        if set(self.step_t) & set(self.jump_t):
            raise ValueError("options['step_t'] and options['jump_t'] must not share any time point")
        self.tab = self.tableau.floats()
        reuse = not torch.is_grad_enabled()
        # The error estimate is computed without autograd, so its buffer is always reusable.
        self._stepper = RKStepper(self.tableau, y0, reuse, carry_last_stage=True)
        buf = (lambda: state.empty_like(y0)) if reuse else (lambda: None)
        self._y_buffers = [buf(), buf()]
        self._err_buffer = state.empty_like(y0)
        self._coeff_buffers = [None] + [buf() for _ in range(self.dense.degree)]

    @property
    def order(self) -> int:  # type: ignore[override]
        return self.tableau.order

    def _next_y_buffer(self, current: Tensor) -> Tensor | None:
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

    def integrate(self, t: Tensor, t_values: Any = None) -> tuple[Tensor, SolveStatus]:
        t = t.to(self.time_dtype)
        tv = t.tolist()
        solution = self._new_solution(len(t))
        rhs = self.rhs
        s = self._start(t[0])
        for i in range(1, len(tv)):
            attempts = 0
            while tv[i] > s.tf:
                if attempts >= self.max_num_steps:
                    msg = (f"odeint(method={self.method!r}): max_num_steps={self.max_num_steps} exceeded while "
                           f"integrating towards t={rhs.user_time(tv[i]):.6g}; reached t={rhs.user_time(s.tf):.6g} "
                           f"with last dt={s.last_dt:.3e} ({s.n_accepted} accepted, {s.n_rejected} rejected steps). "
                           "Increase options['max_num_steps'], loosen rtol/atol, or pass "
                           "options={'on_max_steps': 'return'} to get the partial solution and a SolveStatus.")
                    if self.on_max_steps == "raise":
                        raise SolveError(msg)
                    for j in range(i, len(tv)):
                        store(solution, j, None, s.y)
                    return solution, self._status(s, False, msg, s.tf, i)
                attempts += 1
                self._attempt(s, t.device)
            row = state.row(solution, i)
            store(solution, i, row, interpolation.evaluate(s.coeffs, s.t_prev, s.t, t[i], out=row))
        self._check_outputs_finite(solution, tv)
        return solution, self._status(s, True, "reached the last output time", tv[-1], len(tv))

    def _check_outputs_finite(self, solution: Tensor, tv: list[float]) -> None:
        """Every accepted state is finite (a non-finite attempt is retried smaller), but the dense
        output between them can still overflow for a state near its dtype's range: a NaN/inf
        answer is refused, not returned (torchdiffeq returns it). One pass and one read per solve."""
        if state.all_finite(solution):
            return
        bad = next(i for i in range(len(tv)) if not state.all_finite(state.row(solution, i)))
        raise_non_finite(self.method, self.rhs.user_time(tv[max(bad - 1, 0)]),
                         f"its value at the output time t={self.rhs.user_time(tv[bad]):.6g}, interpolated between "
                         "finite steps, overflowed: the state is near the limit of its dtype "
                         "(solve in float64, or rescale the state)")

    def _start(self, t0: Tensor) -> _State:
        """The solve's state at ``t0`` (in ``time_dtype``): f(t0, y0) and the first step size."""
        f0 = self.rhs(t0, self.y0)
        if self.first_step is None:
            dt = select_initial_step(self.rhs, t0, self.y0, f0, self.order - 1, self.rtol, self.atol, self.norm)
            if math.isnan(dt):
                self._refuse_start(t0, f0)
        else:
            dt = self.first_step
        return _State(t=t0, tf=float(t0.detach()), y=self.y0, f=f0, dt=dt, t_prev=t0)

    def _refuse_start(self, t0: Tensor, f0: Any) -> None:
        """No first step can be sized from y0 and f0 (their scaled norm is not finite): say why."""
        t = self.rhs.user_time(float(t0.detach()))
        if not state.all_finite(f0):
            raise_non_finite(self.method, t, "func(t0, y0) returned NaN/inf, so no first step can be chosen")
        self._refuse_zero_error_scale(self.y0, t)
        largest = max(float(c.detach().abs().max()) for c in state.components(f0) if c.numel())
        if isinstance(self.norm, BUILT_IN_NORMS):
            raise ValueError(f"odeint(method={self.method!r}): func(t0, y0) at t={t:.6g} is too large to measure "
                             f"against the tolerances: up to {largest:.3g}, which divided by the error scale "
                             "atol + rtol * |y0| overflows in the error norm; rescale the state or time, or "
                             "loosen atol")
        raise ValueError(f"odeint(method={self.method!r}): the norm of y0 or func(t0, y0) (up to {largest:.3g}), "
                         "divided by the error scale atol + rtol * |y0|, is not finite: options['norm'] returned "
                         "NaN/inf, or func(t0, y0) is too large for these tolerances")

    def _refuse_zero_error_scale(self, y: Any, t: float) -> None:
        if error_scale_has_zero(y, self.rtol, self.atol):
            raise zero_error_scale(self.method, t)

    def _status(self, s: _State, success: bool, message: str, t_reached: float, n_outputs: int) -> SolveStatus:
        return SolveStatus(success, message, self.rhs.user_time(t_reached), n_outputs, s.last_dt, s.n_accepted,
                           s.n_rejected, self.rhs.nfe)

    def _attempt(self, s: _State, device: torch.device) -> None:
        """One attempted step from ``s``; on acceptance ``s`` moves to the step's end."""
        rhs, ctrl = self.rhs, self.controller
        dt = ctrl.clamp(s.dt if math.isfinite(s.dt) else ctrl.min_step)
        callbacks = rhs.callbacks  # torchdiffeq's step callbacks: (t0, y0, dt) before / after each attempt
        if callbacks:
            rhs.callback("callback_step", s.t, s.y, torch.tensor(dt, dtype=self.time_dtype, device=device))
        t1f = s.tf + dt
        if not t1f > s.tf:
            if s.last_ratio_non_finite:
                self._refuse_zero_error_scale(s.y, rhs.user_time(s.tf))
                raise_non_finite(self.method, rhs.user_time(s.tf), "every step beyond this time, down to "
                                 f"dt={dt:.3e}, gave a non-finite error estimate (func returns NaN/inf?)")
            raise SolveError(f"odeint(method={self.method!r}): step size underflow at t={rhs.user_time(s.tf):.6g} "
                             f"(dt={dt:.3e}); the problem may be stiff or its solution non-finite here")
        t_land, on_jump = self._landing_point(s.tf, t1f)
        if t_land == t1f:
            t1 = s.t + dt
        else:  # shortened to hit a step_t / jump_t point exactly
            t1f, dt = t_land, t_land - s.tf
            # Exactly the point, and d(t1)/d(s.t) = 1 as for every other step (its size is held
            # constant): the times after it still move with t[0], so its derivative stays whole
            # (a constant t1 cut the path and lost most of it). Unconditional, so that forward-mode
            # tangents and torch.func transforms, which requires_grad does not show, keep it too.
            t1 = torch.tensor(t1f, dtype=self.time_dtype, device=device) + (s.t - s.t.detach())
        s.last_dt = dt
        # Landing on a discontinuity: the c = 1 stages see f from the side we come from.
        t_end = beside(t1, state.first(s.y).dtype, -1) if on_jump else None
        y1, ks = self._stepper.step(rhs, s.t, dt, t1, s.y, s.f, out=self._next_y_buffer(s.y), t_end_stages=t_end)
        ratio_t = stages.embedded_error_ratio(s.y, y1, dt, self.tab.b_err, ks, self.rtol, self.atol,
                                              self.norm, err_out=self._err_buffer)
        # The attempt's one host read: the ratio and a sum of y1 together. A y1 that overflowed
        # (which the error estimate alone cannot see) makes the sum non-finite; only then (a
        # NaN/inf, or finite values whose sum overflows) is y1 checked exactly, and a non-finite
        # y1 turns the ratio into NaN: the step is retried smaller like any other non-finite
        # attempt. (A sum is a fraction of the cost of isfinite().all() on a large state.)
        ratio, y1_sum = torch.stack([ratio_t.detach().to(torch.float64), _sum_probe(y1)]).tolist()
        if not math.isfinite(y1_sum) and not state.all_finite(y1):
            ratio = math.nan
        s.last_ratio_non_finite = not math.isfinite(ratio)
        if s.last_ratio_non_finite:
            # The trial step blew up: retry smaller, unless it cannot get smaller.
            if dt <= ctrl.min_step:
                self._refuse_zero_error_scale(s.y, rhs.user_time(s.tf))
                raise_non_finite(self.method, rhs.user_time(s.tf),
                                 f"a step of dt={dt:.3e} (min_step) gave a non-finite error estimate")
            s.n_rejected += 1
            if callbacks:
                rhs.callback("callback_reject_step", s.t, s.y, torch.tensor(dt, dtype=self.time_dtype, device=device))
            s.dt = ctrl.clamp(dt * ctrl.dfactor)
            return
        accepted = (ratio <= 1 and dt <= ctrl.max_step) or dt <= ctrl.min_step
        if callbacks:
            name = "callback_accept_step" if accepted else "callback_reject_step"
            rhs.callback(name, s.t, s.y, torch.tensor(dt, dtype=self.time_dtype, device=device))
        if accepted:
            s.coeffs = self.dense.fit(s.y, y1, ks, dt, out=self._coeff_buffers)
            s.t_prev, s.t, s.tf, s.y, s.f = s.t, t1, t1f, y1, ks[-1]
            if on_jump:
                # Past a discontinuity of f: take the slope from its far side.
                s.f = rhs(t1, y1, Perturb.NEXT)
            s.n_accepted += 1
        else:
            s.n_rejected += 1
        s.dt = ctrl.next_step(dt, ratio)


@dataclasses.dataclass
class _State:
    """Where an adaptive solve stands: the last accepted point and the next step to try."""

    t: Tensor  # time of the last accepted point (float64, may carry grad from the output times)
    tf: float  # the same as a Python float, for control flow
    y: Tensor
    f: Tensor  # func(t, y), reused as the next step's first stage (FSAL)
    dt: float  # next step size to try
    t_prev: Tensor  # start of the last accepted step (the dense-output interval is [t_prev, t])
    coeffs: list | None = None  # dense-output polynomial of the last accepted step
    last_dt: float = 0.0
    last_ratio_non_finite: bool = False
    n_accepted: int = 0
    n_rejected: int = 0


def adaptive_rk(tableau: ButcherTableau) -> type:
    """The adaptive solver class for an embedded ``tableau`` (a registry entry)."""
    if not tableau.adaptive:
        raise ValueError(f"tableau {tableau.name!r} has no error weights (b_err): it cannot adapt its steps")
    # The dense output's weights, once per method (exact fractions: a solve would otherwise spend
    # about as long on them as on a few steps); refuses a tableau without dense output here.
    dense = interpolation.DenseOutput.for_tableau(tableau)
    return type(f"AdaptiveRK_{tableau.name}", (AdaptiveRK,),
                {"tableau": tableau, "dense": dense,
                 "__doc__": f"Adaptive {tableau.name} (embedded pair, dense output)."})


Dopri5 = adaptive_rk(DOPRI5)
Dopri8 = adaptive_rk(DOPRI8)
Bosh3 = adaptive_rk(BOSH3)
Fehlberg2 = adaptive_rk(FEHLBERG2)
AdaptiveHeun = adaptive_rk(ADAPTIVE_HEUN)
Tsit5 = adaptive_rk(TSIT5)


def _sum_probe(y: state.State) -> torch.Tensor:
    """A float64 0-dim tensor that is finite when every element of ``y`` is (NaN and inf
    propagate through a sum; magnitudes of complex sums are taken)."""
    sums = [c.detach().sum() for c in state.components(y) if c.numel()]
    if not sums:
        return torch.zeros((), dtype=torch.float64, device=state.first(y).device)
    total = sums[0].abs().to(torch.float64) if len(sums) == 1 else \
        torch.stack([v.abs().to(torch.float64) for v in sums]).sum()
    return total
