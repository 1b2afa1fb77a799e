"""The random number generators' state at one point of a solve, to take a step again as it was
first taken.

A recomputing gradient (gradient mode "checkpoint") takes a step again in the backward pass; an
RHS that draws random numbers (dropout in training mode, noise) must draw what it drew the first
time, or the recomputed trajectory and the recorded steps are not the ones the forward pass took
and the gradient is silently another function's. As ``torch.utils.checkpoint`` does, the state
of the CPU generator and of the solve's CUDA device generator is captured where a step starts
and set again before it is retaken; the caller's generators are left as they were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class RandomState:
    """The CPU generator's state and, for a CUDA device, that device's generator state."""

    __slots__ = ("cpu", "cuda", "device")

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def same_as(self, other: RandomState) -> bool:
        """Whether the generators are in the same state in both (nothing was drawn in between)."""
        return torch.equal(self.cpu, other.cpu) and (self.cuda is None) == (other.cuda is None) and (
            self.cuda is None or torch.equal(self.cuda, other.cuda))

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


@contextlib.contextmanager
def preserved(device: torch.device) -> Iterator[None]:
    """Whatever the block sets or draws, the generators are as before it afterwards."""
    before = RandomState(device)
    try:
        yield
    finally:
        before.restore()
