"""Gradients whose own gradient a backward pass cannot give.

The checkpointed gradient and the continuous adjoint compute their gradients from steps they
record and drop one at a time, detached from the graph that made the forward pass's inputs:
asked for a differentiable gradient (``create_graph=True``: gradient penalties, Hessian-vector
products), they would hand back gradients whose own gradient is silently zero or missing. They
pass their gradients through ``refuse_second_order`` instead: the first-order values are
unchanged, and differentiating them raises, naming the alternative.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Tensor = torch.Tensor


class _Refuse(torch.autograd.Function):
    """The identity on ``grads``; its backward raises ``message``. The sources (``n_sources``
    tensors before ``grads``, whose graph leads to every input the gradients are of) are inputs
    too, so that differentiating the gradients with respect to any of those reaches this
    backward: without that path autograd would report them unused (``None``, or a loss term
    left out) without a word."""

    @staticmethod
    def forward(ctx, message: str, n_sources: int, *tensors: Tensor) -> tuple[Tensor, ...]:
        ctx.message = message
        return tuple(g.view_as(g) for g in tensors[n_sources:])

    @staticmethod
    def backward(ctx, *unused: Tensor):
        raise RuntimeError(ctx.message)


def refuse_second_order(grads: Sequence[Tensor | None], sources: Sequence[Tensor],
                        message: str) -> tuple[Tensor | None, ...]:
    """``grads`` as they are, unless this backward pass is being recorded (``create_graph=True``):
    then the same values, whose own backward raises ``message``. ``sources``: tensors from which
    autograd reaches every input the gradients are of (those inputs themselves, or the node's
    own saved outputs, whose graph leads back to all of its inputs)."""
    if not torch.is_grad_enabled():
        return tuple(grads)
    sources = [s for s in sources if s.requires_grad]
    present = [i for i, g in enumerate(grads) if g is not None]
    refused = iter(_Refuse.apply(message, len(sources), *sources, *(grads[i] for i in present)))
    return tuple(next(refused) if g is not None else None for g in grads)
