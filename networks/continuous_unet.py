"""Continuous U-Net (Cheng et al., TMLR 2024): a U-shape of ODE "dynamic blocks".

Two variants share the U-shape and differ in the blocks (``variant=``):

``"official"`` (default) -- the network of the authors' code (``ConvSODEUNet``), parameter for
parameter (169,585 at ``base_filters=3``, 1 class; their ``input_1x1`` conv is defined but never
used by their forward, so it is not built here):

- The stem is the identity: the image itself is the first block's position ``x``, and the
  initial velocity ``v = g(x)`` is computed once, from the raw image, by ``ConvField(C, C)``.
- Every block integrates ``dz/dt = ConvField(z)`` on the stacked state ``z = [x, v]`` (2C -> 2C
  channels): a first-order ODE on the state; "position" and "velocity" are only its halves.
- Between levels a 1x1 conv maps the state 2C -> 4C (the next block's whole state) on the way
  down, and ``[up(z), skip]`` -> 2C on the way up.
- Defaults are the authors' training settings: leaky ReLU, the continuous adjoint,
  rtol = atol = 1e-6, RK4 (one step over [0, 1], as their ``odeint`` call takes).
- ``in_channels`` other than ``base_filters`` (grey-scale images, or more filters) gets a 1x1
  stem conv to ``base_filters`` channels (the authors' forward only works with 3 == 3).

``"second-order"`` -- the paper's Eq. 1 taken literally, ``x'' = f_a(x, x', t)``, built on
``odekern.ODEBlock(order=2)``:

- ``f_a``: ``ConvField`` on ``[x, x']`` (2C -> C: the acceleration only; ``x' = v`` is exact).
- Every block has its own initial-velocity net ``g`` (C -> C) and returns ``[x(t1), x'(t1)]``.
- The 1x1 transitions map to the next block's position width (C'), not its state (2C').
- A 1x1 stem conv maps ``in_channels`` to ``base_filters`` always.
- 192,526 parameters at ``base_filters=3``; defaults softplus, backprop, rtol = atol = 1e-3
  (the constructor defaults of the authors' code and the paper's Table 10 tolerance).
- Checkpoints saved before the official variant existed are of this variant
  (``networks.checkpoint.load_model`` recognises them by their keys).

Common to both (authors' ``ConvSODEUNet``): ``levels`` blocks down, one embedding block,
``levels`` up; between levels a 1x1 conv + non-linearity and bilinear x0.5 / x2 resampling
(align_corners=False); skip concatenation on the way up; 1x1 classifier on the 2C state.
Output: logits. ``method`` takes euler, explicit_adams, implicit_adams, rk4 or dopri5 (Table 5);
``step_size=None`` integrates the grid [0, 1] in one step for fixed-step methods, as torchdiffeq
does with the authors' call; rtol/atol matter for adaptive methods only.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from networks.arguments import check_positive_int
from networks.layers import ConvField, activation, check_images
from networks.unet_blocks import FirstOrderField
from odekern import ODEBlock

SOLVER_CHOICES = ("euler", "explicit_adams", "implicit_adams", "rk4", "dopri5")
VARIANTS = ("official", "second-order")

# Per variant: the settings its authors' runs used (official) or the constructor defaults of
# their code (second-order). Any of them can be overridden by name.
VARIANT_DEFAULTS: dict[str, dict[str, object]] = {
    "official": {"act": "lrelu", "gradient": "adjoint", "rtol": 1e-6, "atol": 1e-6},
    "second-order": {"act": "softplus", "gradient": "backprop", "rtol": 1e-3, "atol": 1e-3},
}


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
        self.channels = channels
        self.ode = ODEBlock(AccelerationField(channels, act), t=t, method=method, step_size=step_size, rtol=rtol,
                               atol=atol, gradient=gradient, order=2,
                               velocity_init=ConvField(channels, channels, act), return_state=True,
                               backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ode(x)


class StateBlock(nn.Module):
    """The authors' block: ``dz/dt = ConvField(z)`` on the whole state ``[B, S, H, W] -> z(t1)``."""

    def __init__(self, state_channels: int, method: str = "rk4", step_size: float | None = None,
                 rtol: float = 1e-6, atol: float = 1e-6, gradient: str = "adjoint", act: str = "lrelu",
                 backend: str = "auto", t: tuple[float, float] = (0.0, 1.0)):
        super().__init__()
        self.channels = state_channels
        self.ode = ODEBlock(FirstOrderField(state_channels, act), t=t, method=method, step_size=step_size,
                               rtol=rtol, atol=atol, gradient=gradient, order=1, backend=backend)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.ode(z)


