"""CNM-UNet: parity with the authors' torchdiffeq formulation, DUSE's running f-statistics,
the fusion parameters, gradcheck."""

import copy

import pytest
import torch
from netutil import TINY_CNM, images, require_nmode
from reference_odes import TorchdiffeqNmODE, nmode_gamma_and_conv, solve_nmode

from networks import build_model
from odekern.testing import (ADJOINT_GRADIENT_REL, NETWORK_GRADCHECK_TOL, SAME_FORMULA_ATOL_FP64, SAME_STEPS_REL_FP64,
                             assert_close, peak_relative_tol)


@pytest.fixture(autouse=True)
def _needs_nmode():
    require_nmode()


def _tiny(**kw):
    torch.manual_seed(0)
    model = build_model("cnm-unet", **{**TINY_CNM, **kw})
    # gamma starts at zero (paper); give it and the fusion bias values so their gradients and
    # C(gamma) are exercised away from the trivial point.
    gamma, _ = nmode_gamma_and_conv(model.cnm_block.nmode)
    with torch.no_grad():
        gamma.copy_(torch.randn(gamma.shape, generator=torch.Generator().manual_seed(1)))
        if isinstance(model.fusion.bias, torch.nn.Parameter):
            model.fusion.bias.copy_(0.1 * torch.randn(model.fusion.bias.shape, generator=torch.Generator().manual_seed(2)))
    return model


PAPER_TOL = {"rtol": 1e-7, "atol": 1e-9}  # the paper's / torchdiffeq's default tolerances


def _with_torchdiffeq(model):
    reference = copy.deepcopy(model)
    block = reference.cnm_block
    block.nmode = TorchdiffeqNmODE(block.nmode, t1=0.05, method="dopri5", adjoint=True, **PAPER_TOL)
    return reference


