"""Continuous adjoint sensitivities (Chen et al. 2018, "Neural Ordinary Differential Equations").

``odeint_adjoint`` has torchdiffeq's signature and defaults. The forward solve runs under
``torch.no_grad`` and keeps only the solution at the requested output times, so the memory held
for backward does not grow with the number of solver steps. The backward pass integrates the
augmented state

    s = [a_t, y, a_y, a_theta_1, ..., a_theta_k]          (a_* are adjoints: dL/d*)
    ds/dt = [-a_y . df/dt, f(t, y), -a_y . df/dy, -a_y . df/dtheta_1, ...]

from each output time back to the previous one with ``odekern.odeint``, restarting ``y`` from
the stored forward value and adding the incoming ``dL/dy(t_i)`` at every output time.

For a tensor ``y`` the parts ``(a_t, y, a_y, *a_theta)`` are solved as one flat tensor, as
torchdiffeq does: they are many and often tiny (an MLP's parameters), and every solver operation
would otherwise be paid once per part; the dynamics concatenate ``f(t, y)`` and the
vector-Jacobian products once per evaluation. For a tuple ``y`` (a higher-order block's
``(x, v)``) they stay a tuple state, so no part is ever copied. Either way a custom
``adjoint_options["norm"]`` and the ``callback_*_adjoint`` callbacks receive the parts as a
tuple, as in torchdiffeq (its callbacks see a tuple y's components flattened and concatenated,
torchdiffeq's own form of a tuple state). The adaptive error norm is torchdiffeq's default
adjoint norm (max over the norms of the parts, |a_t| included: a_t integrates dL/dt also when
``t`` needs no gradient, as in torchdiffeq), so both libraries take the same backward steps;
for the built-in state norms it comes from one float64 norm per part in a single call (or, for
a tuple state, from the fused error pass's RMS per part).
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from odekern.dispatch import requested_backend, use_requested_backend
from odekern.module_state import forward_tensors, tensors_as_in_forward
from odekern.odeint import odeint, promote_tuple_state
from odekern.reachable import distinct_requiring_grad, warn_unreached
from odekern.solvers import state
from odekern.solvers.base import ADJOINT_CALLBACK_NAMES, CALLBACK_NAMES, TimeReversible
from odekern.solvers.checks import (
    check_mapping,
    check_method,
    check_params,
    check_state,
    check_tolerance,
    check_tolerance_resolvable,
    from_numpy,
    options_from_numpy,
    shape_or_type,
    tensor_tuple,
    time_argument,
)
from odekern.solvers.double_backward import refuse_second_order
from odekern.solvers.norms import PER_SAMPLE, canonical_control, component_rms_combiner, resolve_norm, rms_norm
from odekern.solvers.registry import ADAPTIVE_METHODS, DEFAULT_METHOD, METHODS

#: ``adjoint_options["norm"]`` for torchdiffeq's seminorm: the backward error norm leaves out the
#: parameter adjoints (they do not feed back into the dynamics), so fewer backward steps are taken.
SEMINORM = "seminorm"


# --------------------------------------------------------------------------- augmented state


@dataclasses.dataclass(frozen=True)
class _AugmentedLayout:
    """Which parts of the augmented backward state ``(a_t, *y, *a_y, *a_theta)`` are which.

    ``y`` and ``a_y`` are tuples of components (one for a tensor state)."""

    n_y: int
    tuple_y: bool  # whether the user's state is a tuple (func then takes and returns tuples)

    def pack(self, adj_t: torch.Tensor, y: Sequence[torch.Tensor], adj_y: Sequence[torch.Tensor],
             adj_params: Sequence[torch.Tensor]) -> tuple:
        return (adj_t.reshape(()), *y, *adj_y, *adj_params)

    def unpack(self, aug: Sequence[torch.Tensor]):
        n = self.n_y
        return aug[0], tuple(aug[1:1 + n]), tuple(aug[1 + n:1 + 2 * n]), list(aug[1 + 2 * n:])

    def user_state(self, parts: Sequence[torch.Tensor]):
        """Components of y as the user's func takes them."""
        return tuple(parts) if self.tuple_y else parts[0]

    def y_and_adj_y(self, parts: _FlatParts | _TupleParts, aug) -> tuple[tuple, tuple]:
        """The components of y and of a_y alone, from the solved backward state: all the dynamics
        read (of an MLP's seven parts, viewing the two costs a fifth of viewing all)."""
        n = self.n_y
        both = parts.select(aug, 1, 1 + 2 * n)
        return both[:n], both[n:]