def variant_of_state_dict(keys) -> str | None:
    """Which variant a state dict's keys belong to (None: neither recognisable)."""
    keys = list(keys)
    if any(k.startswith("initial_velocity.") for k in keys):
        return "official"
    if any(".velocity_init." in k for k in keys):
        return "second-order"
    return None


class ContinuousUNet(nn.Module):
    """Continuous U-Net; see the module docstring. Input ``[B, in_channels, H, W]`` with H, W
    divisible by ``2**levels`` and at least ``2**(levels+1)``; output logits ``[B, num_classes, H, W]``.

    ``act``, ``gradient``, ``rtol``, ``atol`` left as None take the variant's defaults
    (``VARIANT_DEFAULTS``).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1, base_filters: int = 3, levels: int = 4,
                 method: str = "rk4", step_size: float | None = None, rtol: float | None = None,
                 atol: float | None = None, gradient: str | None = None, act: str | None = None,
                 backend: str = "auto", variant: str = "official"):
        super().__init__()
        in_channels = check_positive_int(in_channels, "in_channels")
        num_classes = check_positive_int(num_classes, "num_classes")
        base_filters = check_positive_int(base_filters, "base_filters")
        levels = check_positive_int(levels, "levels")
        if method not in SOLVER_CHOICES:
            raise ValueError(f"ContinuousUNet: method must be one of {SOLVER_CHOICES}, got {method!r}")
        if variant not in VARIANTS:
            raise ValueError(f"ContinuousUNet: variant must be one of {VARIANTS}, got {variant!r}")
        given = {"act": act, "gradient": gradient, "rtol": rtol, "atol": atol}
        settings = {k: VARIANT_DEFAULTS[variant][k] if v is None else v for k, v in given.items()}
        self.in_channels, self.num_classes, self.levels, self.variant = in_channels, num_classes, levels, variant
        ode = {"method": method, "step_size": step_size, "backend": backend, **settings}
        pos = [base_filters * 2**i for i in range(levels + 1)]  # position widths; state = 2x
        official = variant == "official"
        # Width a block takes: the whole state (official) or the position (second-order).
        width = [2 * p for p in pos] if official else pos
        block = StateBlock if official else DynamicBlock
        if official:
            self.stem = nn.Identity() if in_channels == base_filters else nn.Conv2d(in_channels, base_filters, 1)
            self.initial_velocity = ConvField(base_filters, base_filters, settings["act"])
        else:
            self.stem = nn.Conv2d(in_channels, base_filters, 1)
        self.down_blocks = nn.ModuleList(block(width[i], **ode) for i in range(levels))
        self.down_convs = nn.ModuleList(nn.Conv2d(2 * pos[i], width[i + 1], 1) for i in range(levels))
        self.embedding = block(width[levels], **ode)
        self.up_convs = nn.ModuleList(nn.Conv2d(2 * pos[i + 1] + 2 * pos[i], width[i], 1) for i in range(levels))
        self.up_blocks = nn.ModuleList(block(width[i], **ode) for i in range(levels))
        self.classifier = nn.Conv2d(2 * pos[0], num_classes, 1)
        self.act = activation(settings["act"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, "ContinuousUNet", self.in_channels, multiple=2**self.levels,
                     min_size=2 ** (self.levels + 1))
        x = self.stem(x)
        if self.variant == "official":
            x = torch.cat([x, self.initial_velocity(x)], dim=1)
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

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """As ``nn.Module.load_state_dict``, naming the variant when the keys are of the other one."""
        found = variant_of_state_dict(state_dict.keys())
        if found is not None and found != self.variant:
            raise ValueError(
                f"ContinuousUNet: the state dict holds a variant={found!r} network but this model is "
                f"variant={self.variant!r}; build it with variant={found!r} (continuous U-Net checkpoints "
                "saved before the official variant existed are variant='second-order')")
        if any(k.startswith(("odeblock_", "conv_down1_2.")) for k in state_dict):
            raise ValueError("ContinuousUNet: this is a state dict of the authors' code (keys like "
                             "'odeblock_down1.odefunc.conv1.weight'); load it with networks.load_official")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
