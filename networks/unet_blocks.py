"""The comparison blocks of continuous-unet Table 3, one class per row.

Every block maps ``[B, in_channels, H, W] -> [B, out_channels, H, W]`` (spatial size kept), so
any of them drops into the one U-Net skeleton of ``networks.unet.UNet``:

- ``PLN`` plain: (3x3 conv -> ReLU) x 2.
- ``RSE`` residual (He et al.): two 3x3 conv+BN with an identity / projected shortcut.
- ``DSE`` dense (DenseNet principles): bottleneck layers whose outputs are concatenated to
  everything before them, then a 1x1 transition to ``out_channels``.
- ``INC`` inception: parallel 1x1, 1x1->3x3, 1x1->5x5 and 3x3-max-pool->1x1 branches.
- ``PSP`` pyramid pooling (Zhao et al.): average-pool to 1x1, 2x2, 3x3, 6x6, 1x1 conv each,
  upsample back, concatenate with the input, 1x1 bottleneck -> ReLU (as the authors' PSP block:
  no 3x3 convolution).
- ``FO`` first-order ODE block (Pinckaers & Litjens): 1x1 conv to ``out_channels``, then
  ``x' = ConvField(x)`` integrated over t in [0, 1] with ``odekern.ODEBlock(order=1)``.

The paper describes the rows in one line each; where the authors' comparison code differs
from the textbook block (their "dense" block is a single bottleneck layer without
concatenation), the textbook form described in the paper's Sec. 2.1 is implemented.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from networks.arguments import check_positive_int
from networks.layers import ConvField, activation
from odekern import ODEBlock


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class PLN(nn.Sequential):
    """(3x3 conv -> ReLU) x 2."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.ReLU(),
        )


class RSE(nn.Module):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)); the shortcut projects when widths differ."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class DSE(nn.Module):
    """Dense block: each layer (BN-ReLU-1x1-BN-ReLU-3x3, growth ``g``) sees all earlier features."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int = 2, growth: int | None = None,
                 bottleneck: int = 4):
        super().__init__()
        num_layers = check_positive_int(num_layers, "num_layers")
        growth = max(1, out_channels // 2) if growth is None else check_positive_int(growth, "growth")
        layers, width = [], in_channels
        for _ in range(num_layers):
            layers.append(nn.Sequential(
                nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, bottleneck * growth, 1, bias=False),
                nn.BatchNorm2d(bottleneck * growth), nn.ReLU(),
                nn.Conv2d(bottleneck * growth, growth, 3, padding=1, bias=False),
            ))
            width += growth
        self.layers = nn.ModuleList(layers)
        self.transition = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = x
        for layer in self.layers:
            features = torch.cat([features, layer(features)], dim=1)
        return self.transition(features)


def _split_widths(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class INC(nn.Module):
    """Inception: four parallel branches concatenated to ``out_channels`` (needs >= 4)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        if out_channels < 4:
            raise ValueError(f"INC: out_channels must be >= 4 (four branches), got {out_channels}")
        w1, w3, w5, wp = _split_widths(out_channels, 4)
        reduce = max(1, in_channels // 2)
        self.branch1 = _conv_bn_relu(in_channels, w1, 1)
        self.branch3 = nn.Sequential(_conv_bn_relu(in_channels, reduce, 1), _conv_bn_relu(reduce, w3, 3))
        self.branch5 = nn.Sequential(_conv_bn_relu(in_channels, reduce, 1), _conv_bn_relu(reduce, w5, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), _conv_bn_relu(in_channels, wp, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1)


class PSP(nn.Module):
    """Pyramid pooling: pooled context at ``bins`` scales + the input, fused by a 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int, bins: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(in_channels, in_channels, 1, bias=False)) for b in bins
        )
        self.bottleneck = nn.Conv2d(in_channels * (len(bins) + 1), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pyramid = [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False) for stage in self.stages]
        return F.relu(self.bottleneck(torch.cat([*pyramid, x], dim=1)))


class FirstOrderField(nn.Module):
    """``dx/dt = ConvField(x)`` with torchdiffeq's ``func(t, x)`` signature."""

    def __init__(self, channels: int, act: str = "softplus"):
        super().__init__()
        self.field = ConvField(channels, channels, act)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.field(x)


class FO(nn.Module):
    """1x1 conv to ``out_channels`` -> act, then a first-order ODE block over t in [0, 1]."""

    def __init__(self, in_channels: int, out_channels: int, method: str = "rk4", step_size: float | None = None,
                 gradient: str = "backprop", rtol: float = 1e-3, atol: float = 1e-3, act: str = "softplus",
                 backend: str = "auto"):
        super().__init__()
        self.lift = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), activation(act))
        self.ode = ODEBlock(FirstOrderField(out_channels, act), t=(0.0, 1.0), method=method, step_size=step_size,
                            rtol=rtol, atol=atol, gradient=gradient, order=1, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ode(self.lift(x))


BLOCK_TYPES: dict[str, type[nn.Module]] = {"pln": PLN, "rse": RSE, "dse": DSE, "inc": INC, "psp": PSP, "fo": FO}


def make_block(name: str, in_channels: int, out_channels: int, **ode_options) -> nn.Module:
    """A block by its Table 3 name (case-insensitive); ``ode_options`` only reach ``FO``."""
    key = name.lower() if isinstance(name, str) else name
    if key not in BLOCK_TYPES:
        raise ValueError(f"block must be one of {sorted(BLOCK_TYPES)}, got {name!r}")
    if key == "fo":
        return FO(in_channels, out_channels, **ode_options)
    return BLOCK_TYPES[key](in_channels, out_channels)
