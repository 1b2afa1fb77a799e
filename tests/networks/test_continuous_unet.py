"""Continuous U-Net: parity with the torchdiffeq formulation (same weights), gradients, solvers."""

import copy

import pytest
import torch
from netutil import TINY_CONTINUOUS, images
from reference_odes import TorchdiffeqSecondOrder

from networks import build_model
from networks.continuous_unet import SOLVER_CHOICES, DynamicBlock
from odekern.testing import assert_close


def _with_torchdiffeq(model, adjoint):
    """Deep copy of ``model`` whose dynamic blocks are solved by torchdiffeq (same weights)."""
    reference = copy.deepcopy(model)
    for module in reference.modules():
        if isinstance(module, DynamicBlock):
            module.ode = TorchdiffeqSecondOrder(module.ode, adjoint=adjoint)
    return reference


def _run(model, x):
    y = model(x)
    weights = torch.linspace(-1.0, 1.0, y.numel(), dtype=y.dtype).view_as(y)
    (y * weights).sum().backward()
    return y.detach(), x.grad.clone(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("gradient, method, kind", [
    ("backprop", "rk4", "rounding"),       # same tableau, same single step: rounding only
    ("adjoint", "rk4", "cross"),           # continuous adjoints on each library's own backward grid
    ("adjoint", "dopri5", "cross"),        # adaptive forward and backward solves
    ("backprop", "dopri5", "outputs"),     # see below: gradients follow different conventions
])
def test_matches_torchdiffeq_outputs_and_gradients(gradient, method, kind):
    """Backprop through dopri5 is compared on outputs only: torchdiffeq's step sizes are tensors
    computed from the state, so its backprop also differentiates the step-size controller;
    odekern holds accepted step sizes constant (the usual convention, same as the adjoint's)."""
    # Tolerances of the adaptive solve: both libraries take the same steps up to rounding, so
    # a loose solve keeps the test fast without loosening the comparison.
    # Adaptive cases on a 2-level network at 16x16 (every level is the same code).
    shape = dict(levels=4, size=32) if method == "rk4" else dict(levels=2, size=16)
    model = build_model("continuous-unet", **TINY_CONTINUOUS, levels=shape["levels"], gradient=gradient,
                        method=method, rtol=1e-4, atol=1e-4).double()
    reference = _with_torchdiffeq(model, adjoint=gradient == "adjoint")
    x = images(1, size=shape["size"], dtype=torch.float64).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, gx, grads = _run(model, x)
    y_ref, gx_ref, grads_ref = _run(reference, x_ref)
    tol_kind = "rounding" if kind == "rounding" else "cross"
    over = {} if kind == "rounding" else {"rtol": 1e-5, "atol": 1e-7}
    assert_close(y, y_ref, tol_kind, "logits", **over)
    if kind == "outputs":
        return
    assert_close(gx, gx_ref, tol_kind, "input gradient", **over)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert_close(g, g_ref, tol_kind, "parameter gradient", **over)


def test_gradcheck_float64():
    torch.manual_seed(0)
    model = build_model("continuous-unet", base_filters=1, levels=1).double().eval()
    x = images(1, size=8, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda inp: model(inp), (x,), fast_mode=True, eps=1e-6, atol=1e-6)


def test_dynamic_block_is_second_order_with_learned_initial_velocity():
    """The block's state is [x(t1), x'(t1)] of x'' = f_a(x, x'), x'(0) = g(x(0)): check it with
    a hand-written explicit-Euler integration on a fine grid (first order, independent code)."""
    torch.manual_seed(0)
    block = DynamicBlock(3, method="rk4", step_size=0.05).double()
    x0 = images(1, size=8, dtype=torch.float64)
    accel, g = block.ode.dynamics.func, block.ode.velocity_init
    with torch.no_grad():
        state = block(x0)
        x, v, n = x0.clone(), g(x0), 1000
        for i in range(n):
            a = accel(torch.tensor(i / n), x, v)
            x, v = x + v / n, v + a / n
    assert state.shape == (1, 6, 8, 8)
    # Euler's global error is O(1/n): 1e-3 scale; an order-1 system (no velocity) or a zero
    # initial velocity would be off by O(1).
    assert_close(state[:, :3], x, "cross", "position", rtol=5e-3, atol=5e-3)
    assert_close(state[:, 3:], v, "cross", "velocity", rtol=5e-3, atol=5e-3)
    assert (g(x0).abs() > 0.1).any()


@pytest.mark.parametrize("method", SOLVER_CHOICES)
def test_every_table5_solver_runs_and_differs_from_euler(method):
    options = dict(TINY_CONTINUOUS, method=method)
    if method in ("euler", "explicit_adams", "implicit_adams"):
        options["step_size"] = 0.25
    torch.manual_seed(0)
    model = build_model("continuous-unet", **options).double().eval()
    torch.manual_seed(0)
    euler = build_model("continuous-unet", **TINY_CONTINUOUS, method="euler", step_size=1.0).double().eval()
    x = images(1, dtype=torch.float64)
    with torch.no_grad():
        y, y_euler = model(x), euler(x)
    assert torch.isfinite(y).all()
    if method != "euler":
        assert not torch.allclose(y, y_euler, rtol=0, atol=1e-12)  # the solver choice reaches the blocks
