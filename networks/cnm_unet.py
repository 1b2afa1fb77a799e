"""CNM-UNet (Xu et al., "Continuous ODEs for Medical Image Segmentation"): a vanilla U-Net
encoder, a multi-scale fusion, and a single continuous nmODE decoder (the CNM-Block).

Forward, for images ``x`` [B, in_channels, H, W] (H, W = ``image_size``, divisible by 16)::

    x_1 .. x_5 = encoder(x)                         DoubleConv stages 64-128-256-512-512
    X   = sum_i up(conv3x3_i(w_i * x_i)) + b        fusion; up = bilinear to H x W
    y0  = BN_in(softplus(X))                        CNM-Block input
    y1  = y(delta_t),  dy/dt = -y + sin^2(y + C(gamma)),  y(0) = y0     (paper Eq. 1, fused NmODE)
    logits = conv1x1(dropout(act(BN_out(y1))))

The paper ends with a sigmoid; this model returns the logits (the loss / metrics apply the
sigmoid; BCE-with-logits is the numerically stable form). ``sigmoid(model(x))`` is the paper's
output.

Configuration (paper "Implementation Details" and the authors' published code, which the
paper leaves open): decoder channels C = 3 (authors' ``y0_channel``); delta_t = 0.05; dopri5
with rtol 1e-7 / atol 1e-9 (torchdiffeq's defaults, which the authors' ``odeint_adjoint`` call
uses); gradient by the continuous adjoint (the paper's "augmented adjoint method";
``gradient="checkpoint"`` gives the exact gradient of the discrete solve, also O(1) memory);
``method`` may be any fixed-step method of ``odekern.NmODE`` (euler, midpoint, rk4, ...) for a
solver ablation, with ``step_size`` defaulting to one step over [0, delta_t] as torchdiffeq;
activation GELU and dropout 0 (the authors' train/test scripts build
``CNM_UNet(activefunc='gelu', droprate=0)``); fusion convs 3x3 with padding 1.

Where the paper is vague or the authors' code departs from it (choice made here):

- Fusion weights ``w_i`` and bias ``b``: the paper says learnable; the authors' code builds
  them inside ``forward`` as constants (ones / zeros, and a freshly created ``nn.Parameter``
  is never registered), so their published runs had ``w_i = 1, b = 0``. Default here:
  learnable as the paper and issue say (``w_i`` one scalar per stage, init 1; ``b`` shaped like
  the fused map [1, C, H, W], init 0); ``learnable_fusion=False`` reproduces the constants.
- ``gamma`` and its conv C: the paper says they are optimised (and they are here); the authors'
  code hands C(gamma) to ``odeint_adjoint`` as a plain tensor attribute of the RHS, outside the
  adjoint's parameters, so no gradient ever reaches them and their published runs kept gamma = 0
  and C at its initialisation. ``train_gamma=False`` reproduces that (both frozen; DUSE still
  adapts C at test time, as in their code).
- ``gamma`` [1, C, H, W] and ``b`` are per-pixel, so a model is built for one ``image_size``
  (authors: ``input_size_h/w`` in their config); other sizes raise a clear error.
- Parameter count: the paper's 9.45M is the leaf-layer count of its counter (thop), which
  does not see ``gamma``, ``b`` or ``w_i`` (see ``networks.layers.layer_parameter_count``).

DUSE test-time adaptation (``adapt``, ``duse_config``, ``use_duse``) lives in
``networks.duse``; the running f-statistics it needs are buffers of ``CNMBlock`` updated in
train mode (paper Eq. 3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from networks.duse import PROCEDURE_MOMENTUM, DUSEConfig, DUSEState, adapt_images
from networks.arguments import check_channel_list, check_finite_number, check_positive_int, image_size_pair
from networks.layers import activation, check_images
from networks.unet import UNetEncoder
from odekern import NmODE

ENCODER_WIDTHS = (64, 128, 256, 512, 512)


class MultiScaleFusion(nn.Module):
    """``X = sum_i up(conv_i(w_i * x_i)) + b``: every encoder stage mapped to C channels at H x W."""

    def __init__(self, encoder_widths: tuple[int, ...], channels: int, image_size: tuple[int, int],
                 learnable: bool = True, kernel_size: int = 3):
        super().__init__()
        self.projections = nn.ModuleList(
            nn.Conv2d(w, channels, kernel_size, padding=kernel_size // 2) for w in encoder_widths
        )
        weights = torch.ones(len(encoder_widths))
        bias = torch.zeros(1, channels, *image_size)
        if learnable:
            self.weights, self.bias = nn.Parameter(weights), nn.Parameter(bias)
        else:  # the authors' published runs: constant 1 and 0 (buffers keep checkpoints explicit)
            self.register_buffer("weights", weights)
            self.register_buffer("bias", bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        fused = self.bias
        for i, (feature, project) in enumerate(zip(features, self.projections)):
            mapped = project(self.weights[i] * feature)
            if mapped.shape[-2:] != size:
                mapped = F.interpolate(mapped, size=size, mode="bilinear", align_corners=False)
            fused = fused + mapped
        return fused


class CNMBlock(nn.Module):
    """softplus -> BN_in -> fused nmODE solve -> BN_out, plus DUSE's running f-statistics.

    Buffers ``f_running_mean`` / ``f_running_var`` [2, C]: row 0 for f at t0, row 1 for f at t1
    (the two time points the solve returns), per channel, updated in train mode by paper Eq. 3
    ``M <- (1 - m) M + m mu`` with ``m = momentum`` (per-channel mean and unbiased variance over
    batch and pixels, as the authors' code). They start at 0 / 1 like BN running statistics.
    """

    def __init__(self, channels: int, image_size: tuple[int, int], delta_t: float = 0.05, method: str = "dopri5",
                 rtol: float = 1e-7, atol: float = 1e-9, gradient: str = "adjoint", backend: str = "auto",
                 step_size: float | None = None):
        super().__init__()
        if method != "dopri5" and step_size is None:
            # torchdiffeq's fixed-grid solvers step on the output grid [0, delta_t] when given no
            # step_size: one step. Same here, so a solver ablation needs no extra option.
            step_size = float(delta_t)
        self.input_norm = nn.BatchNorm2d(channels)
        self.nmode = NmODE(channels=channels, height=image_size[0], width=image_size[1], t1=delta_t,
                           method=method, step_size=step_size, rtol=rtol, atol=atol, gradient=gradient,
                           backend=backend)
        self.output_norm = nn.BatchNorm2d(channels)
        self.register_buffer("f_running_mean", torch.zeros(2, channels))
        self.register_buffer("f_running_var", torch.ones(2, channels))
        self.momentum = PROCEDURE_MOMENTUM["paper"]

    def forward(self, fused: torch.Tensor, need_f: bool = False, nmode_params: dict | None = None):
        """Returns ``BN_out(y1)``, or ``(BN_out(y1), f0, f1)`` when ``need_f``.

        ``nmode_params`` replaces NmODE parameters by name for this call only (DUSE adapts the
        conv producing C(gamma) this way, so the module's own weights are never written).
        """
        y0 = self.input_norm(F.softplus(fused))
        want_f = need_f or self.training
        if nmode_params:
            out = torch.func.functional_call(self.nmode, nmode_params, (y0,), {"return_f": want_f},
                                             strict=False)
        else:
            out = self.nmode(y0, return_f=want_f)
        if not want_f:
            return self.output_norm(out)
        y1, f0, f1 = out
        if self.training:
            self._track_f_statistics(f0, f1)
        y = self.output_norm(y1)
        return (y, f0, f1) if need_f else y

    @torch.no_grad()
    def _track_f_statistics(self, f0: torch.Tensor, f1: torch.Tensor) -> None:
        m = self.momentum
        for row, f in enumerate((f0.detach(), f1.detach())):
            mean = f.mean(dim=(0, 2, 3))
            var = f.var(dim=(0, 2, 3)) if f[:, 0].numel() > 1 else torch.zeros_like(mean)
            self.f_running_mean[row].mul_(1 - m).add_(m * mean.to(self.f_running_mean.dtype))
            self.f_running_var[row].mul_(1 - m).add_(m * var.to(self.f_running_var.dtype))

    def gamma_conv_parameters(self) -> dict[str, nn.Parameter]:
        """theta_gamma: the parameters of the conv producing C(gamma), keyed by name in ``nmode``."""
        convs = [(name, m) for name, m in self.nmode.named_modules() if isinstance(m, nn.Conv2d)]
        if len(convs) != 1:
            raise RuntimeError(f"CNMBlock: expected exactly one Conv2d (C) inside NmODE, found {len(convs)}")
        prefix, conv = convs[0]
        return {f"{prefix}.{n}" if prefix else n: p for n, p in conv.named_parameters()}


class CNMUNet(nn.Module):
    """CNM-UNet; see the module docstring. Returns logits [B, num_classes, H, W].

    Test-time adaptation: ``adapt(images)`` runs DUSE per image (Algorithm 1) with
    ``self.duse_config`` (a ``DUSEConfig``, settable) and returns logits; it never writes the
    model's parameters or buffers. Setting ``use_duse = True`` makes ``forward`` in eval mode
    call ``adapt``. Cross-image state (prompt memory bank, warm-up count) lives in
    ``self.duse_state``, outside ``state_dict``; ``reset_adaptation()`` clears it.
    """

    LEVELS = 4

    def __init__(self, in_channels: int = 3, num_classes: int = 1, image_size=256, channels: int = 3,
                 encoder_widths=ENCODER_WIDTHS, delta_t: float = 0.05, method: str = "dopri5",
                 step_size: float | None = None, rtol: float = 1e-7, atol: float = 1e-9,
                 gradient: str = "adjoint", act: str = "gelu",
                 dropout: float = 0.0, learnable_fusion: bool = True, backend: str = "auto",
                 duse_config: DUSEConfig | dict | None = None, train_gamma: bool = True):
        super().__init__()
        in_channels = check_positive_int(in_channels, "in_channels")
        num_classes = check_positive_int(num_classes, "num_classes")
        channels = check_positive_int(channels, "channels")
        widths = check_channel_list(encoder_widths, "encoder_widths", length=self.LEVELS + 1)
        size = image_size_pair(image_size)
        if size[0] % 2**self.LEVELS or size[1] % 2**self.LEVELS:
            raise ValueError(f"CNMUNet: image_size must be divisible by {2**self.LEVELS}, got {size}")
        dropout = check_finite_number(dropout, "CNMUNet: dropout", minimum=0.0, below=1.0)
        delta_t = check_finite_number(delta_t, "CNMUNet: delta_t", above=0.0)
        self.in_channels, self.num_classes, self.image_size = in_channels, num_classes, size
        self.encoder = UNetEncoder(in_channels, widths)
        self.fusion = MultiScaleFusion(widths, channels, size, learnable=learnable_fusion)
        self.cnm_block = CNMBlock(channels, size, delta_t, method, rtol, atol, gradient, backend, step_size)
        self.head = nn.Sequential(activation(act), nn.Dropout(dropout), nn.Conv2d(channels, num_classes, 1))
        self.train_gamma = bool(train_gamma)
        if not self.train_gamma:  # the authors' runs: gamma and C stay at their initial values
            for p in (self.cnm_block.nmode.gamma, *self.cnm_block.gamma_conv_parameters().values()):
                p.requires_grad_(False)
        if isinstance(duse_config, dict):  # the form a training run records (JSON-friendly)
            duse_config = DUSEConfig(**duse_config)
        self.duse_config = duse_config if duse_config is not None else DUSEConfig()
        self.duse_state = DUSEState()
        self.use_duse = False

    @property
    def duse_config(self) -> DUSEConfig:
        return self._duse_config

    @duse_config.setter
    def duse_config(self, config: DUSEConfig) -> None:
        if not isinstance(config, DUSEConfig):
            raise TypeError(f"CNMUNet: duse_config must be a DUSEConfig, got {type(config).__name__}")
        self._duse_config = config
        self.cnm_block.momentum = config.momentum

    def check_images(self, x) -> None:
        check_images(x, "CNMUNet", self.in_channels, multiple=2**self.LEVELS, size=self.image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_duse and not self.training:
            return self.adapt(x)
        self.check_images(x)
        return self.forward_parts(x)

    def forward_parts(self, x: torch.Tensor, need_f: bool = False, nmode_params: dict | None = None):
        """logits, or ``(logits, f0, f1)`` with the nmODE right-hand side at t0 and t1 (``need_f``)."""
        fused = self.fusion(self.encoder(x))
        out = self.cnm_block(fused, need_f=need_f, nmode_params=nmode_params)
        if need_f:
            y, f0, f1 = out
            return self.head(y), f0, f1
        return self.head(out)

    def adapt(self, images: torch.Tensor) -> torch.Tensor:
        """DUSE (paper Algorithm 1) on each image separately; returns logits [B, num_classes, H, W]."""
        self.check_images(images)
        # One image at a time: per-image statistics need >= 2 pixels at the deepest level.
        check_images(images, "CNMUNet.adapt", self.in_channels, min_size=2 ** (self.LEVELS + 1))
        return adapt_images(self, images, self.duse_config, self.duse_state)

    def reset_adaptation(self) -> None:
        """Forget the cross-image DUSE state (prompt memory bank and warm-up count)."""
        self.duse_state.reset()
