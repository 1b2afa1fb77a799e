"""A module's parameters and buffers as a solve's forward pass saw them, for its backward pass.

``torch.func.functional_call`` (and ``torch.nn.utils.stateless``) substitute a module's tensors
only while the call runs, as meta-learning code does to take gradients with respect to adapted
weights. The continuous adjoint and the checkpointed gradient evaluate ``func`` again in their
backward pass, after that call has returned: with the module's own tensors back in place they
would differentiate those, and the substituted tensors, the ones the loss depends on, would get
a zero gradient without an error (torchdiffeq's adjoint gives zeros there). The backward pass
substitutes the forward pass's tensors again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

Tensor = torch.Tensor


def forward_tensors(func: Callable) -> dict[str, Tensor] | None:
    """``func``'s parameters and buffers by name as they are now (None when ``func`` is not an
    ``nn.Module``: a function's tensors cannot be substituted)."""
    if not isinstance(func, nn.Module):
        return None
    return {**dict(func.named_parameters(remove_duplicate=False)),
            **dict(func.named_buffers(remove_duplicate=False))}


@contextlib.contextmanager
def tensors_as_in_forward(func: Callable, seen: dict[str, Tensor] | None) -> Iterator[None]:
    """Inside the block ``func`` holds the tensors it held when ``seen`` was taken
    (``forward_tensors``), where it now holds others; a module unchanged is left alone."""
    now = forward_tensors(func) if seen is not None else None
    changed = {name: tensor for name, tensor in (seen or {}).items() if now.get(name) is not tensor}
    if not changed:
        yield
        return
    # What torch.func.functional_call runs its call under (a private helper of torch.nn.utils.
    # stateless; the public function takes one call, not a backward pass of many).
    with torch.nn.utils.stateless._reparametrize_module(func, changed):
        yield
