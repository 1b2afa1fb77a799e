"""Continuous adjoint sensitivities (Chen et al. 2018, "Neural Ordinary Differential Equations").

``odeint_adjoint`` has torchdiffeq's signature and defaults. The forward solve runs under
``torch.no_grad`` and keeps only the solution at the requested output times, so the memory held
for backward does not grow with the number of solver steps. The backward pass integrates the
augmented state

    s = [a_t, y, a_y, a_theta_1, ..., a_theta_k]          (a_* are adjoints: dL/d*)
    ds/dt = [-a_y . df/dt, f(t, y), -a_y . df/dy, -a_y . df/dtheta_1, ...]

from each output time back to the previous one with ``odekern.odeint``, restarting ``y`` from
the stored forward value and adding the incoming ``dL/dy(t_i)`` at every output time.

The augmented state is packed into one flat tensor (``_AugmentedLayout``) so the backward
solve needs nothing beyond plain-tensor support from the solver; the adaptive error norm is
the same as torchdiffeq's default adjoint norm (max over the RMS norms of the parts), so both
libraries take the same backward steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from odekern.backends import requested_backend, use_backend
from odekern.solvers.checks import check_params, check_state, check_state_matches_time, check_time
from odekern.solvers.norms import PER_SAMPLE, resolve_norm, rms_norm
from odekern.solvers.tuples import TupleRHS, flat_to_tuple, tuple_to_flat


def _solver() -> Callable:
    """The forward solver: ``odekern.odeint`` (imported late: odeint.py re-exports this module)."""
    from odekern.odeint import odeint

    return odeint


# --------------------------------------------------------------------------- flat augmented state


@dataclasses.dataclass(frozen=True)
class _AugmentedLayout:
    """Where each part of the augmented backward state lives inside one flat 1-D tensor."""

    y_shape: torch.Size
    param_shapes: tuple[torch.Size, ...]

    @property
    def y_numel(self) -> int:
        return math.prod(self.y_shape)

    def sizes(self) -> list[int]:
        return [1, self.y_numel, self.y_numel] + [math.prod(s) for s in self.param_shapes]

    def pack(
        self,
        adj_t: torch.Tensor,
        y: torch.Tensor,
        adj_y: torch.Tensor,
        adj_params: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        parts = [adj_t.reshape(1), y.reshape(-1), adj_y.reshape(-1)]
        parts += [p.reshape(-1).to(y.dtype) for p in adj_params]
        return torch.cat(parts)

    def unpack(self, flat: torch.Tensor):
        """Views (no copies) of ``flat`` as ``(adj_t, y, adj_y, [adj_param, ...])``."""
        adj_t, y, adj_y, *adj_params = torch.split(flat, self.sizes())
        adj_params = [p.view(s) for p, s in zip(adj_params, self.param_shapes)]
        return adj_t.view(()), y.view(self.y_shape), adj_y.view(self.y_shape), adj_params


class _AdjointNorm:
    """Error norm of the backward solve: max of the RMS norms of t-, y-, a_y- and each a_theta part.

    Taking the max per part (not one RMS over everything) stops a huge parameter vector from
    diluting the error of the state, and equals torchdiffeq's default adjoint norm.
    """

    def __init__(
        self, layout: _AugmentedLayout, state_norm: Callable[[torch.Tensor], torch.Tensor]
    ):
        self.layout = layout
        self.state_norm = state_norm

    def __call__(self, flat: torch.Tensor) -> torch.Tensor:
        adj_t, y, adj_y, adj_params = self.layout.unpack(flat)
        norms = [
            adj_t.abs(),
            torch.as_tensor(self.state_norm(y)),
            torch.as_tensor(self.state_norm(adj_y)),
        ]
        norms += [rms_norm(p) for p in adj_params if p.numel()]
        return torch.stack([n.to(flat.dtype) for n in norms]).max()


class _AugmentedDynamics:
    """Right-hand side of the augmented backward ODE on the flat state."""

    def __init__(
        self,
        func: Callable,
        layout: _AugmentedLayout,
        params: tuple[torch.Tensor, ...],
        t_requires_grad: bool,
    ):
        self.func = func
        self.layout = layout
        self.params = params
        self.t_requires_grad = t_requires_grad

    def __call__(self, t: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        _, y, adj_y, _ = self.layout.unpack(flat)
        with torch.enable_grad():
            t_in = t.detach().requires_grad_(self.t_requires_grad)
            y_in = y.detach().requires_grad_(True)
            f = self.func(t_in, y_in)
            if not isinstance(f, torch.Tensor) or f.shape != y_in.shape:
                raise RuntimeError(
                    f"odeint_adjoint: func must return a tensor shaped like the state {tuple(y_in.shape)}, "
                    f"got {type(f).__name__ if not isinstance(f, torch.Tensor) else tuple(f.shape)}"
                )
            wrt = ((t_in,) if self.t_requires_grad else ()) + (y_in,) + self.params
            if f.requires_grad:
                vjps = torch.autograd.grad(f, wrt, -adj_y, allow_unused=True)
            else:  # f depends on none of them (e.g. a constant field): every vjp is zero
                vjps = (None,) * len(wrt)
        if not self.t_requires_grad:
            vjps = (None,) + tuple(vjps)
        vjp_t, vjp_y, *vjp_params = vjps
        vjp_t = torch.zeros((), dtype=flat.dtype, device=flat.device) if vjp_t is None else vjp_t
        vjp_y = torch.zeros_like(y) if vjp_y is None else vjp_y
        vjp_params = [
            torch.zeros_like(p) if g is None else g for p, g in zip(self.params, vjp_params)
        ]
        return self.layout.pack(vjp_t.to(flat.dtype), f.detach(), vjp_y, vjp_params)


# --------------------------------------------------------------------------- autograd.Function


@dataclasses.dataclass
class _AdjointConfig:
    func: Callable
    rtol: Any
    atol: Any
    method: str | None
    options: dict | None
    adjoint_rtol: Any
    adjoint_atol: Any
    adjoint_method: str | None
    adjoint_options: dict
    state_norm: Callable[[torch.Tensor], torch.Tensor]
    tuple_shapes: list[torch.Size] | None  # the forward solves the tuple; backward sees it flat
    backward_func: Callable  # func on the flat state


class _OdeintAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cfg: _AdjointConfig, y0: torch.Tensor, t: torch.Tensor, *params: torch.Tensor):
        # no_grad: nothing of the solver's steps is recorded, so memory is flat in the step count.
        with torch.no_grad():
            state = y0 if cfg.tuple_shapes is None else flat_to_tuple(y0, cfg.tuple_shapes)
            ys = _solver()(
                cfg.func,
                state,
                t,
                rtol=cfg.rtol,
                atol=cfg.atol,
                method=cfg.method,
                options=cfg.options,
            )
            if cfg.tuple_shapes is not None:
                ys = torch.cat([part.reshape(len(t), -1) for part in ys], dim=1)
        ctx.cfg = cfg
        ctx.t_requires_grad = t.requires_grad
        # backward() runs after any use_backend(...) block has exited: remember the choice.
        ctx.backend = requested_backend()
        ctx.save_for_backward(t, ys, *params)
        return ys

    @staticmethod
    def backward(ctx, grad_ys: torch.Tensor):
        cfg: _AdjointConfig = ctx.cfg
        t, ys, *params = ctx.saved_tensors
        params = tuple(params)
        layout = _AugmentedLayout(ys.shape[1:], tuple(p.shape for p in params))
        dynamics = _AugmentedDynamics(cfg.backward_func, layout, params, ctx.t_requires_grad)
        adjoint_options = dict(cfg.adjoint_options)
        adjoint_options.setdefault("norm", _AdjointNorm(layout, cfg.state_norm))
        solve = _solver()

        forced = use_backend(ctx.backend) if ctx.backend is not None else contextlib.nullcontext()
        with torch.no_grad(), forced:
            grad_ys = grad_ys.to(ys.dtype)
            adj_t = torch.zeros((), dtype=ys.dtype, device=ys.device)
            adj_y = grad_ys[-1].clone()
            adj_params = [torch.zeros_like(p, dtype=ys.dtype) for p in params]
            time_grads = (
                torch.zeros(len(t), dtype=t.dtype, device=t.device) if ctx.t_requires_grad else None
            )

            for i in range(len(t) - 1, 0, -1):
                if ctx.t_requires_grad:
                    # dL/dt_i from the output itself: the solution moves with velocity f(t_i, y_i).
                    direct = (
                        cfg.backward_func(t[i], ys[i]).reshape(-1) * grad_ys[i].reshape(-1)
                    ).sum()
                    time_grads[i] = direct.to(t.dtype)
                    adj_t = adj_t - direct
                flat = layout.pack(adj_t, ys[i], adj_y, adj_params)
                flat = solve(
                    dynamics,
                    flat,
                    t[i - 1 : i + 1].flip(0),
                    rtol=cfg.adjoint_rtol,
                    atol=cfg.adjoint_atol,
                    method=cfg.adjoint_method,
                    options=adjoint_options,
                )[1]
                adj_t, _, adj_y, adj_params = layout.unpack(flat)
                adj_y = adj_y + grad_ys[i - 1]

            if ctx.t_requires_grad:
                time_grads[0] = adj_t.to(t.dtype)

        param_grads = [g.to(p.dtype) for g, p in zip(adj_params, params)]
        return (None, adj_y, time_grads, *param_grads)


# --------------------------------------------------------------------------- public entry point


def _find_parameters(func: Callable, adjoint_params) -> tuple[torch.Tensor, ...]:
    if adjoint_params is None:
        if not isinstance(func, nn.Module):
            raise ValueError(
                "odeint_adjoint: func must be an nn.Module so its parameters can receive gradients; "
                "otherwise pass them explicitly as adjoint_params=(...) (adjoint_params=() if there are none)"
            )
        adjoint_params = func.parameters()
    params = tuple(adjoint_params)
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(
                f"odeint_adjoint: adjoint_params[{i}] must be a torch.Tensor, got {type(p).__name__}"
            )
    # Parameters that need no gradient are left out of the backward state entirely.
    return tuple(p for p in params if p.requires_grad)


def _check_scalar_tolerance(value, name: str) -> None:
    """Per-element or per-component tolerances fit y, not the backward state [a_t, y, a_y, a_theta]."""
    per_element = isinstance(value, (tuple, list)) or (
        isinstance(value, torch.Tensor) and value.numel() != 1
    )
    if per_element:
        raise ValueError(
            f"odeint_adjoint: {name} must be a scalar (it applies to the augmented backward "
            f"state, not to y); rtol/atol given per element or per component need explicit "
            f"scalar adjoint_rtol / adjoint_atol"
        )


def _state_norm(options: dict | None, shapes) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward's error norm as a callable on the flat state (``per_sample`` has none: RMS)."""
    norm = resolve_norm((options or {}).get("norm"), shapes)
    return rms_norm if norm == PER_SAMPLE else norm


