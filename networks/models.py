"""``build_model(name, in_channels=3, num_classes=1, **options)``: the one factory the app uses.

Every model maps float images ``[B, in_channels, H, W]`` to logits ``[B, num_classes, H, W]``
(no sigmoid) and raises a clear error on bad input.

Names and their options (all optional; defaults are the papers' / authors' configurations;
``networks.presets`` has the per-dataset training settings):

- ``"cnm-unet"`` -> ``CNMUNet``: image_size=256 (int or (H, W); the model is built for one
  size), channels=3, encoder_widths=(64, 128, 256, 512, 512), delta_t=0.05, method="dopri5"
  (or a fixed-step method of odekern.NmODE: euler, midpoint, rk4, rk4_classic), step_size=None
  (fixed-step: one step over [0, delta_t]), rtol=1e-7, atol=1e-9, gradient="adjoint" | "checkpoint",
  act="gelu", dropout=0.0, learnable_fusion=True, backend="auto", duse_config=DUSEConfig() (or a
  dict of its fields), train_gamma=True (False: gamma and its conv frozen, as the authors' runs).
  Has ``adapt(images)``, ``use_duse``, ``duse_state`` and ``reset_adaptation()``.
- ``"continuous-unet"`` -> ``ContinuousUNet``: variant="official" (the authors' network and
  training settings: act="lrelu", gradient="adjoint", rtol=atol=1e-6) | "second-order" (Eq. 1
  literally: act="softplus", gradient="backprop", rtol=atol=1e-3), base_filters=3, levels=4,
  method="rk4" (euler | explicit_adams | implicit_adams | rk4 | dopri5), step_size=None,
  gradient="backprop" | "adjoint" | "checkpoint", backend="auto".
- ``"unet"`` -> ``UNet`` skeleton: block="pln" (pln | rse | dse | inc | psp | fo),
  base_filters=6, levels=4; with block="fo" also method, step_size, rtol, atol, gradient, act,
  backend for its first-order ODE blocks.
- ``"vanilla-unet"`` -> ``VanillaUNet`` (no options): the CNM-UNet paper's 13.40M baseline.
"""

from __future__ import annotations

from torch import nn

from networks.cnm_unet import CNMUNet
from networks.continuous_unet import ContinuousUNet
from networks.unet import UNet, VanillaUNet

_FACTORIES = {
    "cnm-unet": CNMUNet,
    "continuous-unet": ContinuousUNet,
    "unet": UNet,
    "vanilla-unet": VanillaUNet,
}

MODEL_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def build_model(name: str, in_channels: int = 3, num_classes: int = 1, **options) -> nn.Module:
    """Construct a model by name (one of ``MODEL_NAMES``); unknown options raise TypeError."""
    if not isinstance(name, str) or name.lower() not in _FACTORIES:
        raise ValueError(f"build_model: name must be one of {MODEL_NAMES}, got {name!r}")
    factory = _FACTORIES[name.lower()]
    try:
        return factory(in_channels=in_channels, num_classes=num_classes, **options)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise TypeError(f"build_model({name!r}): {err}") from None
        raise