def _run(model, x):
    y = model(x)
    weights = torch.linspace(-1.0, 1.0, y.numel(), dtype=y.dtype).view_as(y)
    (y * weights).sum().backward()
    return y.detach(), x.grad.clone(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("mode, gradient", [("train", "adjoint"), ("eval", "adjoint"), ("train", "checkpoint")])
def test_matches_torchdiffeq_odeint_adjoint(mode, gradient):
    """Same weights, ODE part by torchdiffeq.odeint_adjoint (the authors' call) at the paper's
    tolerances: logits, input gradient and every parameter gradient (encoder, fusion, gamma, C,
    BNs, head) agree. Both our gradient modes (continuous adjoint; exact gradient of the
    discrete solve) approximate the true gradient to O(rtol), as does torchdiffeq's adjoint."""
    model = _tiny(gradient=gradient, **PAPER_TOL).double().train(mode == "train")
    reference = _with_torchdiffeq(model)
    x = images(2, dtype=torch.float64).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, gx, grads = _run(model, x)
    y_ref, gx_ref, grads_ref = _run(reference, x_ref)
    # The forward takes the same steps as torchdiffeq (same controller): outputs agree to
    # rounding; the adjoints integrate backward with their own step choices (odekern per
    # element, torchdiffeq per tensor), so gradients agree to the solve tolerance relative to
    # each tensor's scale (atol = 1e-5 * max |reference|, at least 1e-9: a conv bias before a
    # train-mode BN has a true gradient of 0, both sides give rounding noise).
    def close(actual, expected, what):
        assert_close(actual, expected, "cross", what, **peak_relative_tol(expected, ADJOINT_GRADIENT_REL))

    close(y, y_ref, "logits")
    close(gx, gx_ref, "input gradient")
    for (name, _), g, g_ref in zip(model.named_parameters(), grads, grads_ref, strict=True):
        close(g, g_ref, f"gradient of {name}")
    if mode == "train":
        for name in ("f_running_mean", "f_running_var"):
            close(getattr(model.cnm_block, name), getattr(reference.cnm_block, name), name)


def test_running_f_statistics_follow_eq3_in_train_mode_only():
    model = _tiny().double()
    m = model.duse_config.momentum
    x = images(3, dtype=torch.float64)
    # Independent recomputation of f at t0 and t1 with torchdiffeq, from the model's own y0.
    with torch.no_grad():
        fused = model.fusion(model.encoder(x))
        y0 = torch.nn.functional.batch_norm(torch.nn.functional.softplus(fused), None, None,
                                            model.cnm_block.input_norm.weight, model.cnm_block.input_norm.bias,
                                            training=True)
        gamma, conv = nmode_gamma_and_conv(model.cnm_block.nmode)
        _, f0, f1 = solve_nmode(gamma, conv, y0, 0.05, "dopri5", TINY_CNM["rtol"], TINY_CNM["atol"], adjoint=False,
                                return_f=True)
    model.train()
    model(x)
    for row, f in enumerate((f0, f1)):
        expected_mean = m * f.mean(dim=(0, 2, 3))
        expected_var = (1 - m) * 1.0 + m * f.var(dim=(0, 2, 3))
        # torchdiffeq's dopri5 takes the same steps as the fused solve's global control.
        assert_close(model.cnm_block.f_running_mean[row], expected_mean, "cross", "running mean",
                     **peak_relative_tol(expected_mean, SAME_STEPS_REL_FP64))
        assert_close(model.cnm_block.f_running_var[row], expected_var, "cross", "running var",
                     **peak_relative_tol(expected_var, SAME_STEPS_REL_FP64))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    with torch.no_grad():
        model(x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_momentum_comes_from_duse_config():
    from networks import DUSEConfig

    model = _tiny()
    model.duse_config = DUSEConfig(momentum=1.0)
    model.train()
    model(images(2))
    first = model.cnm_block.f_running_mean.clone()
    model(images(2, seed=5))
    assert not torch.equal(first, model.cnm_block.f_running_mean)  # m = 1: replaced, not averaged
    model.duse_config = DUSEConfig(momentum=0.0)
    kept = model.cnm_block.f_running_mean.clone()
    model(images(2, seed=6))
    assert torch.equal(kept, model.cnm_block.f_running_mean)


def test_fusion_weights_and_bias_are_learnable_or_constant():
    learnable = _tiny()
    learnable(images(2)).sum().backward()
    assert learnable.fusion.weights.grad is not None and learnable.fusion.weights.grad.abs().sum() > 0
    assert learnable.fusion.bias.grad is not None and learnable.fusion.bias.grad.shape == (1, 3, 32, 32)
    fixed = build_model("cnm-unet", **TINY_CNM, learnable_fusion=False)
    names = dict(fixed.named_parameters())
    assert "fusion.weights" not in names and "fusion.bias" not in names
    assert torch.equal(fixed.state_dict()["fusion.weights"], torch.ones(5))


def test_gamma_is_zero_initialised_and_shaped_per_pixel():
    model = build_model("cnm-unet", **TINY_CNM)
    gamma, conv = nmode_gamma_and_conv(model.cnm_block.nmode)
    assert gamma.shape == (1, 3, 32, 32) and torch.count_nonzero(gamma) == 0
    assert conv.kernel_size == (3, 3) and conv.in_channels == conv.out_channels == 3


def test_gradcheck_float64():
    model = build_model("cnm-unet", image_size=16, encoder_widths=(2, 2, 2, 2, 2), rtol=1e-10,
                        atol=1e-12).double().eval()
    x = images(1, size=16, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(model, (x,), fast_mode=True, **NETWORK_GRADCHECK_TOL)


def test_fixed_step_solver_for_the_ablation_matches_torchdiffeq():
    """method="rk4" without step_size: one step over [0, delta_t], as torchdiffeq's rk4 takes on
    the grid [0, 0.05] when given no step_size (the authors' call with another method)."""
    model = _tiny(method="rk4").double().eval()
    reference = copy.deepcopy(model)
    reference.cnm_block.nmode = TorchdiffeqNmODE(reference.cnm_block.nmode, t1=0.05, method="rk4", adjoint=False)
    x = images(2, dtype=torch.float64)
    with torch.no_grad():
        want = reference(x)
        assert_close(model(x), want, "cross", "rk4 logits", **peak_relative_tol(want, SAME_STEPS_REL_FP64))
        euler = copy.deepcopy(model)
        euler.cnm_block.nmode = TorchdiffeqNmODE(euler.cnm_block.nmode, t1=0.05, method="euler", adjoint=False)
        assert not torch.allclose(model(x), euler(x), rtol=0, atol=SAME_FORMULA_ATOL_FP64)
