"""``NmODE``: CNM-UNet's continuous nmODE block (cnm-unet Eq. 1-2) on the fused solve.

Drop-in for the reference implementation's pair ``nmODE`` (the RHS module owning ``gamma``
and the 3x3 conv) + ``odeint_adjoint(nmODE, y, t=[0, t1], rtol, atol, method="dopri5")``:
``NmODE(C, H, W)(y0)`` returns ``y(t1)``; ``return_f=True`` also returns the RHS at t0 and t1
(DUSE's statistics, Eq. 3-4), differentiable into ``gamma`` and the conv.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from odekern.ops.nmode_solve import canonical_gradient, nmode_solve
from odekern.ops.nmode_solve.config import DEFAULT_MAX_NUM_STEPS, NmodeConfig


class NmODE(nn.Module):
    """dy/dt = -y + sin^2(y + C(gamma)), solved from 0 to ``t1`` for every element of ``y0``.

    Args:
        channels, height, width: shape of gamma ``[1, C, H, W]`` (zero-initialised, the
            "global memory parameter"); inputs are ``[B, C, H, W]``.
        t1: end time (CNM-UNet uses 0.05).
        method, step_size, rtol, atol, control, gradient, backend, max_num_steps: as
            :func:`odekern.nmode_solve` (defaults: dopri5, rtol 1e-7, atol 1e-9, global step
            control as torchdiffeq, the exact gradient in O(1) memory: ``gradient="checkpoint"``).
        kernel_size: of the conv C (3 in the paper; padding keeps H, W).
    """

    def __init__(self, channels: int, height: int, width: int, t1: float = 0.05, *,
                 method: str = "dopri5", step_size: float | None = None, rtol: float = 1e-7,
                 atol: float = 1e-9, control: str = "global", gradient: str = "checkpoint",
                 backend: str = "auto", max_num_steps: int = DEFAULT_MAX_NUM_STEPS,
                 kernel_size: int = 3):
        super().__init__()
        sizes = []
        for name, v in (("channels", channels), ("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
            sizes.append(int(v))
        channels, height, width = sizes
        if isinstance(t1, bool) or not isinstance(t1, numbers.Real):
            raise TypeError(f"t1 must be a real number, got {type(t1).__name__}")
        if not 0.0 < float(t1) < math.inf:
            raise ValueError(f"t1 must be finite and > 0, got {t1!r}")
        gradient = canonical_gradient(gradient)
        NmodeConfig(method=method, step_size=step_size, rtol=rtol, atol=atol, control=control,
                    gradient=gradient, max_num_steps=max_num_steps)  # validates the options
        self.t1 = float(t1)
        self.solve_kwargs = dict(method=method, step_size=step_size, rtol=rtol, atol=atol,
                                 control=control, gradient=gradient, backend=backend,
                                 max_num_steps=max_num_steps)
        self.gamma = nn.Parameter(torch.zeros(1, channels, height, width))
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)

    def phase(self) -> torch.Tensor:
        """g = C(gamma), the phase term of Eq. 1 ([1, C, H, W])."""
        return self.conv(self.gamma)

    def rhs(self, t, y: torch.Tensor) -> torch.Tensor:
        """The RHS as a torchdiffeq-style ``func(t, y)`` (for comparisons and odeint users)."""
        return -y + torch.sin(y + self.phase()) ** 2

    def forward(self, y0: torch.Tensor, return_f: bool = False):
        shape = tuple(self.gamma.shape[1:])
        if not isinstance(y0, torch.Tensor) or y0.dim() < 4 or tuple(y0.shape[-3:]) != shape:
            c, h, w = shape
            got = tuple(y0.shape) if isinstance(y0, torch.Tensor) else type(y0).__name__
            raise ValueError(f"NmODE({c}, {h}, {w}) takes inputs shaped [B, {c}, {h}, {w}], got {got}")
        g = self.phase().to(y0.dtype)
        return nmode_solve(y0, g, 0.0, self.t1, return_f=return_f, **self.solve_kwargs)

    def extra_repr(self) -> str:
        c, h, w = self.gamma.shape[1:]
        return f"{c}, {h}, {w}, t1={self.t1}, method={self.solve_kwargs['method']!r}, " \
               f"control={self.solve_kwargs['control']!r}, gradient={self.solve_kwargs['gradient']!r}"
