"""``ODEBlock``: an nn.Module that integrates an ODE of any order with a chosen gradient mode.

An order-``m`` block solves ``x^(m) = func(t, x, x', ..., x^(m-1))`` by the first-order system of
continuous-unet Proposition 1: the state ``z = (x, x', ..., x^(m-1))`` and
``z' = (x', ..., x^(m-1), func(t, x, ..., x^(m-1)))``. The solvers take ``z`` as a tuple state
(``odekern.solvers.state``), so no stage concatenates or splits it: the first ``m - 1``
components of ``z'`` are the stage's own state tensors, passed on without a copy. Only the
public whole-state interface (``return_state``, ``integrate_state``) uses the concatenation
along the channel dimension (dim 1), once per solve.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from odekern._choices import is_choice
from odekern.dispatch import check_backend_name, use_backend
from odekern.adjoint import odeint_adjoint
from odekern.checkpoint import check_checkpoints, check_method_checkpointable, odeint_checkpointed
from odekern.odeint import odeint
from odekern.reachable import differentiable_tensors
from odekern.solvers.checks import (check_mapping, check_method, check_options, check_state, check_time,
                                    from_numpy, options_from_numpy, shape_or_type)
from odekern.solvers.norms import canonical_control
from odekern.solvers.registry import ADAPTIVE_METHODS, METHODS
from odekern.solvers.state import inside_transform, real_dtype

# --------------------------------------------------------------------------- gradient modes
# One entry per mode: ``solve(dynamics, z0, t, **solver_kwargs) -> solution at every t``.
# ``dynamics`` is an nn.Module whose parameters are exactly those of the RHS; ``z0`` is a tensor
# (order 1) or a tuple of tensors (higher orders), and the solution has the same structure.


def _solve_backprop(
    dynamics: nn.Module, z0: torch.Tensor, t: torch.Tensor, **solver_kwargs
) -> torch.Tensor:
    return odeint(dynamics, z0, t, **solver_kwargs)


def _solve_adjoint(
    dynamics: nn.Module, z0: torch.Tensor, t: torch.Tensor, **solver_kwargs
) -> torch.Tensor:
    # Every tensor requiring grad that the dynamics use gets its gradient, as in the other modes
    # (a conditioning tensor another module computes and sets on func: that module trains).
    # The parameters always join (one of another dtype is refused, naming it); a reachable tensor
    # that is not a parameter joins where the adjoint system can hold it, on the state's device
    # and dtype; otherwise odeint_adjoint warns that it gets no gradient.
    like = z0[0] if isinstance(z0, tuple) else z0
    params = tuple(dynamics.parameters())
    known = {id(p) for p in params}
    extras = tuple(p for p in differentiable_tensors(dynamics) if id(p) not in known
                   and p.device == like.device and p.dtype in (like.dtype, real_dtype(like.dtype)))
    return odeint_adjoint(dynamics, z0, t, adjoint_params=params + extras, **solver_kwargs)


def _solve_checkpoint(
    dynamics: nn.Module, z0, t: torch.Tensor, *, checkpoints: int = 8, **solver_kwargs
):
    # No adjoint_params: the checkpointed gradient then reaches every tensor requiring grad that
    # the dynamics use, registered or not, as "backprop" does.
    return odeint_checkpointed(dynamics, z0, t, checkpoints=checkpoints, **solver_kwargs)


GRADIENT_MODES: dict[str, Callable[..., torch.Tensor]] = {
    "backprop": _solve_backprop,
    "adjoint": _solve_adjoint,
    "checkpoint": _solve_checkpoint,  # exact discrete gradient, memory O(checkpoints)
}


# --------------------------------------------------------------------------- the first-order system


class _HigherOrderDynamics(nn.Module):
    """``z' = (x', ..., x^(m-1), func(t, x, ..., x^(m-1)))`` on the tuple state ``z = (x, ..., x^(m-1))``.

    The derivatives ``x', ..., x^(m-1)`` are returned as the very tensors of ``z``: no copy."""

    def __init__(self, func: Callable, order: int):
        super().__init__()
        self.func = func  # registered as a submodule when it is one: its parameters are ours
        self.order = order

    def forward(self, t: torch.Tensor, z: tuple) -> tuple:
        highest = self.func(t, *z)
        if not isinstance(highest, torch.Tensor) or highest.shape != z[0].shape:
            raise RuntimeError(
                f"ODEBlock: func must return x^({self.order}) shaped like x {tuple(z[0].shape)}, "
                f"got {shape_or_type(highest)}"
            )
        return (*z[1:], highest)


