"""``odekern.nmode_solve``: the fused solve of the nmODE of CNM-UNet (cnm-unet Eq. 1)."""

from __future__ import annotations

import math

import torch

from odekern._choices import is_choice
from odekern.dispatch import check_backend_name, requested_backend
from odekern.ops.nmode_solve import reference
from odekern.ops.nmode_solve.config import (DEFAULT_MAX_NUM_STEPS, DEPRECATED_GRADIENTS, NmodeConfig,
                                            fixed_grid_step_count, real_number)
from odekern.ops.nmode_solve.op import (  # registers the op and its backends
    nmode_solve_op, select_backend, solve_without_graph, stats_capacity)
from odekern._warnings import warn_caller
from odekern.solvers.state import LOW_PRECISION, any_carries_tangent, inside_vmap, is_dense

__all__ = ["nmode_solve", "NmodeConfig", "canonical_gradient"]


def _as_number(name: str, v) -> float:
    """A real number or a one-element real tensor as a float; TypeError or ValueError naming
    ``name`` otherwise (times, step sizes and tolerances may be given either way)."""
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"{name} must be a scalar (a number or a one-element tensor), got shape {tuple(v.shape)}")
        if not v.dtype.is_floating_point and v.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name} must be a real number, got a tensor of dtype {v.dtype}")
        return float(v.item())
    return real_number(name, v)


def _as_time(name: str, t) -> float:
    t = _as_number(name, t)
    if not math.isfinite(t):
        raise ValueError(f"{name} must be finite, got {t}")
    return t


def canonical_gradient(gradient):
    """The gradient mode's current name; the former ones still work, with a warning."""
    if is_choice(gradient, DEPRECATED_GRADIENTS):
        new = DEPRECATED_GRADIENTS[gradient]
        warn_caller(f"gradient={gradient!r} is now called gradient={new!r} (the same gradient)",
                    DeprecationWarning)
        return new
    return gradient


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    """Whether ``shape`` broadcasts to ``target`` without changing it (torch.broadcast_shapes
    costs ~0.1 ms per call through torch._refs; this is the hot path of every solve)."""
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(reversed(shape), reversed(target)))


