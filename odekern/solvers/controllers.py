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
from odekern.solvers.state import component, first, is_tuple, map_state, real_dtype, widened

Tensor = torch.Tensor


@dataclasses.dataclass(frozen=True)
class IntegralController:
    """``dt_next = dt * clamp(safety / ratio**(1/order), dfactor, ifactor)``, clamped to
    ``[min_step, max_step]``. After an accepted step (ratio < 1) the step never shrinks."""

    order: int
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
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
    f over that trial step. One extra RHS evaluation. ``order`` is the error estimator's order."""
    scale = _tolerance_scale(y0, rtol, atol)
    d0 = float(norm(map_state(lambda a, s: widened(a) / s, y0, scale)).abs())
    d1 = float(norm(map_state(lambda a, s: widened(a) / s, f0, scale)).abs())
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    # Evaluate in the state's precision, as torchdiffeq does (so the same h0 is found).
    h0 = float(torch.tensor(h0, dtype=real_dtype(first(y0).dtype)))
    y1 = stages.stage_state(y0, h0, (1.0,), (f0,))
    f1 = rhs(t0 + h0, y1)
    d2 = float(norm(map_state(lambda a, b, s: (widened(a) - widened(b)) / s, f1, f0, scale)).abs()) / h0
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    return min(100 * h0, h1)


def _tolerance_scale(y0, rtol: Any, atol: Any):
    """``atol + |y0| * rtol`` per component (tolerances may be given per component)."""
    if is_tuple(y0):
        return tuple(component(atol, i) + torch.abs(widened(c)) * component(rtol, i) for i, c in enumerate(y0))
    return atol + torch.abs(widened(y0)) * rtol
