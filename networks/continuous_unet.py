"""Continuous U-Net (Cheng et al., TMLR 2024): a U-shape of second-order ODE "dynamic blocks".

Dynamic block (paper Eq. 1), built on ``odekern.ODEBlock(order=2)``::

    x''(t) = f_a(x, x', t),   x(t0) = X0,   x'(t0) = g(X0)

- ``f_a``: ``ConvField`` on ``[x, x']`` (2C -> C channels): instance norm -> 3x3 conv ->
  non-linearity -> instance norm -> 1x1 conv -> non-linearity, as the authors' ConvSODEFunc.
- ``g``: the same small conv net (C -> C), as the authors' InitialVelocity.
- The block returns its whole state ``[x(t1), x'(t1)]`` (2C channels), which is what the
  authors' blocks hand to the next layer; so with ``base_filters=3`` the blocks run at
  6, 12, 24, 48, 96 channels (state width; position width 3 .. 48).

U-shape (authors' ConvSODEUNet): ``levels`` dynamic blocks down, one embedding block, ``levels``
up; between levels a 1x1 conv + non-linearity and bilinear x0.5 / x2 resampling
(align_corners=False); skip concatenation on the way up; 1x1 classifier. Output: logits.

Defaults follow the paper (Sec. 4.1, Table 10) and the authors' code: RK4 over t in [0, 1];
torchdiffeq with the authors' call (no ``step_size`` option) takes one RK4 step over the grid
[0, 1], so ``step_size=None`` does the same here; ``rtol = atol = 1e-3`` (Table 10's tolerance,
used by adaptive methods only); softplus; gradient by backprop (the authors' default
``adjoint=False``; ``gradient="adjoint"`` gives the O(1)-memory continuous adjoint). ``method``
takes euler, explicit_adams, implicit_adams, rk4 or dopri5 for the Table 5 ablation.

Where this differs from the authors' code (each one to follow the paper's Eq. 1 or to make
the model usable beyond their setting):

- Their RHS returns the derivative of the whole 2C state (a first-order ODE on an augmented
  state); here it returns only the acceleration, ``x' = v`` is exact -- the second-order model
  the paper writes down. Consequently every block has its own ``g`` (theirs: only the first;
  later blocks split the incoming 1x1-conv output into position and velocity halves), and the
  inter-level 1x1 convs map to the next block's position width (C) rather than its state (2C).
- Their stem feeds the raw image to ``g`` (works only because 3 filters == 3 RGB channels;
  their ``input_1x1`` is defined but unused); here a 1x1 stem conv maps ``in_channels`` to
  ``base_filters`` so any channel count works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from networks.layers import ConvField, activation, check_images, check_positive_int

SOLVER_CHOICES = ("euler", "explicit_adams", "implicit_adams", "rk4", "dopri5")


class AccelerationField(nn.Module):
    """``x'' = f_a(t, x, x')``: ``ConvField`` on the channel-concatenated ``[x, x']``."""

    def __init__(self, channels: int, act: str = "softplus"):
        super().__init__()
        self.field = ConvField(2 * channels, channels, act)

    def forward(self, t: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.field(torch.cat([x, v], dim=1))


class DynamicBlock(nn.Module):
    """Second-order ODE block: ``[B, C, H, W] -> [x(t1), x'(t1)]`` of shape ``[B, 2C, H, W]``."""

    def __init__(self, channels: int, method: str = "rk4", step_size: float | None = None, rtol: float = 1e-3,
                 atol: float = 1e-3, gradient: str = "backprop", act: str = "softplus", backend: str = "auto",
                 t: tuple[float, float] = (0.0, 1.0)):
        super().__init__()
        from odekern import (
            ODEBlock,  # late: the networks package stays importable without the solver stack
        )

        self.channels = channels
        self.ode = ODEBlock(AccelerationField(channels, act), t=t, method=method, step_size=step_size, rtol=rtol,
                            atol=atol, gradient=gradient, order=2, velocity_init=ConvField(channels, channels, act),
                            return_state=True, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ode(x)


class ContinuousUNet(nn.Module):
    """Continuous U-Net; see the module docstring. Input ``[B, in_channels, H, W]`` with H, W
    divisible by ``2**levels`` and at least ``2**(levels+1)``; output logits ``[B, num_classes, H, W]``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1, base_filters: int = 3, levels: int = 4,
                 method: str = "rk4", step_size: float | None = None, rtol: float = 1e-3, atol: float = 1e-3,
                 gradient: str = "backprop", act: str = "softplus", backend: str = "auto"):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes),
                            ("base_filters", base_filters), ("levels", levels)):
            check_positive_int(value, name)
        if method not in SOLVER_CHOICES:
            raise ValueError(f"ContinuousUNet: method must be one of {SOLVER_CHOICES}, got {method!r}")
        self.in_channels, self.num_classes, self.levels = in_channels, num_classes, levels
        ode = {"method": method, "step_size": step_size, "rtol": rtol, "atol": atol, "gradient": gradient,
               "act": act, "backend": backend}
        pos = [base_filters * 2**i for i in range(levels + 1)]  # position widths; state = 2x
        self.stem = nn.Conv2d(in_channels, pos[0], 1)
        self.down_blocks = nn.ModuleList(DynamicBlock(pos[i], **ode) for i in range(levels))
        self.down_convs = nn.ModuleList(nn.Conv2d(2 * pos[i], pos[i + 1], 1) for i in range(levels))
        self.embedding = DynamicBlock(pos[levels], **ode)
        self.up_convs = nn.ModuleList(nn.Conv2d(2 * pos[i + 1] + 2 * pos[i], pos[i], 1) for i in range(levels))
        self.up_blocks = nn.ModuleList(DynamicBlock(pos[i], **ode) for i in range(levels))
        self.classifier = nn.Conv2d(2 * pos[0], num_classes, 1)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, "ContinuousUNet", self.in_channels, multiple=2**self.levels,
                     min_size=2 ** (self.levels + 1))
        x = self.stem(x)
        skips = []
        for block, conv in zip(self.down_blocks, self.down_convs):
            features = block(x)
            skips.append(features)
            x = F.interpolate(self.act(conv(features)), scale_factor=0.5, mode="bilinear", align_corners=False)
        x = self.embedding(x)
        for i in reversed(range(self.levels)):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = self.up_blocks[i](self.act(self.up_convs[i](torch.cat([x, skips[i]], dim=1))))
        return self.classifier(x)
