"""odekern.NmODE against the CNM-UNet pairing it replaces: an nmODE RHS module (gamma + 3x3
conv) integrated by torchdiffeq's odeint_adjoint (dopri5, rtol 1e-7, atol 1e-9, t in [0, 0.05]).
Tolerances: odekern.testing "cross" (another library)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchdiffeq import odeint_adjoint

import odekern
from odekern.testing import (BACKEND_SOLVE_ATOL, GRADIENT_VS_ODEINT_ADJOINT_ATOL, SAME_FORMULA_ATOL_FP64, assert_close,
                             randn)


def _module(gradient="checkpoint", control="global", dtype=torch.float64):
    torch.manual_seed(0)
    m = odekern.NmODE(3, 6, 5, gradient=gradient, control=control).to(dtype)
    with torch.no_grad():
        m.gamma.copy_(randn(1, 3, 6, 5, dtype=dtype, seed=7, scale=0.5))  # non-trivial phase
    return m


def _grads(m, loss):
    params = [m.gamma, m.conv.weight, m.conv.bias]
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("gradient", ["checkpoint", "adjoint"])
def test_nmode_matches_torchdiffeq_odeint_adjoint(gradient):
    m = _module(gradient)
    y0 = randn(2, 3, 6, 5, dtype=torch.float64, seed=1, requires_grad=True)
    t = torch.tensor([0.0, 0.05], dtype=torch.float64)
    want = odeint_adjoint(m.rhs, y0, t, rtol=1e-7, atol=1e-9, method="dopri5",
                          adjoint_params=tuple(m.parameters()))[-1]
    w = torch.linspace(-1, 1, want.numel(), dtype=want.dtype).view_as(want)
    want_grads = torch.autograd.grad((w * want).sum(), [y0, m.gamma, m.conv.weight, m.conv.bias])
    got = m(y0)
    got_grads = torch.autograd.grad((w * got).sum(), [y0, m.gamma, m.conv.weight, m.conv.bias])
    assert_close(got, want.detach(), kind="cross")
    atol = GRADIENT_VS_ODEINT_ADJOINT_ATOL[gradient]
    for name, a, b in zip(("y0", "gamma", "conv.weight", "conv.bias"), got_grads, want_grads):
        assert_close(a, b, kind="cross", atol=atol, msg=name)


def test_return_f_is_the_rhs_and_differentiable_into_the_conv():
    m = _module()
    y0 = randn(2, 3, 6, 5, dtype=torch.float64, seed=2)
    y1, f0, f1 = m(y0, return_f=True)
    assert_close(f0, m.rhs(0.0, y0).detach(), atol=SAME_FORMULA_ATOL_FP64)
    assert_close(f1, m.rhs(0.05, y1).detach(), atol=SAME_FORMULA_ATOL_FP64)
    # DUSE's loss L_n on f statistics reaches the conv that makes g (cnm-unet Eq. 4).
    loss = (f1.mean() - 0.1).abs() + (f1.var() - 0.2).abs()
    gw = torch.autograd.grad(loss, m.conv.weight)[0]
    # Reference: the same loss through torch autograd of f1 = rhs(y1(g), g) with y1 from the
    # reference backend (exact gradient, also autograd-free inside).
    m_ref = _module()
    m_ref.solve_kwargs["backend"] = "reference"
    y1r, _, f1r = m_ref(y0, return_f=True)
    lr = (f1r.mean() - 0.1).abs() + (f1r.var() - 0.2).abs()
    assert_close(gw, torch.autograd.grad(lr, m_ref.conv.weight)[0], atol=BACKEND_SOLVE_ATOL[torch.float64])


def test_module_defaults_and_validation():
    m = odekern.NmODE(4, 8, 8)
    assert m.gamma.shape == (1, 4, 8, 8) and bool((m.gamma == 0).all())
    assert m.t1 == 0.05 and m.solve_kwargs["method"] == "dopri5"
    assert m(torch.zeros(2, 4, 8, 8)).shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="channels"):
        odekern.NmODE(0, 8, 8)
    with pytest.raises(ValueError, match="t1"):
        odekern.NmODE(4, 8, 8, t1=0.0)
    with pytest.raises(ValueError, match="method"):
        odekern.NmODE(4, 8, 8, method="rk45")
    # The input is named as the module's (it once surfaced as a shape error of g, an internal).
    for bad in (torch.zeros(2, 4, 8, 9), torch.zeros(2, 3, 8, 8), torch.zeros(4, 8, 8)):
        with pytest.raises(ValueError, match=r"NmODE\(4, 8, 8\) takes inputs shaped \[B, 4, 8, 8\]"):
            m(bad)
    # NumPy sizes and times are numbers; a string time is not, inf is not finite.
    assert odekern.NmODE(np.int64(4), 8, 8, t1=np.float32(0.25)).gamma.shape == (1, 4, 8, 8)
    with pytest.raises(TypeError, match="t1 must be a real number, got str"):
        odekern.NmODE(4, 8, 8, t1="0.05")
    with pytest.raises(ValueError, match="t1 must be finite and > 0"):
        odekern.NmODE(4, 8, 8, t1=float("inf"))
    with pytest.raises(ValueError, match="height must be a positive int, got True"):
        odekern.NmODE(4, True, 8)


def test_former_gradient_name_still_works_with_a_deprecation_warning():
    y0, g = torch.rand(2, 3, dtype=torch.float64, requires_grad=True), torch.rand(3, dtype=torch.float64)
    with pytest.warns(DeprecationWarning, match="gradient='exact' is now called gradient='checkpoint'"):
        old = odekern.nmode_solve(y0, g, 0.0, 0.5, gradient="exact")
    new = odekern.nmode_solve(y0, g, 0.0, 0.5, gradient="checkpoint")
    assert torch.equal(old, new)
    assert torch.equal(*(torch.autograd.grad(y.sum(), y0)[0] for y in (old, new)))
    with pytest.warns(DeprecationWarning):
        odekern.NmODE(3, 1, 1, gradient="exact")