def _concatenated(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """The parts flattened and laid end to end in one 1-d tensor."""
    return torch.cat([p.reshape(-1) for p in parts])


class _FlatParts:
    """The backward state of a tensor y: the parts laid end to end in one flat tensor."""

    def __init__(self, parts: Sequence[torch.Tensor]):
        self.shapes = tuple(p.shape for p in parts)
        self.sizes = tuple(p.numel() for p in parts)
        self.offsets = tuple(itertools.accumulate(self.sizes, initial=0))

    def to_state(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return _concatenated(parts)

    def split(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The parts as views of ``flat``."""
        return tuple(p.view(shape) for p, shape in zip(self.pieces(flat), self.shapes))

    def pieces(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The parts as 1-d views of ``flat`` (for reductions)."""
        return flat.split(self.sizes)

    def select(self, flat: torch.Tensor, first: int, stop: int) -> tuple[torch.Tensor, ...]:
        """Parts ``first`` to ``stop - 1`` as views of ``flat``, the others not viewed."""
        at = self.offsets
        return tuple(flat[at[i]:at[i + 1]].view(self.shapes[i]) for i in range(first, stop))


class _TupleParts:
    """The backward state of a tuple y (a higher-order block's (x, v)): the parts as a tuple
    state, so no part is copied (the solvers handle tuples natively)."""

    def __init__(self, parts: Sequence[torch.Tensor]):
        self.sizes = tuple(p.numel() for p in parts)

    def to_state(self, parts: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(parts)

    def split(self, aug: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return aug

    pieces = split

    def select(self, aug: tuple[torch.Tensor, ...], first: int, stop: int) -> tuple[torch.Tensor, ...]:
        return aug[first:stop]


# A tensor y of at least this many elements is solved backward as a tuple state: laying the
# parts end to end costs a pass over y and a_y per RHS call, which from about here outweighs the
# calls per part of every combination (a conv RHS, rk4, the solver's own time in the backward:
# even at 2^15 elements, 1.2x less as a tuple at 2^17 and 2^19, 1.3-1.4x at 2^21, the size of
# bench/bench_stages.py's adjoint rows).
TUPLE_PACKING_MIN_NUMEL = 1 << 16


def _packing(layout: _AugmentedLayout, parts: Sequence[torch.Tensor]) -> _FlatParts | _TupleParts:
    """How the backward solves the parts: a tuple for a tuple y, whose components are never
    concatenated, and for a large tensor y (``TUPLE_PACKING_MIN_NUMEL``); flat otherwise, as
    torchdiffeq does (its parts are many and often tiny, an MLP's parameters, and every solver
    operation would otherwise be paid once per part)."""
    tuple_packing = layout.tuple_y or parts[1].numel() >= TUPLE_PACKING_MIN_NUMEL
    return _TupleParts(parts) if tuple_packing else _FlatParts(parts)


class _AdjointNorm:
    """Error norm of the backward solve: max of |a_t|, the state norm of y and of a_y, and the RMS
    norm of each a_theta (left out for the seminorm), on the solved backward state.

    Taking the max per part (not one RMS over everything) stops a huge parameter vector from
    diluting the error of the state, and equals torchdiffeq's default adjoint norm (its
    ``adjoint_seminorm`` with ``seminorm=True``).
    """

    def __init__(self, layout: _AugmentedLayout, parts: _FlatParts | _TupleParts, state_norm: Callable,
                 seminorm: bool = False):
        self.layout = layout
        self.parts = parts
        self.state_norm = state_norm
        self.seminorm = seminorm
        # The built-in state norms follow from per-part RMS values (norms.component_rms_combiner).
        self._combine_state = component_rms_combiner(state_norm)
        n, counts = layout.n_y, parts.sizes
        # Part sizes as the norm counts them: the parameters' are 0 (skipped) for the seminorm.
        self._measured = counts if not seminorm else counts[:1 + 2 * n] + (0,) * (len(counts) - 1 - 2 * n)
        self._root_counts: dict[torch.device, torch.Tensor] = {}
        # A tuple state's fused error pass gives one RMS per part (stages._fused_error_ratio).
        fused = self._combine_state is not None and isinstance(parts, _TupleParts)
        self.from_component_rms = (lambda rms, counts: self._from_rms(rms)) if fused else None

    def __call__(self, aug) -> torch.Tensor:
        if self._combine_state is None:
            return self._of_parts(self.parts.split(aug))
        pieces = [p.abs() if p.is_complex() else p for p in self.parts.pieces(aug)]
        norms = torch.stack(torch._foreach_norm(pieces, 2, dtype=torch.float64))
        return self._from_rms((norms / self._root_count(norms.device)).unbind())

    def _root_count(self, device: torch.device) -> torch.Tensor:
        root = self._root_counts.get(device)
        if root is None:  # sqrt of each part's size (1 for an empty part, whose norm is 0)
            root = torch.tensor([max(c, 1) for c in self.parts.sizes], dtype=torch.float64, device=device).sqrt()
            self._root_counts[device] = root
        return root

    def _from_rms(self, rms: Sequence[torch.Tensor]) -> torch.Tensor:
        """The norm from the RMS of every part (the RMS of the scalar a_t is |a_t|)."""
        n, combine, counts = self.layout.n_y, self._combine_state, self._measured
        norms = [rms[0], combine(rms[1:1 + n], counts[1:1 + n]), combine(rms[1 + n:1 + 2 * n], counts[1 + n:1 + 2 * n])]
        norms += [r for r, c in zip(rms[1 + 2 * n:], counts[1 + 2 * n:]) if c]
        return torch.stack(norms).max()

    def _of_parts(self, aug: Sequence[torch.Tensor]) -> torch.Tensor:
        """The norm by the state norm itself (a user's, or one not built from RMS values)."""
        adj_t, y, adj_y, adj_params = self.layout.unpack(aug)
        norms = [
            adj_t.abs(),
            torch.as_tensor(self.state_norm(self.layout.user_state(y))),
            torch.as_tensor(self.state_norm(self.layout.user_state(adj_y))),
        ]
        if not self.seminorm:
            norms += [rms_norm(p) for p in adj_params if p.numel()]
        return torch.stack([n.to(state.real_dtype(adj_t.dtype)) for n in norms]).max()


class _NormOfParts:
    """A user's ``adjoint_options["norm"]``: it receives the parts ``(a_t, *y, *a_y, *a_theta)``
    as a tuple, as in torchdiffeq, also when the backward solves them flat."""

    def __init__(self, norm: Callable, parts: _FlatParts | _TupleParts):
        self.norm = norm
        self.parts = parts

    def __call__(self, aug):
        return self.norm(self.parts.split(aug))


class _CallbackOfParts:
    """A ``callback_*_adjoint`` of func, called with the backward state exactly as torchdiffeq
    hands it over: ``(a_t, y, a_y, *a_theta)``, where for a tuple y torchdiffeq's y and a_y are
    its flat concatenations (its own representation of a tuple state, which a callback written
    for it indexes)."""

    def __init__(self, callback: Callable, layout: _AugmentedLayout, parts: _FlatParts | _TupleParts):
        self.callback = callback
        self.layout = layout
        self.parts = parts

    def __call__(self, t0, aug, dt):
        aug = self.parts.split(aug)
        if self.layout.tuple_y:
            adj_t, y, adj_y, adj_params = self.layout.unpack(aug)
            aug = (adj_t, _concatenated(y), _concatenated(adj_y), *adj_params)
        return self.callback(t0, aug, dt)


class _AugmentedDynamics(TimeReversible):
    """Right-hand side of the augmented backward ODE on the solved backward state."""

    def __init__(self, func: Callable, layout: _AugmentedLayout, parts: _FlatParts | _TupleParts,
                 params: tuple[torch.Tensor, ...]):
        self.func = func
        self.layout = layout
        self.parts = parts
        self.params = params
        # func.callback_*_adjoint are the backward solve's step callbacks (torchdiffeq's protocol).
        for name, adjoint_name in zip(CALLBACK_NAMES, ADJOINT_CALLBACK_NAMES):
            if hasattr(func, adjoint_name):
                setattr(self, name, _CallbackOfParts(getattr(func, adjoint_name), layout, parts))

    def __call__(self, t: torch.Tensor, aug):
        return self._derivative(t, aug, reversed_time=False)

    def reversed_derivative(self, t: torch.Tensor, aug):
        """``-self(t, aug)`` (``base.TimeReversible``), for a backward solve on decreasing
        times (every backward of a forward solve on increasing times): the adjoint parts' vector-
        Jacobian products take ``a_y`` as their cotangent instead of ``-a_y``, so only ``f`` is
        negated, where negating the whole output would cost a pass over every part and ``-a_y``
        another over ``a_y``. Autograd's products are linear in the cotangent, and negation
        commutes with IEEE rounding: the values are exactly those negated."""
        return self._derivative(t, aug, reversed_time=True)

    def _derivative(self, t: torch.Tensor, aug, reversed_time: bool):
        y, adj_y = self.layout.y_and_adj_y(self.parts, aug)
        with torch.enable_grad():
            # a_t integrates dL/dt also when t needs no gradient, as torchdiffeq's backward does:
            # its error joins the step control (the norm's |a_t|), so the backward solve takes
            # torchdiffeq's steps, and its gradients are torchdiffeq's.
            t_in = t.detach().requires_grad_(True)
            y_in = tuple(c.detach().requires_grad_(True) for c in y)
            f = _components_of_output(self.func(t_in, self.layout.user_state(y_in)), y_in)
            wrt = (t_in,) + y_in + self.params
            # A component of f that is an input component itself (a second-order block's
            # velocity) is a graph leaf: autograd handles it like any other output.
            outputs = [(fc, a if reversed_time else -a) for fc, a in zip(f, adj_y) if fc.requires_grad]
            if outputs:
                vjps = torch.autograd.grad([o for o, _ in outputs], wrt, [g for _, g in outputs], allow_unused=True)
            else:  # f depends on none of them (e.g. a constant field): every vjp is zero
                vjps = (None,) * len(wrt)
        n = self.layout.n_y
        vjp_t, vjp_y, vjp_params = vjps[0], vjps[1:1 + n], vjps[1 + n:]
        like = y[0]
        vjp_t = torch.zeros((), dtype=like.dtype, device=like.device) if vjp_t is None else vjp_t.to(like.dtype)
        vjp_y = [torch.zeros_like(c) if g is None else g for c, g in zip(y, vjp_y)]
        # In the backward state's dtype (a real parameter of a complex ODE is carried as complex).
        vjp_params = [torch.zeros_like(p, dtype=like.dtype) if g is None else g.to(like.dtype)
                      for p, g in zip(self.params, vjp_params)]
        f = [torch.neg(fc.detach()) if reversed_time else fc.detach() for fc in f]
        return self.parts.to_state(self.layout.pack(vjp_t, f, vjp_y, vjp_params))


def _components_of_output(f: Any, y: Sequence[torch.Tensor]) -> tuple:
    """``func``'s output as components, checked against the state's components."""
    parts = tuple(f) if isinstance(f, (tuple, list)) else (f,)
    if len(parts) != len(y) or any(not isinstance(p, torch.Tensor) or p.shape != c.shape for p, c in zip(parts, y)):
        want = tuple(tuple(c.shape) for c in y) if len(y) > 1 else tuple(y[0].shape)
        got = tuple(shape_or_type(p) for p in parts) if isinstance(f, (tuple, list)) else shape_or_type(f)
        raise RuntimeError(f"odeint_adjoint: func must return a tensor shaped like the state {want}, got {got}")
    return parts


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
    state_norm: Callable
    layout: _AugmentedLayout
    event_fn: Callable | None = None


_NO_SECOND_ORDER = ("odeint_adjoint cannot differentiate its gradient (double backward, create_graph=True): "
                    "its backward solve records no graph; use odeint (backprop) for gradients of gradients")


class _OdeintAdjoint(torch.autograd.Function):
    # forward and setup_context apart (not forward(ctx, ...)): torch.func transforms (grad,
    # jacrev, vmap of a gradient) only accept autograd.Functions written this way.
    @staticmethod
    def forward(cfg: _AdjointConfig, t: torch.Tensor, *tensors: torch.Tensor):
        layout = cfg.layout
        # no_grad: nothing of the solver's steps is recorded, so memory is flat in the step count.
        with torch.no_grad():
            out = odeint(cfg.func, layout.user_state(tensors[:layout.n_y]), t, rtol=cfg.rtol,
                         atol=cfg.atol, method=cfg.method, options=cfg.options, event_fn=cfg.event_fn)
        if cfg.event_fn is None:
            return state.components(out)
        event_t, ys = out
        return (event_t, *state.components(ys))

    @staticmethod
    def setup_context(ctx, inputs, output):
        cfg, t, *tensors = inputs
        ctx.cfg = cfg
        ctx.t_requires_grad = t.requires_grad
        # backward() runs after any use_backend(...) block has exited: remember the choice, and
        # the tensors func holds (a torch.func.functional_call has returned by then too).
        ctx.backend = requested_backend()
        ctx.module_tensors = forward_tensors(cfg.func)
        if cfg.event_fn is not None:
            # As torchdiffeq's adjoint, the solve is differentiated up to the event time but not
            # through it; odeint_event adds the event time's own gradient.
            ctx.mark_non_differentiable(output[0])
        ctx.save_for_backward(t, *output, *tensors[cfg.layout.n_y:])

    @staticmethod
    def backward(ctx, *grad_ys: torch.Tensor):
        cfg: _AdjointConfig = ctx.cfg
        layout = cfg.layout
        t, *saved = ctx.saved_tensors
        t_given = t
        if cfg.event_fn is not None:
            event_t, saved, grad_ys = saved[0], saved[1:], grad_ys[1:]
            t = torch.cat([t[:1], event_t.reshape(1).to(t)])
        ys, params = tuple(saved[:layout.n_y]), tuple(saved[layout.n_y:])
        like = ys[0]
        # The parts' shapes, from a state of them (its values are not used).
        parts = _packing(layout, layout.pack(torch.zeros((), dtype=like.dtype), tuple(c[-1] for c in ys),
                                             tuple(c[-1] for c in ys), params))
        dynamics = _AugmentedDynamics(cfg.func, layout, parts, params)
        adjoint_options = dict(cfg.adjoint_options)
        norm = adjoint_options.get("norm")
        if norm is None or norm == SEMINORM:
            adjoint_options["norm"] = _AdjointNorm(layout, parts, cfg.state_norm, seminorm=norm == SEMINORM)
        elif callable(norm):
            adjoint_options["norm"] = _NormOfParts(norm, parts)

        with torch.no_grad(), use_requested_backend(ctx.backend), tensors_as_in_forward(cfg.func, ctx.module_tensors):
            grad_ys = [g.to(like.dtype) for g in grad_ys]
            adj_t = torch.zeros((), dtype=like.dtype, device=like.device)
            adj_y = tuple(g[-1].clone() for g in grad_ys)
            adj_params = [torch.zeros_like(p, dtype=like.dtype) for p in params]
            time_grads = torch.zeros(len(t), dtype=t.dtype, device=t.device) if ctx.t_requires_grad else None

            for i in range(len(t) - 1, 0, -1):
                y_i = tuple(c[i] for c in ys)
                if ctx.t_requires_grad:
                    # dL/dt_i from the output itself: the solution moves with velocity f(t_i, y_i).
                    # func sees time in the state's dtype, as in the forward solve.
                    f_i = _components_of_output(cfg.func(t[i].to(like.dtype), layout.user_state(y_i)), y_i)
                    direct = sum((fc * g[i]).sum() for fc, g in zip(f_i, grad_ys))
                    time_grads[i] = direct.to(t.dtype)
                    adj_t = adj_t - direct
                start = parts.to_state(layout.pack(adj_t, y_i, adj_y, adj_params))
                solution = odeint(dynamics, start, t[i - 1:i + 1].flip(0), rtol=cfg.adjoint_rtol,
                                  atol=cfg.adjoint_atol, method=cfg.adjoint_method, options=adjoint_options)
                adj_t, _, adj_y, adj_params = layout.unpack(parts.split(state.row(solution, 1)))
                adj_y = tuple(a + g[i - 1] for a, g in zip(adj_y, grad_ys))

            if ctx.t_requires_grad:
                time_grads[0] = adj_t.to(t.dtype)
                if cfg.event_fn is not None:  # only t[0] is a time of the event solve
                    time_grads = torch.cat([time_grads[:1], torch.zeros_like(t_given[1:])])

        # A real parameter of a complex ODE: its adjoint was carried in the state's complex dtype
        # (one dtype for the whole backward state); the imaginary part is zero.
        param_grads = [(g.real if g.is_complex() and not p.is_complex() else g).to(p.dtype)
                       for g, p in zip(adj_params, params)]
        # The solution, an output of this node, leads back to every input of it, y0 included
        # (which is not kept: torchdiffeq's adjoint lets it change after the forward pass), so a
        # second derivative with respect to any of them reaches the refusal.
        grads = refuse_second_order((time_grads, *adj_y, *param_grads), ys, _NO_SECOND_ORDER)
        return (None, *grads)


# --------------------------------------------------------------------------- public entry point


def _given_parameters(func: Callable, adjoint_params) -> tuple[torch.Tensor, ...]:
    if adjoint_params is None:
        if not isinstance(func, nn.Module):
            raise ValueError(
                "odeint_adjoint: func must be an nn.Module so its parameters can receive gradients; "
                "otherwise pass them explicitly as adjoint_params=(...) (adjoint_params=() if there are none)"
            )
        adjoint_params = _replica_parameters(func) if getattr(func, "_is_replica", False) else func.parameters()
    return tensor_tuple(adjoint_params, "odeint_adjoint: adjoint_params")


def _replica_parameters(module: nn.Module) -> list[torch.Tensor]:
    """The parameters of a ``DataParallel`` replica: there they are plain tensor attributes, not
    registered parameters, as torchdiffeq also handles (registered ones are kept too)."""
    found = {id(p): p for p in module.parameters()}
    for m in module.modules():
        found.update({id(v): v for v in vars(m).values() if isinstance(v, torch.Tensor) and v.requires_grad})
    return list(found.values())


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


def _state_norm(options: dict | None, tuple_state: bool) -> Callable:
    """The forward's error norm as a callable on the state (per-sample control measures each
    sample by RMS unless a norm is given)."""
    options = options or {}
    if options.get("control") == PER_SAMPLE and options.get("norm") is None:
        return rms_norm
    return resolve_norm(options.get("norm"), tuple_state)


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
        # The forward's norm measures y only; the backward state is [a_t, y, a_y, a_theta] (no
        # batch dimension to control per sample).
        # on_max_steps="return" would hand the backward a (solution, status) pair: not inherited.
        adjoint_options = {
            k: v for k, v in (options or {}).items() if k not in ("norm", "control", "on_max_steps")
        }
    else:
        adjoint_options = dict(adjoint_options)
    if adjoint_options.get("control") == PER_SAMPLE:
        raise ValueError(
            "adjoint_options['control']='per_sample' is not supported: the backward state "
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
    event_fn=None,
):
    """Solve ``dy/dt = func(t, y)`` like ``odekern.odeint``; backward by the continuous adjoint.

    Drop-in for ``torchdiffeq.odeint_adjoint`` (same arguments, defaults and output shape
    ``(len(t), *y0.shape)``). Gradients flow to ``y0``, to every entry of ``t`` and to the
    parameters: ``func.parameters()`` when ``func`` is an ``nn.Module``, else ``adjoint_params``
    (required then; ``()`` for none). As with ``odeint``, ``t`` may also be a list or tuple of
    Python numbers (constants: no gradient flows to them). ``adjoint_*`` default to the
    forward's settings; ``adjoint_options`` defaults to ``options`` without ``norm`` and
    ``control`` when the methods agree.

    Memory: the forward keeps only the outputs at ``t`` (no autograd graph), so it is flat in
    the number of solver steps. Inside torch.func transforms (grad, jacrev, jvp, ...) and with
    forward-mode tangents the solve is differentiated as a discrete one, as ``odeint`` does. The
    gradient is the continuous one, equal to backprop's up to the solvers' truncation error
    (exactly so only as the tolerance/step size goes to zero).

    Example::

        >>> func = torch.nn.Linear(3, 3)
        >>> y0 = torch.randn(3, requires_grad=True)
        >>> ys = odeint_adjoint(lambda t, y: func(y), y0, torch.tensor([0.0, 1.0]),
        ...                     adjoint_params=tuple(func.parameters()))
        >>> ys[-1].sum().backward()
    """
    if not callable(func):
        raise TypeError(f"odeint_adjoint: func must be callable, got {type(func).__name__}")
    check_mapping(options, "odeint_adjoint: options")
    check_mapping(adjoint_options, "odeint_adjoint: adjoint_options")
    check_method(method, METHODS)
    check_method(adjoint_method, METHODS, name="adjoint_method")
    rtol, atol, adjoint_rtol, adjoint_atol = map(from_numpy, (rtol, atol, adjoint_rtol, adjoint_atol))
    options, adjoint_options = options_from_numpy(options), options_from_numpy(adjoint_options)
    y0 = promote_tuple_state(y0)
    check_state(y0, finite=False)  # the values are checked by the forward solve (odeint)
    t, t_values, _ = time_argument(t, y0)
    options = canonical_control(options, "options")
    adjoint_options = canonical_control(adjoint_options, "adjoint_options")
    given_params = _given_parameters(func, adjoint_params)
    if not all(p.requires_grad for p in given_params) and callable((adjoint_options or {}).get("norm")):
        warnings.warn("An adjoint parameter was passed without requiring gradient. For efficiency this will be "
                      "excluded from the adjoint pass, and will not appear as a tensor in the adjoint norm.")
    # Each once: a tensor listed twice (``(*model.parameters(), *func.parameters())`` with func
    # inside model) would otherwise receive its gradient once per listing.
    params = distinct_requiring_grad(given_params)
    warn_unreached(func, given_params)
    check_params(params, state.first(y0), "adjoint_params")
    if (options or {}).get("on_max_steps", "raise") != "raise":
        raise ValueError(
            "odeint_adjoint: options['on_max_steps'] must be 'raise' (the default); "
            "a (solution, status) result cannot be differentiated by the adjoint"
        )

    # How a tolerance error names them: the forward's when the adjoint's default to them.
    names = ("rtol" if adjoint_rtol is None else "adjoint_rtol", "atol" if adjoint_atol is None else "adjoint_atol")
    adjoint_rtol = rtol if adjoint_rtol is None else adjoint_rtol
    adjoint_atol = atol if adjoint_atol is None else adjoint_atol
    adjoint_options = _adjoint_options(method, options, adjoint_method, adjoint_options)
    adjoint_method = method if adjoint_method is None else adjoint_method

    check_tolerance(adjoint_rtol, names[0])
    check_tolerance(adjoint_atol, names[1])
    # A one-element tensor of any shape is one tolerance; as a 0-d tensor it applies to every
    # part of the backward state (a (1, 1) one broke the split into those parts).
    adjoint_rtol, adjoint_atol = (v.reshape(()) if isinstance(v, torch.Tensor) and v.numel() == 1 else v
                                  for v in (adjoint_rtol, adjoint_atol))
    _check_scalar_tolerance(adjoint_rtol, "adjoint_rtol")
    _check_scalar_tolerance(adjoint_atol, "adjoint_atol")
    backward_method = adjoint_method or DEFAULT_METHOD
    if backward_method in ADAPTIVE_METHODS:
        # The backward state holds y: its tolerances must be resolvable there too (checked on
        # y0 here, before the forward solve, rather than deep inside backward()).
        check_tolerance_resolvable(adjoint_rtol, adjoint_atol, y0, backward_method, names)

    inputs = [t, *state.components(y0), *params]
    if state.any_carries_tangent(inputs):
        # Inside a torch.func transform, or with forward-mode tangents, the adjoint's backward
        # (autograd.grad over func at every step) cannot run; the solve is differentiated as a
        # discrete one instead, which agrees with the adjoint to within the solver tolerance.
        return odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options, event_fn=event_fn)
    if not state.records_derivatives(inputs):
        # Nothing to differentiate (torch.no_grad(), inference): the solve is the adjoint's
        # forward pass, odeint's under no_grad, with nothing kept for a backward pass. Times given
        # as numbers stay numbers: a fixed-grid solve then reads no tensor and compiles whole.
        with torch.no_grad():
            return odeint(func, y0, t if t_values is None else t_values, rtol=rtol, atol=atol, method=method,
                          options=options, event_fn=event_fn)
    tuple_state = state.is_tuple(y0)
    cfg = _AdjointConfig(func, rtol, atol, method, options, adjoint_rtol, adjoint_atol, adjoint_method,
                         adjoint_options, _state_norm(options, tuple_state),
                         _AugmentedLayout(len(state.components(y0)), tuple_state), event_fn)
    return _solve_differentiably(cfg, t, y0, params)


# Run eagerly inside a compiled caller (one graph break here): the backward pass solves the
# adjoint system with solver calls of its own, which no graph holds, and Dynamo would compile the
# forward solve frame by frame (13 graphs and 15 s for an 8-step rk4 block of a small conv RHS, 40
# graphs and 28 s with dopri5), fragments that ran slower than the eager solve.
@torch._disable_dynamo
def _solve_differentiably(cfg: _AdjointConfig, t: torch.Tensor, y0: state.State,
                          params: tuple[torch.Tensor, ...]) -> Any:
    """``odeint_adjoint``'s solve, recorded as one node whose backward pass is the adjoint's."""
    out = _OdeintAdjoint.apply(cfg, t, *state.components(y0), *params)
    if cfg.event_fn is not None:
        return out[0], state.rebuild(y0, out[1:])
    return state.rebuild(y0, out)
