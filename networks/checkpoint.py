"""Checkpoints, strict JSON results and RNG-state capture, so a saved run is never
half-written (every file goes through networks.atomic_files) and a resumed run continues
bit-exactly.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from networks.atomic_files import atomic_write, atomic_write_bytes
from networks.continuous_unet import variant_of_state_dict
from networks.models import build_model


def strict_json(obj: Any, indent: int | None = None) -> str:
    """Strict JSON (RFC 8259): a NaN or infinite number is written as ``null``, never as the
    bare ``NaN`` / ``Infinity`` that strict parsers reject; writers that know why a value is
    undefined put the reason in a field beside it."""
    return json.dumps(_finite_or_null(obj), indent=indent, sort_keys=False, default=_json_default, allow_nan=False)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_bytes(path, (strict_json(obj, indent=2) + "\n").encode("utf-8"))


def _finite_or_null(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite_or_null(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(value) for value in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return _finite_or_null(obj.item())
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return _finite_or_null(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda fh: torch.save(obj, fh))


class CheckpointError(ValueError):
    """A file that is not an odekern checkpoint, or a damaged one."""


def torch_load(path: str | os.PathLike) -> Any:
    """Load a checkpoint written by :func:`atomic_torch_save` (our own files: full unpickling).

    A file torch cannot read (truncated, another format, not a ``torch.save`` file at all)
    raises :class:`CheckpointError` naming the file, not the unpickler's message.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}"
                                + (" (it is a folder; give last.pt or best.pt inside it)" if path.is_dir() else ""))
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except PermissionError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, RuntimeError, ValueError, OSError,
            AttributeError, ImportError, IndexError, KeyError, UnicodeDecodeError) as exc:
        # torch.load reports a damaged or foreign file through any of these, depending on where
        # the bytes stop making sense (zip directory, seek past the end, pickle opcodes, tensor
        # storage records).
        raise CheckpointError(f"{path} is not an odekern checkpoint or is damaged (truncated or not "
                              f"written by odekern-train): {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")) from exc


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The training checkpoint at ``path`` (``last.pt`` / ``best.pt`` of ``odekern-train``)."""
    state = torch_load(path)
    if not isinstance(state, dict) or state.get("format") != TRAIN_FORMAT:
        found = f"format {state.get('format')!r}" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise CheckpointError(f"{path} is not an odekern checkpoint ({found}; odekern-train writes "
                              f"last.pt and best.pt with format {TRAIN_FORMAT!r})")
    return state


# ---------------------------------------------------------------------------------------
# RNG state: everything that can feed randomness into a training step.
# ---------------------------------------------------------------------------------------

def capture_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------
# Models from checkpoints
# ---------------------------------------------------------------------------------------

TRAIN_FORMAT = "odekern-train-v1"


def build_network(name: str, in_channels: int, num_classes: int, options: dict[str, Any],
                  image_size: int | None = None) -> torch.nn.Module:
    """``networks.models.build_model`` with the options a training run recorded.

    ``image_size`` is passed to models whose parameters depend on it (CNM-UNet's gamma).
    """

    options = dict(options)
    if image_size is not None and name in SIZE_DEPENDENT_MODELS and "image_size" not in options:
        options["image_size"] = image_size
    return build_model(name, in_channels=in_channels, num_classes=num_classes, **options)


SIZE_DEPENDENT_MODELS = ("cnm-unet",)


def load_model(path: str | os.PathLike, option_overrides: dict[str, Any] | None = None
               ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the network saved by ``networks.train`` and load its weights (eval mode).

    ``option_overrides`` changes build options that do not change the weights (e.g. the ODE
    solver, for the solver ablation); the state dict must still load strictly.
    """
    state = load_checkpoint(path)
    meta = state["model"]
    options = {**meta["options"], **(option_overrides or {})}
    if meta["name"] == "continuous-unet" and "variant" not in options:
        # Runs record only the options given; the variant is in the weights' names (runs from
        # before the official variant existed are second-order).
        options["variant"] = variant_of_state_dict(state["model_state"]) or "official"
    model = build_network(meta["name"], meta["in_channels"], meta["num_classes"], options, meta.get("image_size"))
    model.load_state_dict(state["model_state"])
    model.eval()
    return model, state
