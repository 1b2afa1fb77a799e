"""Discrete U-Nets: the block-type skeleton of continuous-unet Table 3 and the vanilla U-Net
baseline of the CNM-UNet paper. Both return logits (no sigmoid; the loss applies it).

``UNet`` (the skeleton, as the continuous-unet authors' comparison code): ``levels`` encoder
stages of the chosen block type (widths ``base_filters * 2**i``), 2x2 max-pool between them,
a PLN embedding block at the bottom, and a decoder of 2x2 transposed-conv up-sampling, skip
concatenation and a PLN block per level, then a 1x1 classifier. Only the encoder blocks change
with ``block``, as in the authors' ``LevelBlock``. ``base_filters`` defaults to 6 so each level
runs at the same width as the continuous U-Net's dynamic blocks (6, 12, 24, 48, 96 channels);
the paper's Table 10 lists "3, 6, 12, 24" filters, which is the dynamic blocks' position width.

``VanillaUNet`` (13.40M, CNM-UNet Tables 1-2): encoder of ``DoubleConv`` stages
64-128-256-512-512 with max-pool, decoder of bilinear x2 up-sampling (align_corners=True, as
the authors' baseline), concatenation and ``DoubleConv`` 1024->256, 512->128, 256->64,
128->64, then a 1x1 conv. The authors' forward ends in a sigmoid; ours returns the logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from networks.arguments import check_positive_int
from networks.layers import DoubleConv, check_images
from networks.unet_blocks import PLN, make_block


class UNet(nn.Module):
    """U-Net skeleton whose encoder stages are ``block`` (pln, rse, dse, inc, psp, fo)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1, block: str = "pln", base_filters: int = 6,
                 levels: int = 4, **ode_options):
        super().__init__()
        in_channels = check_positive_int(in_channels, "in_channels")
        num_classes = check_positive_int(num_classes, "num_classes")
        base_filters = check_positive_int(base_filters, "base_filters")
        levels = check_positive_int(levels, "levels")
        if ode_options and str(block).lower() != "fo":
            raise ValueError(f"UNet: ODE options {sorted(ode_options)} only apply to block='fo', got block={block!r}")
        self.in_channels, self.num_classes, self.levels, self.block = in_channels, num_classes, levels, block
        widths = [base_filters * 2**i for i in range(levels + 1)]
        self.encoders = nn.ModuleList(
            make_block(block, in_channels if i == 0 else widths[i - 1], widths[i], **ode_options) for i in range(levels)
        )
        self.embedding = PLN(widths[levels - 1], widths[levels])
        self.ups = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(levels))
        self.decoders = nn.ModuleList(PLN(2 * widths[i], widths[i]) for i in range(levels))
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, f"UNet(block={self.block!r})", self.in_channels, multiple=2**self.levels)
        skips = []
        for encode in self.encoders:
            x = encode(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.embedding(x)
        for i in reversed(range(self.levels)):
            x = self.decoders[i](torch.cat([skips[i], self.ups[i](x)], dim=1))
        return self.classifier(x)


class UNetEncoder(nn.Module):
    """Vanilla U-Net encoder: DoubleConv stages, max-pool before every stage but the first.

    Returns the output of every stage (x1 .. x5 at full, 1/2, .. 1/16 resolution).
    """

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (64, 128, 256, 512, 512)):
        super().__init__()
        self.widths = tuple(widths)
        self.stages = nn.ModuleList(
            DoubleConv(in_channels if i == 0 else widths[i - 1], w) for i, w in enumerate(widths)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else F.max_pool2d(x, 2))
            features.append(x)
        return features


class _Up(nn.Module):
    """Bilinear x2 up-sampling, concatenation with the skip, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.conv(torch.cat([skip, x], dim=1))


class VanillaUNet(nn.Module):
    """The CNM-UNet paper's U-Net baseline (13.40M parameters with 3 input channels, 1 class)."""

    LEVELS = 4

    def __init__(self, in_channels: int = 3, num_classes: int = 1):
        super().__init__()
        in_channels = check_positive_int(in_channels, "in_channels")
        num_classes = check_positive_int(num_classes, "num_classes")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.encoder = UNetEncoder(in_channels)
        self.up1, self.up2 = _Up(1024, 256), _Up(512, 128)
        self.up3, self.up4 = _Up(256, 64), _Up(128, 64)
        self.classifier = nn.Conv2d(64, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, "VanillaUNet", self.in_channels, multiple=2**self.LEVELS)
        x1, x2, x3, x4, x5 = self.encoder(x)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.classifier(x)
