"""Error norms for adaptive step-size control (torchdiffeq's defaults) and the ``norm`` option.

A norm takes a state (tensor or tuple of tensors). The built-in norms also say how to combine
per-component RMS values into the norm (``from_component_rms``): the fused error pass computes
one RMS per component without materialising the error, and the norm of the whole state follows
from those (None when it cannot, e.g. the max norm: the error is then materialised).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import math

import torch

from odekern.solvers.state import components, is_tuple

Tensor = torch.Tensor
PER_SAMPLE = "per_sample"
NAMED_NORMS = ("rms", "max", PER_SAMPLE)


def rms_of(rms: Sequence[Tensor], counts: Sequence[int]) -> Tensor:
    """RMS of a concatenation from the RMS of its pieces (pieces of no elements are skipped)."""
    kept = [(r, n) for r, n in zip(rms, counts) if n]
    if len(kept) == 1:
        return kept[0][0]
    total = sum(n for _, n in kept)
    return torch.sqrt(sum(r.square() * n for r, n in kept) / total)


def _sum_of_squares(x: Tensor) -> Tensor:
    """Sum of |x|^2 accumulated in float64 (0-dim float64). A float32 sum's rounding depends on
    how the reduction is split across threads, which made step sizes, and so results, depend
    on the thread count; float64 partial sums round to the same float32 decisions."""
    x = x.abs() if x.is_complex() else x
    return torch.linalg.vector_norm(x, dtype=torch.float64).square()


class RMSNorm:
    """Root mean square over all elements of all components: the RMS of their concatenation
    (torchdiffeq's default for a tensor state)."""

    def __call__(self, state) -> Tensor:
        parts = [c for c in components(state) if c.numel()]
        if not parts:
            return torch.full((), math.nan, dtype=torch.float64)  # the mean of nothing
        total = sum(c.numel() for c in parts)
        return torch.sqrt(sum(_sum_of_squares(c) for c in parts) / total)

    def from_component_rms(self, rms: Sequence[Tensor], counts: Sequence[int]) -> Tensor:
        return rms_of(rms, counts)


class MaxNorm:
    """Largest absolute element over all components."""

    def __call__(self, state) -> Tensor:
        return torch.stack([c.abs().max() for c in components(state) if c.numel()]).max()


class MixedNorm:
    """Max over the components of each one's RMS: torchdiffeq's default for a tuple state."""

    def __call__(self, state) -> Tensor:
        parts = [rms_norm(c) for c in components(state) if c.numel()]
        if not parts:
            return torch.zeros(())
        return torch.stack(parts).max()

    def from_component_rms(self, rms: Sequence[Tensor], counts: Sequence[int]) -> Tensor:
        return torch.stack([r for r, n in zip(rms, counts) if n]).max()


rms_norm = RMSNorm()
max_norm = MaxNorm()
mixed_norm = MixedNorm()


def component_rms_combiner(norm) -> Callable | None:
    """``norm.from_component_rms`` when ``norm`` can be computed from per-component RMS values."""
    return getattr(norm, "from_component_rms", None)


def resolve_norm(norm: None | str | Callable, tuple_state: bool = False) -> str | Callable:
    """The ``norm`` option as a callable on the state (or the string ``"per_sample"``).

    For a tuple state the default is torchdiffeq's mixed norm and a user callable receives the
    tuple, exactly as in torchdiffeq; ``"rms"`` is the RMS over all components together.
    """
    if norm is None:
        return mixed_norm if tuple_state else rms_norm
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
    return norm
