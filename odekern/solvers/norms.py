"""Error norms for adaptive step-size control (torchdiffeq's defaults), the ``norm`` option and
the ``control`` option (what one step size is shared by).

A norm takes a state (tensor or tuple of tensors). The built-in norms also say how to combine
per-component RMS values into the norm (``from_component_rms``): the fused error pass computes
one RMS per component without materialising the error, and the norm of the whole state follows
from those (None when it cannot, e.g. the max norm: the error is then materialised).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch

from odekern._choices import is_choice
from odekern._warnings import warn_caller
from odekern.solvers.state import components, is_tuple

Tensor = torch.Tensor
NAMED_NORMS = ("rms", "max")

# Step control: one step size for the whole state (torchdiffeq's behaviour), or one per sample
# along dim 0 (each solved as if alone). nmode_solve's elementwise RHS also allows "per_element".
GLOBAL = "global"
PER_SAMPLE = "per_sample"
CONTROLS = (GLOBAL, PER_SAMPLE)


def canonical_control(options, where: str = "options"):
    """``options`` (a copy) with the step control under its one name, ``control``: the former
    spelling ``norm="per_sample"`` still works, with a DeprecationWarning. Raises ValueError for
    an unknown control or for both spellings disagreeing. Anything but a mapping is returned as
    it is (the options check refuses it by name)."""
    if not isinstance(options, Mapping):
        return options
    out = dict(options)
    if is_choice(out.get("norm"), (PER_SAMPLE,)):
        warn_caller(f"{where}['norm']='per_sample' is now {where}['control']='per_sample' (the same "
                    "per-sample step control)", DeprecationWarning)
        del out["norm"]
        if out.setdefault("control", PER_SAMPLE) != PER_SAMPLE:
            raise ValueError(f"{where}['norm']='per_sample' contradicts {where}['control']={out['control']!r}")
    if "control" in out and not is_choice(out["control"], CONTROLS):
        raise ValueError(f"{where}['control'] must be one of {list(CONTROLS)}, got {out['control']!r}")
    return out


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
        parts = [c for c in components(state) if c.numel()]
        if len(parts) == 1:  # no stack of one: Adams' corrector test calls this every iteration
            return parts[0].abs().max()
        return torch.stack([c.abs().max() for c in parts]).max()


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
BUILT_IN_NORMS = (RMSNorm, MaxNorm, MixedNorm)


def component_rms_combiner(norm) -> Callable | None:
    """``norm.from_component_rms`` when ``norm`` can be computed from per-component RMS values."""
    return getattr(norm, "from_component_rms", None)


def resolve_norm(norm: None | str | Callable, tuple_state: bool = False) -> Callable:
    """The ``norm`` option as a callable on the state.

    For a tuple state the default is torchdiffeq's mixed norm and a user callable receives the
    tuple, exactly as in torchdiffeq; ``"rms"`` is the RMS over all components together.
    """
    if norm is None:
        return mixed_norm if tuple_state else rms_norm
    if isinstance(norm, str):
        if norm == "rms":
            return rms_norm
        if norm == "max":
            return max_norm
        raise ValueError(f"options['norm'] must be a callable or one of {list(NAMED_NORMS)}, got {norm!r}")
    if not callable(norm):
        raise TypeError(f"options['norm'] must be a callable or one of {list(NAMED_NORMS)}, got {type(norm).__name__}")
    return norm
