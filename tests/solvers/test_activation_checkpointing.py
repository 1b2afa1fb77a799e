"""odekern inside ``torch.utils.checkpoint`` (activation checkpointing of a model that holds ODE
blocks): values and gradients are those of the same model without it, in both of its modes.
Non-reentrant checkpointing lets a Function's backward unpack each saved tensor once, so the
solves' backward passes read ``ctx.saved_tensors`` once."""

from __future__ import annotations

import pytest
import torch
from solver_problems import TanhField
from torch import nn
from torch.utils.checkpoint import checkpoint

import odekern
from odekern.testing import assert_close, randn

F64 = torch.float64


def _gradients(run, leaves):
    """Gradients of a weighted sum of ``run()``'s output, with ``.backward()`` (the reentrant mode
    refuses torch.autograd.grad)."""
    for leaf in leaves:
        leaf.grad = None
    out = run()
    outputs = out if isinstance(out, tuple) else (out,)
    weights = [randn(*o.shape, dtype=o.dtype, seed=9 + k) if o.dim() else 1.5 for k, o in enumerate(outputs)]
    sum((o * w).sum() for o, w in zip(outputs, weights)).backward()
    return outputs, [leaf.grad.clone() for leaf in leaves]


def _assert_same_with_and_without_checkpoint(fn, inputs, leaves, reentrant):
    got = _gradients(lambda: checkpoint(fn, *inputs, use_reentrant=reentrant), leaves)
    want = _gradients(lambda: fn(*inputs), leaves)
    for a, b in zip(got[0], want[0]):
        assert_close(a, b)
    for a, b in zip(got[1], want[1]):
        assert_close(a, b)


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("gradient", ["backprop", "adjoint", "checkpoint"])
@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_ode_block(method, gradient, reentrant):
    accuracy = {"step_size": 0.125} if method == "rk4" else {"rtol": 1e-6, "atol": 1e-8}
    block = odekern.ODEBlock(TanhField(), method=method, gradient=gradient, **accuracy)
    x = randn(2, 3, dtype=F64, seed=1, requires_grad=True)
    _assert_same_with_and_without_checkpoint(block, (x,), (x, *block.parameters()), reentrant)


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("gradient", ["checkpoint", "adjoint"])
def test_fused_nmode_solve(gradient, reentrant):
    y0 = randn(2, 3, 4, 4, dtype=F64, seed=2, requires_grad=True)
    g = randn(1, 3, 4, 4, dtype=F64, seed=3, requires_grad=True)
    _assert_same_with_and_without_checkpoint(lambda a, b: odekern.nmode_solve(a, b, gradient=gradient), (y0, g),
                                             (y0, g), reentrant)


@pytest.mark.parametrize("reentrant", [False, True])
def test_event_time(reentrant):
    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    layer = nn.Linear(2, 2, dtype=F64)

    def solve(y):
        return odekern.odeint_event(lambda t, z: -torch.tanh(layer(z)), y, torch.tensor(0.0, dtype=F64),
                                    event_fn=lambda t, z: z.sum() - 1.0)

    _assert_same_with_and_without_checkpoint(solve, (y0,), (y0, *layer.parameters()), reentrant)
