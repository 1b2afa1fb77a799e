"""Step-size control for adaptive solvers: initial step selection and the integral controller.

Both follow torchdiffeq's formulas and constants exactly (Hairer, Norsett & Wanner I, II.4), so a
problem solved by odekern and torchdiffeq takes the same sequence of steps. The controller works
on Python floats: the error ratio has to reach the host for the accept/reject branch anyway, and
step sizes are not differentiated (they are a discretisation choice, not part of the model).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch

from odekern.solvers import stages
from odekern.solvers.state import component, components, first, is_tuple, map_state, real_dtype, widened

Tensor = torch.Tensor

# torchdiffeq's controller constants (its adaptive solvers' defaults). The C++ and Triton kernels
# get them generated (tools/generate_kernel_constants.py); the nmODE reference reads them here.
SAFETY = 0.9
IFACTOR = 10.0
DFACTOR = 0.2

# Hairer's starting step, with torchdiffeq's constants: below NORM_FLOOR (of |y0| or |f0|) the
# trial step is TINY_STEP, else STEP_FRACTION * d0 / d1; when f barely changes over it
# (both d1, d2 <= FLAT_FLOOR) the step is max(TINY_STEP, FLAT_SHRINK * h0); never more than
# MAX_GROWTH * h0.
INITIAL_NORM_FLOOR = 1e-5
INITIAL_TINY_STEP = 1e-6
INITIAL_STEP_FRACTION = 0.01
INITIAL_FLAT_FLOOR = 1e-15
INITIAL_FLAT_SHRINK = 1e-3
INITIAL_MAX_GROWTH = 100.0


@dataclasses.dataclass(frozen=True)
class IntegralController:
    """``dt_next = dt * clamp(safety / ratio**(1/order), dfactor, ifactor)``, clamped to
    ``[min_step, max_step]``. After an accepted step (ratio < 1) the step never shrinks."""

    order: int
    safety: float = SAFETY
    ifactor: float = IFACTOR
    dfactor: float = DFACTOR
    min_step: float = 0.0
    max_step: float = math.inf

    def clamp(self, dt: float) -> float:
        return min(max(dt, self.min_step), self.max_step)

    def next_step(self, dt: float, error_ratio: float) -> float:
        if error_ratio == 0:
            factor = self.ifactor
        else:
            floor = 1.0 if error_ratio < 1 else self.dfactor
            factor = min(self.ifactor, max(self.safety / error_ratio ** (1.0 / self.order), floor))
        return self.clamp(dt * factor)


@torch.no_grad()
def select_initial_step(rhs: Callable[[Tensor, Tensor], Tensor], t0: Tensor, y0: Tensor, f0: Tensor,
                        order: int, rtol: Any, atol: Any, norm: Callable[[Tensor], Tensor]) -> float:
    """Hairer's starting step: an Euler step sized from |y0| and |f0|, refined by the change in
    f over that trial step. One extra RHS evaluation. ``order`` is the error estimator's order.

    NaN when y0 or f0, divided by the error scale, has no finite norm (f0 non-finite, or a zero
    scale): no step can be sized from them, and the caller says which it is."""
    scale = _tolerance_scale(y0, rtol, atol)
    d0 = float(norm(map_state(lambda a, s: widened(a) / s, y0, scale)).abs())
    d1 = float(norm(map_state(lambda a, s: widened(a) / s, f0, scale)).abs())
    if not (math.isfinite(d0) and math.isfinite(d1)):
        return math.nan
    h0 = initial_trial_step(d0, d1)
    # Evaluate in the state's precision, as torchdiffeq does (so the same h0 is found).
    h0 = float(torch.tensor(h0, dtype=real_dtype(first(y0).dtype)))
    y1 = stages.stage_state(y0, h0, (1.0,), (f0,))
    f1 = rhs(t0 + h0, y1)
    d2 = float(norm(map_state(lambda a, b, s: (widened(a) - widened(b)) / s, f1, f0, scale)).abs()) / h0
    return initial_step_from_trial(h0, d1, d2, order)


def initial_trial_step(d0: float, d1: float) -> float:
    """Hairer's trial step h0 from d0 = ||y0 / scale|| and d1 = ||f0 / scale||."""
    if d0 < INITIAL_NORM_FLOOR or d1 < INITIAL_NORM_FLOOR:
        return INITIAL_TINY_STEP
    return INITIAL_STEP_FRACTION * d0 / d1


def initial_step_from_trial(h0: float, d1: float, d2: float, order: int) -> float:
    """The starting step from the trial step h0, d1 and d2 = ||(f(y0 + h0 f0) - f0) / scale|| / h0."""
    if d1 <= INITIAL_FLAT_FLOOR and d2 <= INITIAL_FLAT_FLOOR:
        h1 = max(INITIAL_TINY_STEP, h0 * INITIAL_FLAT_SHRINK)
    else:
        h1 = (INITIAL_STEP_FRACTION / max(d1, d2)) ** (1.0 / (order + 1))
    return min(INITIAL_MAX_GROWTH * h0, h1)


def error_scale_has_zero(y: Any, rtol: Any, atol: Any) -> bool:
    """Whether ``atol + |y| * rtol`` is 0 for some component: there the error ratio is 0/0 (or
    x/0), so no step size can meet the tolerance (atol = 0 and a component of y equal to 0)."""
    scale = _tolerance_scale(y, rtol, atol)
    return any(bool((s == 0).any()) for s in components(scale))


def _tolerance_scale(y0, rtol: Any, atol: Any):
    """``atol + |y0| * rtol`` per component (tolerances may be given per component)."""
    if is_tuple(y0):
        return tuple(component(atol, i) + torch.abs(widened(c)) * component(rtol, i) for i, c in enumerate(y0))
    return atol + torch.abs(widened(y0)) * rtol
