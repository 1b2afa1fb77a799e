"""Gradients of gradients (create_graph=True): backprop gives them; the checkpointed gradient and
the continuous adjoint cannot, and must refuse rather than give zeros
(odekern/solvers/double_backward.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import odekern
from odekern import ODEBlock, testing


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 4)).double()

    def forward(self, t, y):
        return self.net(y)


@pytest.mark.parametrize("gradient", ["checkpoint", "adjoint"])
def test_a_gradient_of_the_gradient_is_refused_not_zero(gradient):
    """A gradient penalty needs the gradient's own gradient, which these modes cannot give: it
    was silently zero (checkpoint) or left out of a summed loss (adjoint). With create_graph=True
    the first-order values are unchanged; differentiating them raises, naming the alternative."""
    func = _Net()
    block = ODEBlock(func, method="rk4", step_size=0.25, gradient=gradient)
    y0 = testing.randn(2, 4, dtype=torch.float64, seed=2, requires_grad=True)
    want, = torch.autograd.grad(block(y0).square().sum(), y0)
    out = block(y0)
    got, = torch.autograd.grad(out.square().sum(), y0, create_graph=True)
    testing.assert_close(got, want)
    with pytest.raises(RuntimeError, match="cannot differentiate its gradient.*backprop"):
        torch.autograd.grad(got.square().sum(), list(func.parameters()))
    got, = torch.autograd.grad(block(y0).square().sum(), y0, create_graph=True)
    with pytest.raises(RuntimeError, match="cannot differentiate its gradient"):
        (out.sum() + got.square().sum()).backward()


def test_backprop_gives_gradients_of_gradients():
    """gradgradcheck (float64, finite differences of the gradient) through odeint's backprop."""
    w = testing.randn(3, 3, dtype=torch.float64, seed=5, requires_grad=True)
    y0 = testing.randn(3, dtype=torch.float64, seed=6, requires_grad=True)
    t = torch.tensor([0.0, 0.5], dtype=torch.float64)

    def solve(y0, w):
        return odekern.odeint(lambda t, y: torch.tanh(w @ y), y0, t, method="rk4", options={"step_size": 0.125})[-1]

    assert torch.autograd.gradgradcheck(solve, (y0, w))