def _leading_broadcast(g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """g as a flat [G] tensor such that element e of flat y0 uses g[e % G] (backend contract).

    The leading dims where g has size 1 become the repeats; broadcasts inside the trailing
    block are materialised. Everything is differentiable, so autograd sums grad_g back."""
    nd = len(shape)
    gs = (1,) * (nd - g.dim()) + tuple(g.shape)
    first = next((i for i, s in enumerate(gs) if s != 1), nd)
    suffix = tuple(shape[first:])
    return g.reshape(gs[first:]).expand(suffix).reshape(-1)


def nmode_solve(y0: torch.Tensor, g: torch.Tensor, t0=0.0, t1=0.05, *, method: str = "dopri5",
                step_size: float | None = None, rtol: float = 1e-7, atol: float = 1e-9,
                control: str = "global", gradient: str = "checkpoint", return_f: bool = False,
                backend: str = "auto", max_num_steps: int = DEFAULT_MAX_NUM_STEPS):
    """Solve ``dy/dt = -y + sin^2(y + g)`` from ``t0`` to ``t1``, elementwise, in one fused pass.

    Args:
        y0: initial state, any shape, float32 or float64; float16/bfloat16 inputs are solved in
            float32 and the results rounded back to their dtype.
        g: the phase term (CNM-UNet's ``C(gamma)``), broadcastable to ``y0`` without changing
            its shape (e.g. ``[1, C, H, W]`` against ``[B, C, H, W]``); same dtype and device
            (a float16/bfloat16 ``g``, as autocast gives, is cast up to ``y0``'s dtype).
            Its gradient is summed over the broadcast dimensions.
        t0, t1: integration interval, ``t1 > t0`` (numbers or one-element tensors). Time
            tensors that require grad get the gradient of the exact solution (the ODE is
            autonomous: ``dy1/dt1 = f(y1) = -dy1/dt0``), as torchdiffeq's adjoint gives it.
        method: ``"dopri5"`` (adaptive, default) or a fixed-step method ``"rk4"`` (torchdiffeq's
            3/8 rule), ``"rk4_classic"``, ``"midpoint"``, ``"euler"`` (these need ``step_size``;
            the grid is torchdiffeq's: ``t0 + k*step_size``, the last point clipped to t1).
        rtol, atol: dopri5 tolerances (torchdiffeq's defaults and error ratio).
        control: dopri5 step-size control. ``"global"``: one step size for the whole tensor, chosen
            exactly as torchdiffeq's ``odeint`` does (RMS norm over all elements, same initial
            step), so results and step counts match it; needs one reduction per step.
            ``"per_element"``: each element runs that controller on its own scalar (its error
            norm is ``abs``), no cross-element sync, so a sample's result does not depend on
            the rest of the batch. Accuracy: at the same rtol it is less accurate than
            "global", because the global norm holds every element to the step the hardest one
            needs while each element alone takes a few large steps (CNM setting, float32
            [8,3,128,128], max |y(t1) - exact|: rtol 1e-7: global 4.0e-7, per_element 1.1e-5;
            rtol 1e-5: 3.4e-5 vs 3.8e-5); tighten rtol if you need more. Speed on CPU: lanes of
            32 elements with their own controllers (vectorised stages and controllers, a lane
            refilled as its element finishes); every element pays its own initial-step probe and
            a float64 controller, so at equal accuracy it costs 4.6x "global" in float32 and 2.9x
            in float64 here (docs/benchmarks.md). Fixed-step methods ignore ``control``.
        gradient: ``"checkpoint"`` (default): the gradient of the discrete solve (as backprop
            through the solver, step sizes held constant), recomputed per element from a few
            checkpoints: only y0 and g are saved, memory is O(1) in the number of steps.
            ``"adjoint"``: the continuous adjoint (Chen et al. 2018) per element, as
            torchdiffeq's ``odeint_adjoint`` (agrees with "checkpoint" to within the solver
            tolerance; unstable over long spans, where it raises); saves y0, g and y1, from
            which its backward solve starts (so, as with torchdiffeq, y1 must not be modified
            in place before the backward). ``"exact"`` is the former
            name of ``"checkpoint"`` (deprecated). Double backward is not supported.
        return_f: also return ``f0 = f(y0)`` and ``f1 = f(y(t1))`` (DUSE's statistics, cnm-unet
            Eq. 3-4), computed in the same pass and differentiable.
        backend: ``"auto"`` (CPU tensors: C++ kernels, else the reference; CUDA tensors: CUDA
            kernels, else Triton, else the reference), or ``"reference"``, ``"cpu"``,
            ``"cuda"``, ``"triton"``.
        max_num_steps: cap on step attempts; exceeding it raises RuntimeError (fixed-step
            methods: checked before anything is allocated).

    Composes with torch.func (grad, jacrev, jvp, jacfwd, hessian, vmap for fixed-step methods)
    and forward-mode AD: inputs inside a transform or carrying tangents are solved by the
    reference in plain differentiable torch ops. Outputs keep ``y0``'s memory format (e.g.
    channels_last).

    Raises:
        TypeError for arguments of the wrong type; ValueError for bad values, non-finite y0 or
        g, atol = 0 where y0 is 0 (dopri5), and |y0 + g| beyond the range of the fused kernels'
        sine (2^15 float32, 1e7 float64; the reference backend has none); when the solve
        fails, ``odekern.solvers.SolveError`` (step budget exhausted, step size underflow) or
        its subclass ``NonFiniteError`` (a non-finite y(t1), e.g. an explicit method
        overflowing at an unstable step size), as odeint raises them: ``RuntimeError``s, and
        ``AssertionError``s as torchdiffeq's failed solves are.

    Returns:
        ``y1`` shaped like ``y0``, or ``(y1, f0, f1)`` with ``return_f=True``.
    """
    if not isinstance(y0, torch.Tensor):
        raise TypeError(f"y0 must be a torch.Tensor, got {type(y0).__name__}")
    if not isinstance(g, torch.Tensor):
        raise TypeError(f"g must be a torch.Tensor, got {type(g).__name__}")
    if y0.dtype not in (torch.float32, torch.float64, *LOW_PRECISION):
        raise TypeError(f"y0 must be float32, float64, float16 or bfloat16, got {y0.dtype}")
    if g.dtype != y0.dtype and g.dtype in LOW_PRECISION and y0.dtype not in LOW_PRECISION:
        g = g.to(y0.dtype)  # e.g. C(gamma) computed under autocast for a float32 state
    if g.dtype != y0.dtype:
        raise TypeError(f"g must have y0's dtype {y0.dtype} (or a lower precision, cast up), got {g.dtype}")
    if g.device != y0.device:
        raise ValueError(f"g must be on y0's device {y0.device}, got {g.device}")
    if not _broadcasts_to(g.shape, y0.shape):
        raise ValueError(f"g of shape {tuple(g.shape)} must be broadcastable to y0's shape "
                         f"{tuple(y0.shape)} (without changing it)")
    t0_in, t1_in = t0, t1
    t0 = _as_time("t0", t0)
    t1 = _as_time("t1", t1)
    if not t1 > t0:
        raise ValueError(f"t1 must be greater than t0, got t0={t0}, t1={t1}")
    if not isinstance(return_f, bool):
        raise TypeError(f"return_f must be a bool, got {type(return_f).__name__}")
    check_backend_name(backend)
    if not torch.compiler.is_compiling():
        # The backend in force now (argument, use_backend block, environment), by name: the
        # backward op runs after a use_backend block has exited, and must run the same backend
        # as the forward (a compiled graph reads it inside the op instead, at run time).
        backend = requested_backend(backend) or "auto"
    gradient = canonical_gradient(gradient)
    step_size = None if step_size is None else _as_number("step_size", step_size)
    cfg = NmodeConfig(method=method, step_size=step_size, rtol=_as_number("rtol", rtol),
                      atol=_as_number("atol", atol), control=control, gradient=gradient,
                      max_num_steps=max_num_steps)
    if not cfg.adaptive:  # the step budget, before any backend allocates the grid
        fixed_grid_step_count(t0, t1, cfg.step_size, cfg.max_num_steps)
    if y0.is_meta:  # shapes only (e.g. a model built on the meta device): nothing to solve
        return (torch.empty_like(y0),) * 3 if return_f else torch.empty_like(y0)
    if cfg.adaptive and cfg.atol == 0.0 and not inside_vmap() and not bool((y0 != 0).all()):
        # Read only for atol = 0. Backends would fail apart there (a NaN first step, or a
        # misleading "non-finite state"), and odeint refuses the same case.
        raise ValueError(f"nmode_solve(method={method!r}): atol is 0 and y0 has elements equal to 0, whose "
                         "error scale atol + rtol * |y| is then 0 (every error ratio 0/0), so no step can "
                         "be sized; set atol > 0 (e.g. 1e-9)")
    if y0.dtype in LOW_PRECISION:
        # Solved in float32 (the controller and the stages need its range and precision), the
        # results rounded back to the inputs' dtype, as autocast does for precision-sensitive ops.
        out = nmode_solve(y0.float(), g.float(), t0_in, t1_in, method=method, step_size=step_size,
                          rtol=rtol, atol=atol, control=control, gradient=gradient, return_f=return_f,
                          backend=backend, max_num_steps=max_num_steps)
        return tuple(o.to(y0.dtype) for o in out) if return_f else out.to(y0.dtype)
    order = _memory_order(y0)
    if order is not None:
        return _solve_in_memory_order(order, y0, g, t0_in, t1_in, method=method, step_size=step_size,
                                      rtol=rtol, atol=atol, control=control, gradient=gradient,
                                      return_f=return_f, backend=backend, max_num_steps=max_num_steps)
    y_flat = y0.reshape(-1)
    g_flat = _leading_broadcast(g, y0.shape) if y0.numel() else g.reshape(-1)[:0]
    if not g_flat.is_contiguous():
        g_flat = g_flat.contiguous()
    if torch.compiler.is_compiling():
        y1, f0, f1, _stats = nmode_solve_op(y_flat, g_flat, t0, t1, *cfg.to_args(), return_f, backend,
                                            stats_capacity(t0, t1, cfg))
    elif any_carries_tangent([y0, g]):
        if inside_vmap() and cfg.adaptive:
            raise ValueError("nmode_solve(method='dopri5') cannot run under torch.func.vmap: its step "
                             "sizes depend on the state's values. Use a fixed-step method (e.g. "
                             "method='rk4', step_size=...) inside vmap, or solve the batch directly")
        # The reference in plain differentiable torch ops: every torch.func transform and
        # forward-mode AD see ordinary ops (the fused kernels and the custom op would drop
        # tangents or batch dimensions).
        y1, f0, f1, _stats = solve_without_graph(reference, y_flat, g_flat, t0, t1, cfg, return_f)
    elif torch.is_grad_enabled() and (y0.requires_grad or g.requires_grad):
        y1, f0, f1, _stats = nmode_solve_op(y_flat, g_flat, t0, t1, *cfg.to_args(), return_f, backend, -1)
    else:
        impl = select_backend(y_flat, g_flat, cfg, backend)
        y1, f0, f1, _stats = solve_without_graph(impl, y_flat, g_flat, t0, t1, cfg, return_f)
    y1 = y1.view(y0.shape)
    f0, f1 = (f0.view(y0.shape), f1.view(y0.shape)) if return_f else (None, None)
    shift = _time_shift(t0_in, t0, t1_in, t1, y0)
    if shift is not None:
        # The solution depends on time only through t1 - t0 (the ODE is autonomous), so
        # dy1/dt1 = f(y1) = -dy1/dt0, the gradient of the exact solution that torchdiffeq's
        # adjoint gives; f1 = f(y1) moves with df/dy(y1) * f(y1).
        rate = reference.rhs(y1.detach(), g.detach())
        if return_f:
            f1 = f1 + shift * ((torch.sin(2 * (y1.detach() + g.detach())) - 1) * rate)
        y1 = y1 + shift * rate
    return (y1, f0, f1) if return_f else y1


def _time_shift(t0_in, t0: float, t1_in, t1: float, like: torch.Tensor) -> torch.Tensor | None:
    """``(t1 - t0) - (t1 - t0).detach()`` from the caller's time tensors that require grad (a
    zero carrying their gradient), or None when neither does."""
    shift = None
    for t_in, t, sign in ((t1_in, t1, 1.0), (t0_in, t0, -1.0)):
        if isinstance(t_in, torch.Tensor) and t_in.requires_grad and torch.is_grad_enabled():
            term = sign * (t_in.reshape(()) - t).to(like.dtype)
            shift = term if shift is None else shift + term
    return shift


def _memory_order(y0: torch.Tensor) -> list[int] | None:
    """The dimension order in which a dense but permuted ``y0`` (e.g. channels_last) is
    contiguous, or None when ``y0`` is contiguous or not dense. Solving in that order keeps the
    caller's memory format and avoids a copy."""
    if y0.dim() < 2 or y0.is_contiguous() or not is_dense(y0):
        return None
    return sorted(range(y0.dim()), key=lambda d: -y0.stride(d))


def _solve_in_memory_order(order: list[int], y0: torch.Tensor, g: torch.Tensor, t0, t1, **kwargs):
    """``nmode_solve`` on ``y0`` and ``g`` permuted to ``order`` (elementwise, so the same
    solve), results permuted back: outputs have ``y0``'s shape and memory format."""
    g_full = g.reshape((1,) * (y0.dim() - g.dim()) + tuple(g.shape))
    inverse = sorted(range(len(order)), key=order.__getitem__)
    out = nmode_solve(y0.permute(order), g_full.permute(order), t0, t1, **kwargs)
    if kwargs["return_f"]:
        return tuple(o.permute(inverse) for o in out)
    return out.permute(inverse)
