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


@pytest.mark.parametrize("gradient", ["checkpoint", "adjoint"])
def test_a_second_derivative_through_the_input_is_refused(gradient):
    """A gradient penalty on the input, differentiated with respect to the input: the adjoint's
    gradient had no path back to y0, so autograd left the solve's second-order term out and
    returned a number (-5.9 where backprop gives 0.005). Now it raises; first order unchanged."""
    func = _Net()
    block = ODEBlock(func, method="rk4", step_size=0.25, gradient=gradient)
    x = testing.randn(2, 4, dtype=torch.float64, seed=3, requires_grad=True)
    want, = torch.autograd.grad(block(torch.tanh(x)).square().sum(), x)
    got, = torch.autograd.grad(block(torch.tanh(x)).square().sum(), x, create_graph=True)
    testing.assert_close(got, want)
    with pytest.raises(RuntimeError, match="cannot differentiate its gradient"):
        torch.autograd.grad(got.square().sum(), x)


def test_the_adjoint_without_parameters_refuses_a_second_derivative():
    """With no parameters and no time gradient nothing else tied the adjoint's gradient to the
    graph: differentiating it again gave the encoder's term alone."""
    x = testing.randn(3, dtype=torch.float64, seed=4, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ys = odekern.odeint_adjoint(lambda t, y: torch.sin(y), torch.tanh(x), t, method="rk4",
                                options={"step_size": 0.25}, adjoint_params=())
    got, = torch.autograd.grad(ys[-1].sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="cannot differentiate its gradient"):
        torch.autograd.grad(got.sum(), x)


def test_the_adjoint_still_lets_y0_change_after_the_forward_pass():
    """The refusal reaches y0 without keeping it: as in torchdiffeq, y0 may be changed in place
    between the forward and the backward pass, and the gradient is the same."""
    func = _Net()
    x = testing.randn(2, 4, dtype=torch.float64, seed=5, requires_grad=True)
    t = torch.tensor([0.0, 0.5], dtype=torch.float64)

    def gradient(change):
        y0 = x * 2
        ys = odekern.odeint_adjoint(func, y0, t, method="rk4", options={"step_size": 0.25})
        if change:
            with torch.no_grad():
                y0.add_(1.0)
        return torch.autograd.grad(ys[-1].square().sum(), x)[0]

    testing.assert_close(gradient(True), gradient(False))
