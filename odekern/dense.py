"""``odeint_dense``: the dense output of a whole adaptive solve (torchdiffeq's API).

The solve from ``t0`` to ``t1`` keeps every accepted step's interpolating polynomial; the
returned function evaluates the solution anywhere in ``[t0, t1]`` without further RHS calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from odekern.odeint import build_solver, checked_inputs
from odekern.solvers import interpolation, state
from odekern.solvers.checks import (AssertedTypeError, AssertedValueError, SolveError, check_time_scalar,
                                    from_numpy, options_from_numpy)
from odekern.solvers.registry import ADAPTIVE_METHODS

Tensor = torch.Tensor


def odeint_dense(func: Callable, y0: Tensor, t0: Any, t1: Any, *, rtol: Any = 1e-7, atol: Any = 1e-9,
                 method: str | None = None, options: dict | None = None) -> Callable[[Tensor], Tensor]:
    """Solve ``dy/dt = func(t, y)`` from ``(t0, y0)`` to ``t1``; return ``dense(t_eval)``.

    Same signature as ``torchdiffeq.odeint_dense`` (which takes only dopri5; here any adaptive
    method). ``dense(t_eval)``, for a number or a 1-D tensor of times in ``[t0, t1]`` (either
    order of ``t0``, ``t1``), returns the solution there, shaped ``[*t_eval.shape, *y0.shape]``;
    it is differentiable as the solve was (no new RHS calls). ``y0`` must be a tensor.
    """
    if not isinstance(y0, Tensor):
        raise AssertedTypeError(f"odeint_dense: y0 must be a torch.Tensor (tuple states are not supported, as "
                                f"in torchdiffeq), got {type(y0).__name__}")
    # Times given as numbers are taken in the state's precision (torch.as_tensor would make a
    # Python float float32 and round it even for a float64 state).
    t0, t1 = from_numpy(t0), from_numpy(t1)
    check_time_scalar(t0, "odeint_dense: t0")
    check_time_scalar(t1, "odeint_dense: t1")
    like = dict(dtype=state.real_dtype(y0.dtype), device=y0.device)
    t0 = t0 if isinstance(t0, Tensor) and t0.is_floating_point() else torch.as_tensor(t0, **like)
    t1 = t1.to(t0) if isinstance(t1, Tensor) else torch.as_tensor(t1, dtype=t0.dtype, device=t0.device)
    t = torch.stack([t0.reshape(()), t1.reshape(())])
    if not torch.compiler.is_compiling() and bool(t[0] == t[1]):
        raise AssertedValueError(f"odeint_dense: t0 and t1 must differ, got both {float(t0)}")
    rtol, atol, options = from_numpy(rtol), from_numpy(atol), options_from_numpy(options)
    method, y0, t, _, options, reverse, _ = checked_inputs(func, y0, t, rtol, atol, method, options)
    if method not in ADAPTIVE_METHODS:
        raise ValueError(f"odeint_dense needs an adaptive method (one of {sorted(ADAPTIVE_METHODS)}), got {method!r}")
    options.pop("on_max_steps", None)  # the solve below always raises when it runs out of steps
    solver = build_solver(func, y0, rtol, atol, method, options, reverse)
    ts = (-t if reverse else t).to(solver.time_dtype)
    device = y0.device
    s = solver._start(ts[0])
    knots, pieces, attempts = [s.t], [], 0
    end = float(ts[1].detach())
    while s.tf < end:
        if attempts >= solver.max_num_steps:
            raise SolveError(f"odeint_dense(method={method!r}): max_num_steps={solver.max_num_steps} exceeded; "
                             f"reached t={solver.rhs.user_time(s.tf):.6g}")
        accepted = s.n_accepted
        solver._attempt(s, device)
        attempts += 1
        if s.n_accepted != accepted:
            knots.append(s.t)
            # The solver reuses its coefficient buffers when nothing is recorded: keep copies.
            pieces.append([c if c.requires_grad else c.clone() for c in s.coeffs])
    knot_values = torch.stack([k.detach() for k in knots]).cpu()
    sign = -1.0 if reverse else 1.0

    def dense(t_eval: Any) -> Tensor:
        te = torch.as_tensor(t_eval, dtype=solver.time_dtype)
        flat = (sign * te).reshape(-1)
        lo, hi = float(ts[0].detach()), end  # solver time; the last step may overshoot ``end``
        inside = (flat.detach().cpu() >= lo) & (flat.detach().cpu() <= hi)
        outside = ~inside  # NaN is outside too: it would select a piece and come back as NaN
        if bool(outside.any()):
            raise ValueError(f"odeint_dense: t_eval must lie in [{min(sign * lo, sign * hi):.6g}, "
                             f"{max(sign * lo, sign * hi):.6g}], got {te.reshape(-1)[outside].tolist()}")
        index = torch.searchsorted(knot_values, flat.detach().cpu(), side="right").clamp(1, len(pieces))
        rows = [interpolation.evaluate(pieces[i - 1], knots[i - 1], knots[i], x.to(device))
                for i, x in zip(index.tolist(), flat)]
        return torch.stack(rows).reshape(*te.shape, *y0.shape) if rows else y0.new_empty(*te.shape, *y0.shape)

    return dense


__all__ = ["odeint_dense"]
