"""``load_official``: weights saved by the authors' code bases, loaded into the models here.

Two code bases are recognised by their keys:

- continuous U-Net (``ConvSODEUNet``): ``initial_velocity.conv1.weight``,
  ``odeblock_down1.odefunc.conv1.weight``, ``conv_down1_2.weight``, ... -> ``ContinuousUNet``
  with ``variant="official"``. Their ``input_1x1`` conv is defined but never used by their
  forward; its keys are accepted and dropped.
- CNM-UNet (``CNM_UNet``): ``inc.double_conv.0.weight``, ``Mult_up.g1.weight``,
  ``Mult_up.Con_solver.conv1.weight``, ``Gamma``, ``outc.conv.weight``, ... -> ``CNMUNet``.
  Their fusion weights and bias are constants built in ``forward`` (1 and 0), so they are not in
  the file; the model's ``fusion.weights`` / ``fusion.bias`` are set to those constants. Their
  f-statistics ``running_mean1/2``, ``running_var1/2`` become rows 0/1 of ``f_running_mean`` /
  ``f_running_var``.

Every key must be accounted for: a key of the file that maps nowhere, or a key of the model
that nothing fills, raises ``ValueError`` listing all of them; shapes are checked by name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
from torch import nn

from networks.cnm_unet import CNMUNet
from networks.continuous_unet import ContinuousUNet

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "network")

# Authors' names of the continuous U-Net's pieces, in the order of ours (4 levels).
_CUNET_DOWN_CONVS = ("conv_down1_2", "conv_down2_3", "conv_down3_4", "conv_down4_embed")
_CUNET_UP_CONVS = ("conv_up3_4", "conv_up2_3", "conv_up1_2", "conv_up_embed_1")  # up_convs[0..3]
_CUNET_LEVELS = 4
# ConvField is a Sequential: norm(0) conv3x3(1) act(2) norm(3) conv1x1(4) act(5).
_FIELD = {"conv1": "1", "conv2": "4"}


def read_state_dict(path_or_state_dict) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a file or mapping; unwraps ``{"state_dict": ...}``-style
    containers and DataParallel's ``module.`` prefix."""
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        path = os.fspath(path_or_state_dict)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"load_official: no such file: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a pickled whole model needs the authors' classes
            raise ValueError(f"load_official: {path} is not a plain state dict ({type(err).__name__}: "
                             f"{str(err).splitlines()[0]}); save one with torch.save(model.state_dict(), ...) "
                             "in the authors' code base") from None
    else:
        state = path_or_state_dict
    if not isinstance(state, Mapping):
        raise TypeError(f"load_official: expected a state dict (a mapping of names to tensors), got "
                        f"{type(state).__name__}")
    for key in _WRAPPER_KEYS:
        inner = state.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            state = inner
            break
    out = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"load_official: entry {name!r} is a {type(value).__name__}, not a tensor")
        out[name[len("module."):] if name.startswith("module.") else name] = value
    return out


def code_base_of(keys) -> str:
    keys = set(keys)
    if "initial_velocity.conv1.weight" in keys or "odeblock_down1.odefunc.conv1.weight" in keys:
        return "continuous-unet"
    if "Mult_up.Con_solver.conv1.weight" in keys or "Gamma" in keys:
        return "cnm-unet"
    raise ValueError("load_official: not a state dict of either official code base: expected "
                     "'initial_velocity.conv1.weight' (continuous U-Net, ConvSODEUNet) or "
                     f"'Mult_up.Con_solver.conv1.weight' (CNM_UNet); first keys: {sorted(keys)[:5]}")


# --------------------------------------------------------------------------- name mappings


def _continuous_name(name: str) -> str | None:
    """Our key for an authors' ConvSODEUNet key; "" for keys dropped on purpose; None: unknown."""
    if name.startswith("input_1x1."):
        return ""
    m = re.fullmatch(r"initial_velocity\.(conv[12])\.(weight|bias)", name)
    if m:
        return f"initial_velocity.{_FIELD[m[1]]}.{m[2]}"
    m = re.fullmatch(r"odeblock_(down|up)([1-4])\.odefunc\.(conv[12])\.(weight|bias)", name)
    if m:
        index = int(m[2]) - 1 if m[1] == "down" else _CUNET_LEVELS - int(m[2])
        return f"{m[1]}_blocks.{index}.ode.dynamics.field.{_FIELD[m[3]]}.{m[4]}"
    m = re.fullmatch(r"odeblock_embedding\.odefunc\.(conv[12])\.(weight|bias)", name)
    if m:
        return f"embedding.ode.dynamics.field.{_FIELD[m[1]]}.{m[2]}"
    prefix, _, leaf = name.partition(".")
    if prefix in _CUNET_DOWN_CONVS:
        return f"down_convs.{_CUNET_DOWN_CONVS.index(prefix)}.{leaf}"
    if prefix in _CUNET_UP_CONVS:
        return f"up_convs.{_CUNET_UP_CONVS.index(prefix)}.{leaf}"
    if prefix == "classifier":
        return name
    return None


_DOUBLE_CONV = r"double_conv\.([0-9])\.(.+)"