def _adjoint_options(method, options, adjoint_method, adjoint_options) -> dict:
    if (
        adjoint_method is not None
        and adjoint_method != method
        and options is not None
        and adjoint_options is None
    ):
        raise ValueError(
            "odeint_adjoint: adjoint_method differs from method, so adjoint_options cannot be taken "
            "from options; pass adjoint_options explicitly (e.g. adjoint_options={})"
        )
    if adjoint_options is None:
        # The forward's norm measures y only; the backward state is [a_t, y, a_y, a_theta].
        # on_max_steps="return" would hand the backward a (solution, status) pair: not inherited.
        adjoint_options = {
            k: v for k, v in (options or {}).items() if k not in ("norm", "on_max_steps")
        }
    else:
        adjoint_options = dict(adjoint_options)
    if adjoint_options.get("norm") == PER_SAMPLE:
        raise ValueError(
            "adjoint_options['norm']='per_sample' is not supported: the backward state "
            "[a_t, y, a_y, a_theta] has no batch dimension"
        )
    if adjoint_options.get("on_max_steps", "raise") != "raise":
        raise ValueError(
            "adjoint_options['on_max_steps'] must be 'raise': a backward pass cannot return "
            "a partial gradient"
        )
    return adjoint_options


def odeint_adjoint(
    func,
    y0,
    t,
    *,
    rtol=1e-7,
    atol=1e-9,
    method=None,
    options=None,
    adjoint_rtol=None,
    adjoint_atol=None,
    adjoint_method=None,
    adjoint_options=None,
    adjoint_params=None,
):
    """Solve ``dy/dt = func(t, y)`` like ``odekern.odeint``; backward by the continuous adjoint.

    Drop-in for ``torchdiffeq.odeint_adjoint`` (same arguments, defaults and output shape
    ``(len(t), *y0.shape)``). Gradients flow to ``y0``, to every entry of ``t`` and to the
    parameters: ``func.parameters()`` when ``func`` is an ``nn.Module``, else ``adjoint_params``
    (required then; ``()`` for none). ``adjoint_*`` default to the forward's settings;
    ``adjoint_options`` defaults to ``options`` without ``norm`` when the methods agree.

    Memory: the forward keeps only the outputs at ``t`` (no autograd graph), so it is flat in
    the number of solver steps. The gradient is the continuous one, equal to backprop's up to
    the solvers' truncation error (exactly so only as the tolerance/step size goes to zero).

    Example::

        >>> func = torch.nn.Linear(3, 3)
        >>> y0 = torch.randn(3, requires_grad=True)
        >>> ys = odeint_adjoint(lambda t, y: func(y), y0, torch.tensor([0.0, 1.0]),
        ...                     adjoint_params=tuple(func.parameters()))
        >>> ys[-1].sum().backward()
    """
    if not callable(func):
        raise TypeError(f"odeint_adjoint: func must be callable, got {type(func).__name__}")
    check_state(y0)
    check_time(t)
    check_state_matches_time(y0, t)
    params = _find_parameters(func, adjoint_params)
    check_params(params, y0[0] if isinstance(y0, tuple) else y0, "adjoint_params")
    if (options or {}).get("on_max_steps", "raise") != "raise":
        raise ValueError(
            "odeint_adjoint: options['on_max_steps'] must be 'raise' (the default); "
            "a (solution, status) result cannot be differentiated by the adjoint"
        )

    adjoint_rtol = rtol if adjoint_rtol is None else adjoint_rtol
    adjoint_atol = atol if adjoint_atol is None else adjoint_atol
    adjoint_options = _adjoint_options(method, options, adjoint_method, adjoint_options)
    adjoint_method = method if adjoint_method is None else adjoint_method

    _check_scalar_tolerance(adjoint_rtol, "adjoint_rtol")
    _check_scalar_tolerance(adjoint_atol, "adjoint_atol")

    shapes = [part.shape for part in y0] if isinstance(y0, tuple) else None
    if shapes is None:
        y0_flat, backward_func = y0, func
    else:
        y0_flat, backward_func = tuple_to_flat(y0), TupleRHS(func, shapes)

    cfg = _AdjointConfig(
        func,
        rtol,
        atol,
        method,
        options,
        adjoint_rtol,
        adjoint_atol,
        adjoint_method,
        adjoint_options,
        _state_norm(options, shapes),
        shapes,
        backward_func,
    )
    ys = _OdeintAdjoint.apply(cfg, y0_flat, t, *params)
    return ys if shapes is None else flat_to_tuple(ys, shapes, lead=(len(t),))