def _as_time_grid(t) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        grid = t.detach().clone()
    else:
        try:
            grid = torch.tensor([float(v) for v in t], dtype=torch.float64)
        except (TypeError, ValueError):
            raise TypeError(
                f"ODEBlock: t must be a 1-D sequence or tensor of times, got {t!r}"
            ) from None
    if not grid.is_floating_point():
        grid = grid.to(torch.float64)
    check_time(grid, "t")
    if grid.numel() < 2:
        raise ValueError(f"t must hold at least 2 times (start and end), got {grid.tolist()}")
    return grid


class ODEBlock(nn.Module):
    """Integrate ``x`` from ``t[0]`` to ``t[-1]`` under an ODE of order ``order``; a drop-in layer.

    Args:
        func: the right-hand side. ``order=1``: ``func(t, x) -> dx/dt`` (torchdiffeq's signature).
            ``order=m``: ``func(t, x, x', ..., x^(m-1)) -> x^(m)``, each argument shaped like ``x``.
            Must be an ``nn.Module`` for ``gradient="adjoint"``. In every gradient mode, gradients
            reach its parameters and every tensor requiring grad it uses (a conditioning tensor
            another module computes and sets on it included: that module trains).
        t: times; the solve runs from ``t[0]`` to ``t[-1]`` (inner times are extra grid/output points).
        method: solver name (see ``odekern.odeint``), default ``"rk4"``.
        step_size: fixed step for fixed-grid methods (``options["step_size"]``); ``None`` steps on ``t``.
        rtol, atol: tolerances of adaptive methods.
        gradient: ``"backprop"`` (autograd through the solver) or ``"adjoint"`` (continuous adjoint,
            memory flat in the number of steps) or ``"checkpoint"`` (the exact "backprop" gradient,
            recomputing Runge-Kutta steps, fixed-grid or an adaptive solve's accepted ones, from at
            most ``checkpoints`` stored states). Modes are
            the keys of ``GRADIENT_MODES``.
        order: ``m >= 1``. The solvers keep the state ``(x, x', ..., x^(m-1))`` as a tuple (no
            copy per stage); ``return_state`` / ``integrate_state`` concatenate it along dim 1.
        velocity_init: ``order >= 2``: module ``g`` with ``g(x) = [x'(t0), ..., x^(m-1)(t0)]``
            (concatenated along dim 1; for ``order=2`` just ``x'(t0)``, continuous-unet Eq. 1).
            ``None`` starts every derivative at zero.
        return_state: return the whole state ``[x, ..., x^(m-1)](t[-1])`` (``m*C`` channels)
            instead of ``x(t[-1])``; ``integrate_state`` continues from such a state.
        options: extra solver options (torchdiffeq's names).
        backend: ``"auto"`` or a name from ``odekern.dispatch.BACKEND_NAMES``; forced via
            ``odekern.use_backend`` around the solve.
        checkpoints: ``gradient="checkpoint"`` only: states the backward pass may hold (int >= 1).

    Example::

        >>> class Accel(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.conv = nn.Conv2d(2 * 8, 8, 3, padding=1)
        ...     def forward(self, t, x, v):
        ...         return self.conv(torch.cat([x, v], dim=1)).tanh()
        >>> block = ODEBlock(Accel(), order=2, velocity_init=nn.Conv2d(8, 8, 1), step_size=0.25)
        >>> block(torch.randn(2, 8, 16, 16)).shape
        torch.Size([2, 8, 16, 16])
    """

    def __init__(
        self,
        func: Callable,
        t: Sequence[float] | torch.Tensor = (0.0, 1.0),
        method: str = "rk4",
        step_size: float | None = None,
        rtol: float = 1e-7,
        atol: float = 1e-9,
        gradient: str = "backprop",
        order: int = 1,
        velocity_init: Callable | None = None,
        return_state: bool = False,
        options: dict | None = None,
        backend: str = "auto",
        checkpoints: int = 8,
    ):
        super().__init__()
        if not callable(func):
            raise TypeError(f"ODEBlock: func must be callable, got {type(func).__name__}")
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ValueError(f"ODEBlock: order must be an integer >= 1, got {order!r}")
        if not is_choice(gradient, GRADIENT_MODES):
            raise ValueError(
                f"ODEBlock: gradient must be one of {sorted(GRADIENT_MODES)}, got {gradient!r}"
            )
        if gradient == "adjoint" and not isinstance(func, nn.Module):
            raise ValueError(
                "ODEBlock: gradient='adjoint' needs func to be an nn.Module, so that its parameters "
                f"receive gradients; got {type(func).__name__}"
            )
        method = check_method(method, METHODS)
        step_size, rtol, atol = from_numpy(step_size), from_numpy(rtol), from_numpy(atol)
        check_mapping(options, "ODEBlock: options")
        options = options_from_numpy(options)
        if step_size is not None and (
            isinstance(step_size, bool)
            or not isinstance(step_size, (int, float))
            or not step_size > 0
            or not math.isfinite(step_size)
        ):
            raise ValueError(
                f"ODEBlock: step_size must be a finite number > 0 or None, got {step_size!r}"
            )
        options = canonical_control(dict(options or {}), "ODEBlock: options")
        if step_size is not None:
            if "step_size" in options and options["step_size"] != step_size:
                raise ValueError(
                    f"ODEBlock: step_size={step_size} conflicts with options['step_size']={options['step_size']}"
                )
            options["step_size"] = float(step_size)
        options = check_options(method, options, METHODS[method].OPTIONS)
        if velocity_init is not None:
            if order < 2:
                raise ValueError(
                    "ODEBlock: velocity_init needs order >= 2 (an order-1 block has no velocity)"
                )
            if not callable(velocity_init):
                raise TypeError(
                    f"ODEBlock: velocity_init must be callable, got {type(velocity_init).__name__}"
                )
        check_backend_name(backend)
        # Checked in every mode: a bad value would otherwise wait silently for the mode to change.
        check_checkpoints(checkpoints, "ODEBlock: checkpoints")
        if gradient == "checkpoint":
            check_method_checkpointable(method)
        self.checkpoints = checkpoints

        if order > 1:
            self.dynamics = _HigherOrderDynamics(func, order)
        else:
            self.dynamics = func if isinstance(func, nn.Module) else _FunctionAsModule(func)
        self.velocity_init = velocity_init
        self.register_buffer("t", _as_time_grid(t), persistent=False)
        self._t_values = tuple(self.t.tolist())  # see _times
        self._t_key = None  # what the buffer was when _t_values were read from it (see _times)
        self.method = method
        self.rtol = rtol
        self.atol = atol
        self.options = options
        self.gradient = gradient
        self.order = order
        self.return_state = return_state
        self.backend = backend

    @property
    def func(self) -> Callable:
        """The right-hand side given to the constructor."""
        dyn = self.dynamics
        return dyn.func if isinstance(dyn, (_HigherOrderDynamics, _FunctionAsModule)) else dyn

    def extra_repr(self) -> str:
        return (
            f"order={self.order}, method={self.method!r}, gradient={self.gradient!r}, "
            f"t=({self.t[0].item():g}, {self.t[-1].item():g}), options={self.options}, backend={self.backend!r}"
        )

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        """``[x, x'(t0), ..., x^(m-1)(t0)]`` concatenated along dim 1 (``x`` itself for order 1)."""
        parts = self._initial_parts(x)
        return parts if self.order == 1 else torch.cat(parts, dim=1)

    def _initial_parts(self, x: torch.Tensor):
        """``x`` (order 1) or the tuple ``(x, x'(t0), ..., x^(m-1)(t0))``."""
        _check_input(x, "x", min_dim=2 if self.order > 1 else 1)
        if self.order == 1:
            return x
        if self.velocity_init is None:
            return (x, *(torch.zeros_like(x) for _ in range(self.order - 1)))
        derivatives = self.velocity_init(x)
        expected = (x.shape[0], (self.order - 1) * x.shape[1], *x.shape[2:])
        if not isinstance(derivatives, torch.Tensor) or tuple(derivatives.shape) != expected:
            raise ValueError(
                f"ODEBlock: velocity_init(x) must return the {self.order - 1} initial derivative(s) "
                f"concatenated along dim 1, shape {expected}; got {shape_or_type(derivatives)}"
            )
        if self.order == 2:
            return (x, derivatives)
        return (x, *torch.chunk(derivatives, self.order - 1, dim=1))

    def integrate_state(self, z0: torch.Tensor) -> torch.Tensor:
        """Solve from a whole state ``z0 = [x, ..., x^(m-1)]`` (``m*C`` channels); returns ``z(t[-1])``."""
        _check_input(z0, "z0", min_dim=2 if self.order > 1 else 1)
        if self.order == 1:
            return self._integrate(z0)
        if z0.shape[1] % self.order:
            raise ValueError(
                f"ODEBlock: the state's channels (dim 1, {z0.shape[1]}) must be divisible by order={self.order}"
            )
        return torch.cat(self._integrate(torch.chunk(z0, self.order, dim=1)), dim=1)

    def _integrate(self, z0):
        """``z(t[-1])`` from ``z0``: a tensor (order 1) or the tuple ``(x, ..., x^(m-1))``."""
        like = z0 if self.order == 1 else z0[0]
        t = self._times(like)
        solve = GRADIENT_MODES[self.gradient]
        options = dict(self.options)
        if self.order > 1 and self.method in ADAPTIVE_METHODS:
            options["norm"] = _norm_of_concatenation(options.get("norm"))
        kwargs = {
            "rtol": self.rtol,
            "atol": self.atol,
            "method": self.method,
            "options": options,
        }
        if self.gradient == "checkpoint":
            kwargs["checkpoints"] = self.checkpoints
        if self.backend == "auto":  # leave the choice to use_backend contexts / ODEKERN_BACKEND
            solution = solve(self.dynamics, z0, t, **kwargs)
        else:
            with use_backend(self.backend):
                solution = solve(self.dynamics, z0, t, **kwargs)
        if self.order == 1:
            return solution[-1]
        return tuple(part[-1] for part in solution)

    def _times(self, like: torch.Tensor):
        """The output times for the solve: as Python floats, unless ``t`` is to be differentiated
        (then the ``t`` buffer in the state's dtype and device). odeint then reads no tensor for
        a fixed grid, so torch.compile(fullgraph=True) traces the block whole (in inference the
        checkpointed and adjoint modes solve with odeint too), and the solves that run eagerly
        inside a compiled caller (adaptive methods, the checkpointed and adjoint gradients) check
        their times without reading a tensor: the block breaks its graph only where such a solve
        starts. The floats are read from the buffer again by an eager call when it has changed
        (written in place, replaced, moved): on a GPU each read is a host sync. A compiled call
        (or a block moved to the meta device) uses those of the last eager call, or of
        construction."""
        t = self.t
        if t.requires_grad:
            return t.to(device=like.device, dtype=like.dtype)
        if not (torch.compiler.is_compiling() or t.is_meta):
            # Read every time where the buffer's identity cannot be told: an inference tensor has
            # no version counter, a torch.func transform's wrapper no data pointer.
            key = None if t.is_inference() or inside_transform() else (id(t), t.data_ptr(), t.device, t._version)
            if key is None or key != self._t_key:
                self._t_values, self._t_key = tuple(t.tolist()), key
        return self._t_values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z1 = self._integrate(self._initial_parts(x))
        if self.order == 1:
            return z1
        return torch.cat(z1, dim=1) if self.return_state else z1[0]


def _norm_of_concatenation(norm):
    """The error norm a higher-order block has always used: that of the state concatenated along
    dim 1 (RMS by default, not the max-over-components default of tuple states), so the tuple
    solve takes the same steps. A callable norm still receives the concatenated state (one
    concatenation per error estimate, not per stage)."""
    if norm is None:
        return "rms"
    if callable(norm):
        return lambda z: norm(torch.cat(z, dim=1))
    return norm  # "rms", "max": the same over the tuple as over the concatenation


class _FunctionAsModule(nn.Module):
    """Holds a plain callable RHS so ``ODEBlock.dynamics`` is always a module (parameters: none)."""

    def __init__(self, func: Callable):
        super().__init__()
        self.func = func

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.func(t, x)


def _check_input(x, name: str, min_dim: int) -> None:
    if isinstance(x, tuple):
        raise TypeError(f"ODEBlock: {name} must be a torch.Tensor (ODEBlock does not take tuple states)")
    check_state(x, f"ODEBlock: {name}")
    if x.dim() < min_dim:
        raise ValueError(
            f"ODEBlock: {name} must have a channel dimension (dim 1) for order > 1, got shape {tuple(x.shape)}"
        )