# The authors' CNM-UNet parameter names (a regular expression) and ours (a function of the match).
_CNM_NAMES = (
    (r"inc\." + _DOUBLE_CONV, lambda m: f"encoder.stages.0.{m[1]}.{m[2]}"),
    (r"down([1-4])\.maxpool_conv\.1\." + _DOUBLE_CONV, lambda m: f"encoder.stages.{m[1]}.{m[2]}.{m[3]}"),
    (r"Mult_up\.g([1-5])\.(weight|bias)", lambda m: f"fusion.projections.{int(m[1]) - 1}.{m[2]}"),
    (r"Mult_up\.sigma\.1\.(.+)", lambda m: f"cnm_block.input_norm.{m[1]}"),
    (r"Mult_up\.sigma2\.0\.(.+)", lambda m: f"cnm_block.output_norm.{m[1]}"),
    (r"Mult_up\.Con_solver\.conv1\.(weight|bias)", lambda m: f"cnm_block.nmode.conv.{m[1]}"),
    (r"Gamma", lambda m: "cnm_block.nmode.gamma"),
    (r"outc\.conv\.(weight|bias)", lambda m: f"head.2.{m[1]}"),
)


def _cnm_name(name: str) -> str | None:
    for pattern, ours in _CNM_NAMES:
        m = re.fullmatch(pattern, name)
        if m:
            return ours(m)
    return None


_CNM_STATISTICS = {"running_mean1": ("f_running_mean", 0), "running_mean2": ("f_running_mean", 1),
                   "running_var1": ("f_running_var", 0), "running_var2": ("f_running_var", 1)}


def _map(state: dict[str, torch.Tensor], kind: str, target: dict[str, torch.Tensor]
         ) -> tuple[dict[str, torch.Tensor], list[str]]:
    mapped, unmapped = {}, []
    rows: dict[str, dict[int, torch.Tensor]] = {}
    for name, value in state.items():
        if kind == "cnm-unet":
            m = re.fullmatch(r"Mult_up\.Con_solver\.(running_(?:mean|var)[12])", name)
            if m:
                buffer, row = _CNM_STATISTICS[m[1]]
                rows.setdefault(f"cnm_block.{buffer}", {})[row] = value
                continue
            ours = _cnm_name(name)
        else:
            ours = _continuous_name(name)
        if ours is None:
            unmapped.append(name)
        elif ours:
            mapped[ours] = value
    for buffer, parts in rows.items():
        if set(parts) == {0, 1}:
            mapped[buffer] = torch.stack([parts[0].reshape(-1), parts[1].reshape(-1)])
    if kind == "cnm-unet":  # the authors' constants: w_i = 1, b = 0
        for name in ("fusion.weights", "fusion.bias"):
            if name in target:
                mapped[name] = torch.ones_like(target[name]) if name.endswith("weights") \
                    else torch.zeros_like(target[name])
    return mapped, unmapped


# --------------------------------------------------------------------------- models from shapes


def _model_for(state: dict[str, torch.Tensor], kind: str) -> nn.Module:
    if kind == "continuous-unet":
        nf = state["initial_velocity.conv1.weight"].shape[0]
        return ContinuousUNet(in_channels=nf, num_classes=state["classifier.weight"].shape[0], base_filters=nf,
                              variant="official")
    gamma = state["Gamma"]
    widths = [state["inc.double_conv.0.weight"].shape[0]]
    widths += [state[f"down{i}.maxpool_conv.1.double_conv.0.weight"].shape[0] for i in range(1, 5)]
    return CNMUNet(in_channels=state["inc.double_conv.0.weight"].shape[1],
                   num_classes=state["outc.conv.weight"].shape[0], image_size=tuple(gamma.shape[-2:]),
                   channels=gamma.shape[1], encoder_widths=tuple(widths), learnable_fusion=False,
                   train_gamma=False)


def load_official(path_or_state_dict, model: nn.Module | None = None) -> nn.Module:
    """Load an authors' state dict (file path or mapping) into ``model`` and return it.

    ``model``: a ``ContinuousUNet(variant="official")`` or a ``CNMUNet`` of the same shapes;
    None builds one from the shapes in the file (CNM-UNet with the authors' constant fusion and
    ``train_gamma=False``). Raises ``ValueError`` listing unmapped and missing keys, or the
    first shape mismatch, and never leaves ``model`` half-loaded.
    """
    state = read_state_dict(path_or_state_dict)
    kind = code_base_of(state)
    if model is None:
        model = _model_for(state, kind)
    expected = ContinuousUNet if kind == "continuous-unet" else CNMUNet
    if not isinstance(model, expected):
        authors = "ConvSODEUNet" if kind == "continuous-unet" else "CNM_UNet"
        raise TypeError(f"load_official: the file holds a {kind} (the authors' {authors}) but model is a "
                        f"{type(model).__name__}; pass a {expected.__name__}")
    if kind == "continuous-unet" and model.variant != "official":
        raise ValueError("load_official: the authors' continuous U-Net maps onto "
                         f"ContinuousUNet(variant='official'), but model has variant={model.variant!r}")
    target = model.state_dict()
    mapped, unmapped = _map(state, kind, target)
    missing = sorted(set(target) - set(mapped))
    unknown = sorted(set(mapped) - set(target))  # mapped to a name this model lacks (other sizes)
    if unmapped or missing or unknown:
        lines = [f"load_official: the {kind} state dict does not map onto {type(model).__name__}:"]
        lines += [f"  key of the file that maps to nothing here: {k}" for k in unmapped]
        lines += [f"  key of the file mapped to {k!r}, which this model does not have" for k in unknown]
        lines += [f"  key of the model that the file does not fill: {k}" for k in missing]
        raise ValueError("\n".join(lines))
    for name, value in mapped.items():
        if tuple(value.shape) != tuple(target[name].shape):
            raise ValueError(f"load_official: shape mismatch for {name}: file {tuple(value.shape)}, model "
                             f"{tuple(target[name].shape)} (build the model with the authors' sizes)")
    model.load_state_dict(mapped)
    return model
