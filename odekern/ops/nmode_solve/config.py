"""Configuration of one nmODE solve and the contract every ``nmode_solve`` backend implements.

The ODE, per element::

    dy/dt = f(y, g) = -y + sin^2(y + g) = -y + (1 - cos(2 (y + g))) / 2
    df/dy = -1 + sin(2 (y + g))          df/dg = sin(2 (y + g))

Backend contract (``reference``, ``cpu``, ``cuda``, ``triton`` all implement exactly this;
``odekern/ops/nmode_solve/op.py`` and ``__init__.py`` are the only callers)::

    forward(y0, g, t0, t1, cfg, need_f) -> (y1, f0, f1, stats)
    backward(grad_y1, grad_f0, grad_f1, y0, g, y1, stats, t0, t1, cfg) -> (grad_y0, grad_g)
    checks_output_finite(y0) -> bool      (optional) True if forward raises RuntimeError
                                          rather than return a non-finite y1 for these inputs

Tensors handed to a backend (the op layer prepares them; backends may assume all of it):

- ``y0``: contiguous, 1-D, ``N = y0.numel()`` elements (the caller's shape is flattened),
  dtype float32 or float64, any N >= 0.
- ``g``: contiguous, 1-D, ``G`` elements, same dtype and device as ``y0``, ``N % G == 0``
  (``G >= 1`` unless ``N == 0``). Element ``e`` of ``y0`` uses ``g[e % G]``: the broadcast
  dimensions of the user's ``g`` have been moved to the front ("leading broadcast"), e.g.
  ``g`` [1,C,H,W] against ``y0`` [B,C,H,W] gives ``G = C*H*W`` and ``N = B*G``. Broadcasts
  inside the trailing block (e.g. ``g`` [C,1,1]) are materialised by the op layer, which also
  sums ``grad_g`` back to the user's shape.
- ``t0 < t1``: Python floats (float64 time arithmetic, as torchdiffeq).
- ``need_f``: if False, ``f0``/``f1`` may be returned as empty tensors (``numel() == 0``).

Forward outputs:

- ``y1``: [N], y at t1. ``f0 = f(y0, g)`` and ``f1 = f(y1, g)``: [N] each (or empty, above).
- ``stats``: 1-D float64 CPU tensor, what the backward needs besides y0 and g (and, for the
  adjoint, y1) (O(steps) scalars, never a trajectory)::

      stats[0] = n_accepted       accepted steps of the shared step sequence (0 for
                                  control="per_element": each element re-derives its own)
      stats[1] = n_rejected       rejected step attempts (global control), else 0
      stats[2] = theta            where t1 lies inside the last accepted step, as a fraction
                                  of it (dopri5 global control interpolates there with
                                  torchdiffeq's dense output); 1.0 for fixed grids
      stats[3:3+n_accepted]       the accepted step sizes dt_0 .. dt_{n-1}

  Fixed-step methods: the grid is torchdiffeq's (``t0 + k*step_size``, last point clipped to
  t1), so ``stats`` holds those dts and theta = 1. dopri5 with ``control="global"``: one step
  size for the whole tensor, chosen exactly like torchdiffeq (initial-step selection, RMS
  norm of the error ratio over all N elements, safety 0.9, ifactor 10, dfactor 0.2, order 5),
  integrating past t1 and interpolating at t1. ``control="per_element"``: each element runs
  that same algorithm on its own scalar (the "RMS" over one element is ``abs``).

Backward (``cfg.gradient``):

- ``"checkpoint"`` (formerly ``"exact"``): the gradient of the discrete solve above (y1, f0, f1 as functions of y0, g)
  with the step sizes held constant (the usual convention: step-size selection is not
  differentiated). Computed per element by replaying the steps and running reverse mode
  through the stages (and through the dense-output interpolation of the last step).
- ``"adjoint"``: the continuous adjoint, per element: [y, a_y, a_g] integrated from t1 back
  to t0 with ``da_y/dt = -a_y df/dy``, ``da_g/dt = -a_y df/dg``, starting at
  ``a_y(t1) = grad_y1 + grad_f1 * df/dy(y1)``, ``a_g(t1) = grad_f1 * df/dg(y1)``; then
  ``grad_y0 = a_y(t0) + grad_f0 * df/dy(y0)``, ``grad_g = a_g(t0) + grad_f0 * df/dg(y0)``.
  Fixed-step methods use the same grid reversed; dopri5 uses per-element adaptive control on
  the augmented state (error norm = max over its three components) with cfg.rtol/atol.
- ``y1``: the forward's y(t1) ([N], contiguous) for ``"adjoint"``, whose backward solve starts
  there; None for ``"checkpoint"``, which replays the solve from y0.
- ``grad_f0``/``grad_f1`` may be None (treated as zero); ``grad_y1`` is always a tensor.
- Outputs: ``grad_y0`` [N] and ``grad_g`` [G] (already summed over the N // G repeats).
- Double backward is not supported (raises).

Memory: no backend stores a trajectory in global memory. The exact backward keeps a bounded
per-element (per-lane) scratch of ``CHECKPOINTS`` states and recomputes the rest (two-level
checkpointing; see csrc/ops/nmode_solve/nmode_solve.h).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import numbers

from odekern._choices import is_choice
from odekern.ops.nmode_solve import failures

METHODS = ("dopri5", "rk4", "rk4_classic", "midpoint", "euler")


class MethodId(enum.IntEnum):
    """The integer each kernel backend receives for a method name (C++ ``enum Method`` and the
    Triton ``METHOD`` constexpr are these values)."""

    EULER = 0
    MIDPOINT = 1
    RK4 = 2
    RK4_CLASSIC = 3
    DOPRI5 = 4

    @classmethod
    def of(cls, method: str) -> "MethodId":
        return cls[method.upper()]

ADAPTIVE_METHODS = ("dopri5",)
CONTROLS = ("global", "per_element")
GRADIENTS = ("checkpoint", "adjoint")
# The former name of "checkpoint", still accepted (the public entry points warn).
DEPRECATED_GRADIENTS = {"exact": "checkpoint"}

# Default cap on steps. Exceeding it raises a RuntimeError (with the t reached and last dt).
DEFAULT_MAX_NUM_STEPS = 100_000

# States kept per element by the C++ exact backward (two levels: checkpoints and one segment);
# the kernels read it from the generated header. Triton keeps fewer, in registers
# (triton/launch.py, REGISTER_CHECKPOINTS).
CHECKPOINTS = 32


@dataclasses.dataclass(frozen=True)
class NmodeConfig:
    """Everything about a solve except the tensors and the time interval.

    ``step_size`` is required for fixed-step methods and ignored by dopri5; ``rtol``/``atol``
    and ``control`` only matter for dopri5 (and for the adjoint's backward solve).
    """

    method: str = "dopri5"
    step_size: float | None = None
    rtol: float = 1e-7
    atol: float = 1e-9
    control: str = "global"
    gradient: str = "checkpoint"
    max_num_steps: int = DEFAULT_MAX_NUM_STEPS

    def __post_init__(self):
        if not is_choice(self.method, METHODS):
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not is_choice(self.control, CONTROLS):
            raise ValueError(f"control must be one of {CONTROLS}, got {self.control!r}")
        if is_choice(self.gradient, DEPRECATED_GRADIENTS):
            object.__setattr__(self, "gradient", DEPRECATED_GRADIENTS[self.gradient])
        if not is_choice(self.gradient, GRADIENTS):
            raise ValueError(f"gradient must be one of {GRADIENTS}, got {self.gradient!r}")
        if self.method not in ADAPTIVE_METHODS:
            if self.step_size is None:
                raise ValueError(f"step_size is required for the fixed-step method {self.method!r}")
        if self.step_size is not None:
            object.__setattr__(self, "step_size", real_number("step_size", self.step_size))
            if not 0.0 < self.step_size < math.inf:
                raise ValueError(f"step_size must be a finite number > 0, got {self.step_size!r}")
        for name in ("rtol", "atol"):
            v = real_number(name, getattr(self, name))
            object.__setattr__(self, name, v)
            if not 0.0 <= v < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.rtol == 0.0 and self.atol == 0.0:
            raise ValueError("rtol and atol cannot both be zero")
        if isinstance(self.max_num_steps, bool) or not isinstance(self.max_num_steps, numbers.Integral):
            raise TypeError(f"max_num_steps must be an int, got {type(self.max_num_steps).__name__}")
        object.__setattr__(self, "max_num_steps", int(self.max_num_steps))
        if self.max_num_steps < 1:
            raise ValueError(f"max_num_steps must be a positive int, got {self.max_num_steps!r}")

    @property
    def adaptive(self) -> bool:
        return self.method in ADAPTIVE_METHODS

    def to_args(self) -> tuple:
        """The flat argument tuple used by the torch.library op schema (same order as fields)."""
        return (self.method, -1.0 if self.step_size is None else float(self.step_size),
                float(self.rtol), float(self.atol), self.control, self.gradient,
                int(self.max_num_steps))

    @classmethod
    def from_args(cls, method, step_size, rtol, atol, control, gradient, max_num_steps) -> "NmodeConfig":
        return cls(method, None if step_size < 0 else step_size, rtol, atol, control, gradient,
                   max_num_steps)


def real_number(name: str, v) -> float:
    """``v`` as a float when it is a real number (a bool or a string is not one: they would pass
    as 1.0 or fail deep inside a backend); TypeError naming ``name`` otherwise. One-element
    tensors are read by ``nmode_solve`` (this module stays free of torch)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    return float(v)


def fixed_grid_step_count(t0: float, t1: float, step_size: float, max_num_steps: int) -> int:
    """The number of steps of torchdiffeq's fixed grid over [t0, t1], checked against the step
    budget before anything is allocated (a huge span or a tiny step would otherwise overflow the
    count or exhaust memory). Raises RuntimeError naming the count and the budget."""
    count = (t1 - t0) / step_size
    if not math.isfinite(count) or math.ceil(count) > max_num_steps:
        raise failures.FIXED_GRID_TOO_MANY_STEPS.exception(step_size=repr(step_size), t0=repr(t0), t1=repr(t1),
                                                           steps=f"{count:.3g}", max_num_steps=max_num_steps)
    return max(int(math.ceil(count + 1.0)) - 1, 1)


def fixed_grid_steps(t0: float, t1: float, step_size: float,
                     max_num_steps: int = DEFAULT_MAX_NUM_STEPS) -> list[float]:
    """torchdiffeq's fixed grid: t0 + k*step_size for k < n, last point clipped to t1."""
    n_steps = fixed_grid_step_count(t0, t1, step_size, max_num_steps)
    ts = [t0 + k * step_size for k in range(n_steps)] + [t1]
    # torchdiffeq keeps a final point even if it lands (almost) on the previous one.
    return [ts[k + 1] - ts[k] for k in range(n_steps)]
