"""One vocabulary across odeint, odeint_adjoint, ODEBlock and nmode_solve: ``gradient=`` names the
gradient mode and ``control`` the step control. Former spellings still work, warn, and give
exactly the same numbers as the current ones."""

import pytest
import torch

import odekern
from odekern import ODEBlock, odeint, odeint_adjoint
from odekern.testing import randn

T = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)


def _decay(t, y):
    # Batch elements decay at their own rates, so per-sample control takes different steps.
    rates = torch.arange(1, y.shape[0] + 1, dtype=y.dtype).reshape(-1, *([1] * (y.dim() - 1))) ** 2
    return -rates * torch.tanh(y)


def test_odeint_norm_per_sample_is_control_per_sample():
    y0 = randn(3, 2, dtype=torch.float64, seed=1)
    new = odeint(_decay, y0, T, options={"control": "per_sample"})
    with pytest.warns(DeprecationWarning, match=r"options\['norm'\]='per_sample' is now options\['control'\]"):
        old = odeint(_decay, y0, T, options={"norm": "per_sample"})
    assert torch.equal(new, old)
    # And it is not the global control's answer (the option does something).
    assert not torch.equal(new, odeint(_decay, y0, T, options={"control": "global"}))


def test_odeint_adjoint_norm_per_sample_is_control_per_sample():
    y0 = randn(3, 2, dtype=torch.float64, seed=2, requires_grad=True)
    new = odeint_adjoint(_decay, y0, T, options={"control": "per_sample"}, adjoint_params=())
    (g_new,) = torch.autograd.grad(new.sum(), y0)
    with pytest.warns(DeprecationWarning, match="control"):
        old = odeint_adjoint(_decay, y0, T, options={"norm": "per_sample"}, adjoint_params=())
    (g_old,) = torch.autograd.grad(old.sum(), y0)
    assert torch.equal(new, old) and torch.equal(g_new, g_old)


def test_ode_block_warns_when_built_with_the_former_spelling():
    func = _decay  # ODEBlock calls func(t, y), as odeint does
    with pytest.warns(DeprecationWarning, match=r"ODEBlock: options\['norm'\]='per_sample'"):
        old = ODEBlock(func, method="dopri5", options={"norm": "per_sample"})
    new = ODEBlock(func, method="dopri5", options={"control": "per_sample"})
    x = randn(4, 2, dtype=torch.float64, seed=3)
    assert torch.equal(old(x), new(x))


def test_both_spellings_must_agree():
    y0 = randn(3, 2, dtype=torch.float64, seed=4)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="contradicts"):
        odeint(_decay, y0, T, options={"norm": "per_sample", "control": "global"})


def test_unknown_control_names_the_argument_and_the_choices():
    y0 = randn(3, 2, dtype=torch.float64, seed=5)
    with pytest.raises(ValueError, match=r"options\['control'\] must be one of \['global', 'per_sample'\]"):
        odeint(_decay, y0, T, options={"control": "per_element"})


def test_nmode_solve_exact_is_checkpoint():
    y0 = randn(2, 3, dtype=torch.float64, seed=6, requires_grad=True)
    g = randn(2, 3, dtype=torch.float64, seed=7)
    kwargs = {"method": "dopri5", "backend": "reference"}
    new = odekern.nmode_solve(y0, g, 0.0, 0.3, gradient="checkpoint", **kwargs)
    with pytest.warns(DeprecationWarning, match="gradient='exact' is now called gradient='checkpoint'"):
        old = odekern.nmode_solve(y0, g, 0.0, 0.3, gradient="exact", **kwargs)
    (g_new,) = torch.autograd.grad(new.sum(), y0)
    (g_old,) = torch.autograd.grad(old.sum(), y0)
    assert torch.equal(new, old) and torch.equal(g_new, g_old)
