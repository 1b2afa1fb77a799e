"""Every solve entry point takes the output times as a list or tuple of Python numbers, as
``odeint`` does, and solves and differentiates exactly as with the same times as a tensor: a
script that passes ``[0.0, 1.0]`` to ``odeint`` keeps working when it switches gradient mode."""

from __future__ import annotations

import pytest
import torch

import odekern
from odekern.checkpoint import odeint_checkpointed
from odekern.testing import assert_close, randn


def _odeint(func, y0, t, params, **kwargs):
    return odekern.odeint(func, y0, t, **kwargs)


def _adjoint(func, y0, t, params, **kwargs):
    return odekern.odeint_adjoint(func, y0, t, adjoint_params=params, **kwargs)


def _checkpointed(func, y0, t, params, **kwargs):
    return odeint_checkpointed(func, y0, t, checkpoints=2, adjoint_params=params, **kwargs)


ENTRY_POINTS = {"odeint": _odeint, "odeint_adjoint": _adjoint, "odeint_checkpointed": _checkpointed}
SETTINGS = {"rk4": dict(method="rk4", options={"step_size": 0.2}),
            "dopri5": dict(method="dopri5", rtol=1e-6, atol=1e-8)}


def _solve_and_grads(entry, times, setting):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    params = tuple(net.parameters())
    y0 = randn(4, 3, dtype=torch.float64, seed=1, requires_grad=True)
    out = ENTRY_POINTS[entry](lambda t, y: net(y), y0, times, params, **setting)
    weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view_as(out)
    return out, torch.autograd.grad((weights * out).sum(), (y0, *params))


@pytest.mark.parametrize("times", [[0.0, 0.5, 1.0], (1.0, 0.3, 0.0)], ids=["increasing-list", "decreasing-tuple"])
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_numbers_solve_and_differentiate_as_the_same_tensor(entry, setting, times):
    out, grads = _solve_and_grads(entry, times, SETTINGS[setting])
    ref_out, ref_grads = _solve_and_grads(entry, torch.tensor(times, dtype=torch.float64), SETTINGS[setting])
    assert out.shape == (len(times), 4, 3) and out.dtype == torch.float64
    assert_close(out, ref_out, rtol=0, atol=0)
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, rtol=0, atol=0)


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_bad_numbers_are_refused_in_odeints_words(entry):
    y0 = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
        ENTRY_POINTS[entry](lambda t, y: -y, y0, [0.0, 1.0, 0.5], ())
    with pytest.raises(ValueError, match="finite real numbers"):
        ENTRY_POINTS[entry](lambda t, y: -y, y0, [0.0, float("nan")], ())
