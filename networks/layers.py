"""Small building blocks shared by every network here, plus input checks and counters.

- ``activation(name)``: one place that maps a name to a non-linearity module.
- ``DoubleConv``: (3x3 conv -> BatchNorm -> ReLU) x 2, the vanilla U-Net stage used by the
  CNM-UNet encoder and the vanilla U-Net baseline.
- ``check_images``: the one input validator all models call, so every model rejects bad input
  with the same clear messages (argument named, expectation stated).
- ``layer_parameter_count``: the parameter-counting convention of the papers' tables (see its
  docstring), next to the plain total ``parameter_count``.
"""

from __future__ import annotations

import torch
from torch import nn

_ACTIVATIONS = {
    "relu": lambda: nn.ReLU(),
    "gelu": lambda: nn.GELU(),
    "softplus": lambda: nn.Softplus(),
    "tanh": lambda: nn.Tanh(),
    "prelu": lambda: nn.PReLU(),
    "lrelu": lambda: nn.LeakyReLU(),
    "identity": lambda: nn.Identity(),
}

ACTIVATION_NAMES = tuple(sorted(_ACTIVATIONS))


def activation(name: str) -> nn.Module:
    """A fresh non-linearity module by name (one of ``ACTIVATION_NAMES``).

    Never in-place: ODE right-hand sides are re-evaluated by solvers and adjoints, and an
    in-place activation would overwrite a tensor autograd still needs.
    """
    if not isinstance(name, str) or name.lower() not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATION_NAMES}, got {name!r}")
    return _ACTIVATIONS[name.lower()]()


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BatchNorm -> ReLU) x 2; spatial size unchanged."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        mid = out_channels if mid_channels is None else mid_channels
        super().__init__(
            nn.Conv2d(in_channels, mid, kernel_size=3, padding=1),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class ConvField(nn.Sequential):
    """norm -> 3x3 conv -> act -> norm -> 1x1 conv -> act: the continuous-unet authors' ODE field.

    Used as the right-hand side of the dynamic (second-order) blocks, of the first-order FO
    block, and as the initial-velocity net ``g``. Norms are affine-free instance norms, as in the
    authors' code (a batch norm inside an ODE right-hand side would mix batch elements at every
    solver stage, and its running statistics would be updated once per stage).
    """

    def __init__(self, in_channels: int, out_channels: int, act: str = "softplus"):
        super().__init__(
            nn.InstanceNorm2d(in_channels),
            nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1),
            activation(act),
            nn.InstanceNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, kernel_size=1),
            activation(act),
        )


def check_images(x, model: str, in_channels: int, multiple: int = 1,
                 size: tuple[int, int] | None = None, min_size: int = 1) -> None:
    """Reject what no model here can segment, naming the argument and what was expected.

    ``multiple``: height and width must be divisible by it (2**levels for the U-shapes: no
    silent padding or cropping, so the output is pixel-aligned with the input).
    ``size``: the one (height, width) the model was built for (CNM-UNet's gamma and bias).
    ``min_size``: smallest height/width (instance norm needs >= 2 pixels at the deepest level).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{model}: images must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{model}: images must be a floating-point tensor (e.g. float32 in [0, 1]), got dtype {x.dtype}"
        )
    if x.dim() != 4:
        raise ValueError(
            f"{model}: images must be 4-D [batch, channels, height, width], got shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{model}: images is an empty batch (batch size 0); pass at least one image")
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{model}: images must have in_channels={in_channels} channels (dim 1), got {x.shape[1]} "
            f"(shape {tuple(x.shape)})"
        )
    h, w = x.shape[-2:]
    if size is not None and (h, w) != tuple(size):
        raise ValueError(
            f"{model}: images must be {size[0]}x{size[1]} (the image_size this model was built with: "
            f"its learned gamma and bias are per-pixel), got {h}x{w}"
        )
    if multiple > 1 and (h % multiple or w % multiple):
        raise ValueError(
            f"{model}: image height and width must be divisible by {multiple} (2**levels of "
            f"down-sampling; no implicit padding), got {h}x{w}. Resize or pad the images first."
        )
    if h < min_size or w < min_size:
        raise ValueError(
            f"{model}: image height and width must be at least {min_size} (the deepest level must keep "
            f">= 2x2 pixels), got {h}x{w}"
        )


def parameter_count(module: nn.Module) -> int:
    """Every trainable-or-not ``nn.Parameter`` of the module (no buffers)."""
    return sum(p.numel() for p in module.parameters())


def layer_parameter_count(module: nn.Module) -> int:
    """Parameters owned by *leaf* modules (modules without children), nothing else.

    This is the convention of the counter behind the CNM-UNet paper's tables (thop's
    ``profile``, used by the authors' code): it visits leaf layers (conv, BN, linear, ...) and
    sums their parameters, so a free ``nn.Parameter`` attached to a container module -- the
    CNM-Block's ``gamma`` [1, C, H, W], the fusion bias ``b`` and the scalar fusion weights
    ``w_i`` here -- is not counted. Use ``parameter_count`` for the true total.
    """
    total = 0
    for m in module.modules():
        if next(m.children(), None) is None:
            total += sum(p.numel() for p in m.parameters(recurse=False))
    return total
