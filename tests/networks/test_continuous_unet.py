"""Continuous U-Net: parity with the torchdiffeq formulation (same weights), gradients, solvers."""

import copy

import pytest
import torch
from netutil import TINY_CONTINUOUS, images
from reference_odes import TorchdiffeqSecondOrder

from networks import build_model
from networks.continuous_unet import SOLVER_CHOICES, DynamicBlock
from odekern.testing import INDEPENDENT_INTEGRATOR_TOL, NETWORK_GRADCHECK_TOL, SAME_FORMULA_ATOL_FP64, assert_close


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
    # Adaptive cases on a 1-level network at 8x8 (every level is the same code).
    shape = {"levels": 4, "size": 32} if method == "rk4" else {"levels": 1, "size": 8}
    model = build_model("continuous-unet", **TINY_CONTINUOUS, levels=shape["levels"], gradient=gradient,
                        method=method, rtol=1e-4, atol=1e-4).double()
    reference = _with_torchdiffeq(model, adjoint=gradient == "adjoint")
    x = images(1, size=shape["size"], dtype=torch.float64).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, gx, grads = _run(model, x)
    y_ref, gx_ref, grads_ref = _run(reference, x_ref)
    # Same algorithm (rk4 backprop): rounding only, but accumulated over 9 blocks and a deep
    # network, so 1e-8 relative to each tensor's scale. Otherwise the solvers' own tolerance.
    rel = 1e-8 if kind == "rounding" else 1e-5

    def close(actual, expected, what):
        assert_close(actual, expected, "cross", what, rtol=rel, atol=max(rel * expected.abs().max().item(), 1e-12))

    close(y, y_ref, "logits")
    if kind == "outputs":
        return
    close(gx, gx_ref, "input gradient")
    for (name, _), g, g_ref in zip(model.named_parameters(), grads, grads_ref, strict=True):
        close(g, g_ref, f"gradient of {name}")


@pytest.mark.parametrize("variant", ["second-order", "official"])
def test_gradcheck_float64(variant):
    torch.manual_seed(0)
    model = build_model("continuous-unet", base_filters=1, levels=1, variant=variant, gradient="backprop",
                        act="softplus")
    model = model.double().eval()
    x = images(1, size=8, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda inp: model(inp), (x,), fast_mode=True, **NETWORK_GRADCHECK_TOL)


def test_dynamic_block_is_second_order_with_learned_initial_velocity():
    """The block's state is [x(t1), x'(t1)] of x'' = f_a(x, x'), x'(0) = g(x(0)): check it with
    a hand-written Heun (explicit trapezoid) integration of the first-order system on a fine grid
    (second order, independent code; a first-order block or a zero initial velocity would be off
    by O(1), Heun's error here is O(1e-4))."""
    torch.manual_seed(0)
    block = DynamicBlock(3, method="rk4", step_size=0.05).double()
    x0 = images(1, size=8, dtype=torch.float64)
    accel, g = block.ode.dynamics.func, block.ode.velocity_init
    with torch.no_grad():
        state = block(x0)
        x, v, n = x0.clone(), g(x0), 100
        h = 1.0 / n
        for i in range(n):
            t = torch.tensor(i * h)
            a0 = accel(t, x, v)
            xp, vp = x + h * v, v + h * a0
            a1 = accel(t + h, xp, vp)
            x, v = x + h / 2 * (v + vp), v + h / 2 * (a0 + a1)
        assert (g(x0).abs() > 0.1).any()
    assert state.shape == (1, 6, 8, 8)
    assert_close(state[:, :3], x, "cross", "position", **INDEPENDENT_INTEGRATOR_TOL)
    assert_close(state[:, 3:], v, "cross", "velocity", **INDEPENDENT_INTEGRATOR_TOL)


@pytest.mark.parametrize("method", SOLVER_CHOICES)
def test_every_table5_solver_runs_and_differs_from_euler(method):
    options = dict(TINY_CONTINUOUS, levels=2, method=method)
    if method in ("euler", "explicit_adams", "implicit_adams"):
        options["step_size"] = 0.25
    torch.manual_seed(0)
    model = build_model("continuous-unet", **options).double().eval()
    torch.manual_seed(0)
    euler = build_model("continuous-unet", **TINY_CONTINUOUS, levels=2, method="euler",
                        step_size=1.0).double().eval()
    x = images(1, size=16, dtype=torch.float64)
    with torch.no_grad():
        y, y_euler = model(x), euler(x)
    assert torch.isfinite(y).all()
    if method != "euler":
        assert not torch.allclose(y, y_euler, rtol=0, atol=SAME_FORMULA_ATOL_FP64)  # the solver choice reaches the blocks
