"""Flattening a tuple-of-tensors state into one 1-D tensor, for code that takes tensor states only.

The solvers take tuple states natively (``odekern.solvers.state``); this is only the fallback
of ``ODEBlock(gradient="checkpoint")``, whose replay (``solvers/checkpoint.py``) needs a tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Tensor = torch.Tensor


def tuple_to_flat(parts: Sequence[Tensor]) -> Tensor:
    return torch.cat([p.reshape(-1) for p in parts])


def flat_to_tuple(flat: Tensor, shapes: Sequence[torch.Size], lead: tuple = ()) -> tuple[Tensor, ...]:
    """Split the last dim of ``flat`` into pieces shaped ``(*lead, *shape)``."""
    out, start = [], 0
    for shape in shapes:
        n = shape.numel()
        out.append(flat[..., start:start + n].view((*lead, *shape)))
        start += n
    return tuple(out)


class TupleRHS:
    """``func`` written for a tuple state, seen by the solvers as a function of the flat state."""

    def __init__(self, func, shapes: Sequence[torch.Size]):
        self.func = func
        self.shapes = list(shapes)

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        dy = self.func(t, flat_to_tuple(y, self.shapes))
        if not isinstance(dy, (tuple, list)) or len(dy) != len(self.shapes):
            raise TypeError(f"func(t, y) must return a tuple of {len(self.shapes)} tensors for a tuple state y0, "
                            f"got {type(dy).__name__}")
        for i, (d, s) in enumerate(zip(dy, self.shapes)):
            if not isinstance(d, Tensor) or d.shape != s:
                got = tuple(d.shape) if isinstance(d, Tensor) else type(d).__name__
                raise ValueError(f"func(t, y)[{i}] must have shape {tuple(s)} like y0[{i}], got {got}")
        return tuple_to_flat(dy)
