"""torch.autograd.gradcheck (float64, fast mode: random projections) of backprop through every method: w.r.t. y0, the RHS's
parameters and the output times t. (The continuous adjoint is covered in test_adjoint.py.)"""

from __future__ import annotations

import pytest
import torch
from solver_problems import ALL_METHODS, NEW_ADAPTIVE

from odekern import odeint
from odekern.testing import ODEINT_GRADCHECK_TOL, randn

pytestmark = pytest.mark.filterwarnings("ignore:.*did not converge")


def _rhs(A, b):
    def f(t, y):
        return torch.tanh(y @ A.T) + b * torch.cos(3 * t)
    return f


@pytest.mark.parametrize("method", ALL_METHODS)
def test_gradcheck_backprop(method):
    y0 = randn(2, 3, dtype=torch.float64, seed=1, requires_grad=True)
    A = randn(3, 3, dtype=torch.float64, seed=2, scale=0.5, requires_grad=True)
    b = randn(3, dtype=torch.float64, seed=3, requires_grad=True)
    # Fixed-grid methods step on t itself (6 points: past the Adams RK4 start-up); adaptive ones adapt.
    t = torch.linspace(0.0, 0.8, 6 if method != "dopri5" else 3, dtype=torch.float64).requires_grad_()
    tol = {"rtol": 1e-9, "atol": 1e-11} if method in ("dopri5", "implicit_adams") else {}

    def solve(y0, A, b, t):
        return odeint(_rhs(A, b), y0, t, method=method, **tol)

    assert torch.autograd.gradcheck(solve, (y0, A, b, t), **ODEINT_GRADCHECK_TOL, fast_mode=True)


@pytest.mark.parametrize("method", ["rk4", "midpoint"])
def test_gradcheck_step_size_grid_with_interpolated_outputs(method):
    # Grid from step_size, outputs between grid points (linear interpolation is differentiable in t).
    y0 = randn(1, 3, dtype=torch.float64, seed=4, requires_grad=True)
    A = randn(3, 3, dtype=torch.float64, seed=5, scale=0.5, requires_grad=True)
    b = randn(3, dtype=torch.float64, seed=6, requires_grad=True)
    t = torch.tensor([0.0, 0.33, 0.71], dtype=torch.float64, requires_grad=True)

    def solve(y0, A, b, t):
        return odeint(_rhs(A, b), y0, t, method=method, options={"step_size": 0.1})

    assert torch.autograd.gradcheck(solve, (y0, A, b, t), **ODEINT_GRADCHECK_TOL, fast_mode=True)


@pytest.mark.parametrize("method", NEW_ADAPTIVE)
def test_gradcheck_backprop_other_adaptive_methods(method):
    # In fixed-step mode (first_step = min_step = max_step): the solve is then a smooth function
    # of its inputs (adaptive step sizes move with y0, and with them the interpolation error of
    # torchdiffeq's low-order dense outputs, which finite differences would see), and backprop
    # through the whole adaptive stepper (stages, last-stage reuse, dense output) is checked.
    y0 = randn(2, 3, dtype=torch.float64, seed=1, requires_grad=True)
    A = randn(3, 3, dtype=torch.float64, seed=2, scale=0.5, requires_grad=True)
    b = randn(3, dtype=torch.float64, seed=3, requires_grad=True)
    t = torch.tensor([0.0, 0.33, 0.8], dtype=torch.float64, requires_grad=True)
    h = 0.1

    def solve(y0, A, b, t):
        return odeint(_rhs(A, b), y0, t, method=method, options={"first_step": h, "min_step": h, "max_step": h})

    assert torch.autograd.gradcheck(solve, (y0, A, b, t), **ODEINT_GRADCHECK_TOL, fast_mode=True)
