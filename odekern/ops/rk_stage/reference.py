"""The spec of the rk_stage op family in plain, differentiable PyTorch.

- ``rk_combine(y, ks, coeffs) = y + (sum_j coeffs[j] * ks[j])``: a Runge-Kutta stage input
  (coeffs = dt * a_i), the final combination (dt * b) or an Adams history combination;
  ``y=None`` drops the base term (embedded error estimates, Adams increments).
- ``rk_error_ratio(y0, y1, ks, err_coeffs, rtol, atol)``: with ``e = sum_j err_coeffs[j] *
  ks[j]``, the RMS error ratio ``sqrt(mean((e / (atol + rtol * max(|y0|, |y1|)))**2))`` (0 for an
  empty state) as a 0-dim float64 tensor (``ks=[err], err_coeffs=[1]`` for a materialised error
  estimate).

Coefficients are Python floats (dt already folded in) or, for gradients with respect to the
time grid, 0-dim tensors.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def rk_combine(y: Optional[torch.Tensor], ks: Sequence[torch.Tensor], coeffs: Sequence) -> torch.Tensor:
    increment = None
    for c, k in zip(coeffs, ks):
        increment = c * k if increment is None else increment + c * k
    if increment is None:
        if y is None:  # no base and no terms: the empty sum
            raise ValueError("rk_combine: needs a base y or at least one k tensor")
        return y
    # The increment first, then y once, as torchdiffeq's y0 + dy (see csrc/ops/rk_stage/rk_stage.h).
    return increment if y is None else y + increment


def rk_error_ratio(y0: torch.Tensor, y1: torch.Tensor, ks: Sequence[torch.Tensor],
                   err_coeffs: Sequence, rtol: float, atol: float) -> torch.Tensor:
    with torch.no_grad():
        if y0.numel() == 0:
            return y0.new_zeros((), dtype=torch.float64)
        err = torch.zeros_like(y0, dtype=torch.float64)
        for d, k in zip(err_coeffs, ks):
            err = err + float(d) * k.double()
        scale = atol + rtol * torch.maximum(y0.double().abs(), y1.double().abs())
        return (err / scale).pow(2).mean().sqrt()
