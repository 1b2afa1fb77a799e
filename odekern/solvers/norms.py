"""Error norms for adaptive step-size control (torchdiffeq's defaults) and the ``norm`` option."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Tensor = torch.Tensor
PER_SAMPLE = "per_sample"
NAMED_NORMS = ("rms", "max", PER_SAMPLE)


def rms_norm(x: Tensor) -> Tensor:
    """Root mean square over all elements (torchdiffeq's default)."""
    return x.abs().pow(2).mean().sqrt()


def max_norm(x: Tensor) -> Tensor:
    return x.abs().max()


def mixed_norm(parts: Sequence[Tensor]) -> Tensor:
    """Max over the parts of each part's RMS: torchdiffeq's default for a tuple state."""
    if len(parts) == 0:
        return torch.zeros(())
    return torch.stack([rms_norm(p) for p in parts]).max()


def resolve_norm(norm: None | str | Callable, shapes=None) -> str | Callable[[Tensor], Tensor]:
    """The ``norm`` option as a callable on the flat state (or the string ``"per_sample"``).

    ``shapes`` is the list of component shapes of a tuple state; a user callable then receives
    the tuple, exactly as in torchdiffeq.
    """
    from odekern.solvers.tuples import flat_to_tuple

    if norm is None:
        if shapes is None:
            return rms_norm
        return lambda flat: mixed_norm(flat_to_tuple(flat, shapes))
    if isinstance(norm, str):
        if norm == PER_SAMPLE:
            return PER_SAMPLE
        if norm == "rms":
            return rms_norm
        if norm == "max":
            return max_norm
        raise ValueError(f"options['norm'] must be a callable or one of {list(NAMED_NORMS)}, got {norm!r}")
    if not callable(norm):
        raise TypeError(f"options['norm'] must be a callable or one of {list(NAMED_NORMS)}, got {type(norm).__name__}")
    if shapes is None:
        return norm
    return lambda flat: norm(flat_to_tuple(flat, shapes))
