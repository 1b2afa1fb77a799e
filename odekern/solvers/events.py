"""Integrate until an event: the time where ``event_fn(t, y)`` changes sign (torchdiffeq's rules).

``odeint(..., event_fn=...)`` steps the solver from ``t0`` until the (combined) event function's
sign differs from its sign at ``t0``, then bisects on the last step's interpolant to the
tolerance ``atol``. Adaptive methods use their dense output, fixed-grid methods (which need
``step_size``) their linear or cubic interpolation, as torchdiffeq does. The event time carries
no gradient here; ``odekern.odeint_event`` attaches its implicit-function gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from odekern.solvers import interpolation, stages, state
from odekern.solvers.checks import AssertedValueError, NonFiniteError, SolveError

Tensor = torch.Tensor
EventFn = Callable[[Tensor, Any], Tensor]

# torchdiffeq's bound on a fixed-grid event search (steps of ``step_size``).
MAX_FIXED_GRID_EVENT_STEPS = 20000
# The adaptive search's bound unless options['max_num_steps'] sets one. The search has no end
# time, so torchdiffeq's budget there (2**31 - 1 attempts) turns an event that never comes into
# a hang; bounded as fixed grids are, with an error that says how to search further.
ADAPTIVE_EVENT_STEPS = 100_000


def combine_event_functions(event_fn: EventFn, t0: Tensor, y0: state.State) -> EventFn:
    """One scalar event function from a possibly multivariate one: every component is made
    positive at ``t0`` and the minimum is taken, so the first component to cross zero wins."""
    with torch.no_grad():
        initial_signs = torch.sign(event_fn(t0, y0))

    def combined(t: Tensor, y: state.State) -> Tensor:
        return torch.min(event_fn(t, y) * initial_signs)

    return combined


def event_tolerance(atol: Any) -> float:
    """The bisection tolerance: ``atol``, which must be one number here."""
    if isinstance(atol, Tensor):
        if atol.numel() != 1:
            raise ValueError("odeint(event_fn=...) needs a scalar atol: it is the tolerance on the event time")
        return float(atol)
    if isinstance(atol, tuple):
        raise ValueError("odeint(event_fn=...) needs a scalar atol: it is the tolerance on the event time")
    return float(atol)


def find_event(interp: Callable[[Tensor], state.State], sign0: Tensor, t0: Tensor, t1: Tensor,
               event_fn: EventFn, tol: float) -> tuple[Tensor, state.State]:
    """Bisect ``[t0, t1]`` (where the event's sign leaves ``sign0``) down to width ``tol``.

    Returns the event time (no gradient) and the interpolated state there (differentiable
    through the interpolant)."""
    with torch.no_grad():
        ratio = float((t1 - t0) / tol)
        n_iters = math.ceil(math.log(ratio) / math.log(2.0)) if ratio > 1 and math.isfinite(ratio) else 0
        for _ in range(n_iters):
            t_mid = (t1 + t0) / 2.0
            same = sign0 == torch.sign(event_fn(t_mid, interp(t_mid)))
            t0 = torch.where(same, t_mid, t0)
            t1 = torch.where(same, t1, t_mid)
        event_t = (t0 + t1) / 2.0
    return event_t, interp(event_t)


def adaptive_until_event(solver, t0: Tensor, event_fn: EventFn, tol: float,
                         max_steps: int) -> tuple[Tensor, state.State]:
    """An adaptive RK solver (``odekern.solvers.adaptive_rk``) stepped until the event, at most
    ``max_steps`` attempts."""
    device = state.first(solver.y0).device
    t0 = t0.to(device=device, dtype=solver.time_dtype)
    s = solver._start(t0)
    if bool(event_fn(s.t, s.y) == 0):
        return s.t, s.y
    sign0 = torch.sign(event_fn(s.t, s.y))
    attempts = 0
    while bool(sign0 == torch.sign(event_fn(s.t, s.y))):
        if attempts >= max_steps:
            raise SolveError(f"odeint(method={solver.method!r}, event_fn=...): max_num_steps={max_steps} "
                             f"exceeded before the event; reached t={solver.rhs.user_time(s.tf):.6g}. Increase "
                             "options['max_num_steps'] or check that event_fn crosses zero")
        attempts += 1
        solver._attempt(s, device)
    coeffs, t_prev, t_end = s.coeffs, s.t_prev, s.t
    return find_event(lambda t: interpolation.evaluate(coeffs, t_prev, t_end, t), sign0, t_prev, t_end, event_fn, tol)


def fixed_grid_until_event(solver, t0: Tensor, event_fn: EventFn, tol: float) -> tuple[Tensor, state.State]:
    """A fixed-grid solver stepped by ``step_size`` from ``t0`` until the event (at most
    ``MAX_FIXED_GRID_EVENT_STEPS`` steps, as torchdiffeq)."""
    if solver.step_size is None:
        raise AssertedValueError(f"odeint(method={solver.method!r}, event_fn=...): event handling on a fixed grid "
                               "needs options['step_size'] (the grid is open-ended)")
    y_start = solver.y0
    t0 = t0.to(state.real_dtype(state.first(y_start).dtype))  # torchdiffeq steps time in the state's (real) dtype here
    dt = solver.step_size
    y0 = y_start
    sign0 = torch.sign(event_fn(t0, y0))
    solver._before_integrate()
    for _ in range(MAX_FIXED_GRID_EVENT_STEPS):
        t1 = t0 + dt
        y1, f0 = solver._step(t0, dt, t1, y0)
        if not state.all_finite(y1):
            raise NonFiniteError(f"odeint(method={solver.method!r}, event_fn=...): the solution became non-finite "
                                 f"(NaN or inf) in the step to t={solver.rhs.user_time(t1):.6g} before the event")
        if bool(sign0 != torch.sign(event_fn(t1, y1))):
            return find_event(_step_interpolant(solver, t0, t1, y0, y1, f0), sign0, t0, t1, event_fn, tol)
        t0, y0 = t1, y1  # the solver's double buffers keep the last two states apart
    raise RuntimeError(f"Reached maximum number of iterations {MAX_FIXED_GRID_EVENT_STEPS}.")


def _step_interpolant(solver, t0, t1, y0, y1, f0) -> Callable[[Tensor], state.State]:
    dt = t1 - t0
    if solver.interp == "linear":
        def linear(t):
            if bool(t == t0):
                return y0
            if bool(t == t1):
                return y1
            return stages.lerp(y0, y1, (t - t0) / dt)
        return linear
    f1 = solver.rhs(t1, y1)
    return lambda t: stages.hermite(y0, f0, y1, f1, dt, (t - t0) / dt)


def until_event(solver, t0: Tensor, event_fn: EventFn,
                max_num_steps: int | None = None) -> tuple[Tensor, state.State]:
    """Dispatch on the solver kind; methods without a step loop (``scipy_solver``) are refused.
    ``max_num_steps``: the user's options['max_num_steps'] (checked by the solver), or None for
    the adaptive search's own budget."""
    tol = event_tolerance(solver.atol)
    if hasattr(solver, "_start") and hasattr(solver, "_attempt"):
        max_steps = ADAPTIVE_EVENT_STEPS if max_num_steps is None else max_num_steps
        return adaptive_until_event(solver, t0, event_fn, tol, max_steps)
    if hasattr(solver, "_step") and hasattr(solver, "step_size"):
        return fixed_grid_until_event(solver, t0, event_fn, tol)
    raise ValueError(f"odeint(method={solver.method!r}) does not support event_fn")
