"""Complex-valued states (torchdiffeq integrates them): time stays real, the solution has the
state's complex dtype, error norms use magnitudes. Backprop is compared with torchdiffeq; the
adjoint (which torchdiffeq 0.2.5 cannot run with real parameters) with odekern's backprop."""

from __future__ import annotations

import pytest
import torch
import torchdiffeq
from torch import nn

import odekern
from odekern.testing import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")
C128 = torch.complex128
METHODS = {"dopri5": None, "rk4": {"step_size": 0.1}, "implicit_adams": {"step_size": 0.1},
           "euler": {"step_size": 0.05, "perturb": True}}


class Rotating(nn.Module):
    """dy/dt = (i + w) cos(t) y with a real parameter w."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.3, -0.7], dtype=torch.float64))
        self.time_dtypes = set()

    def forward(self, t, y):
        self.time_dtypes.add(t.dtype)
        return (1j + self.w) * y * torch.cos(t)


def _solve(solve, method, **kw):
    func = Rotating()
    y0 = torch.tensor([1 + 1j, 0.5j], dtype=C128, requires_grad=True)
    y = solve(func, y0, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), method=method,
              options=METHODS[method], rtol=1e-9, atol=1e-10, **kw)
    return (y, *torch.autograd.grad(y.abs().sum(), (y0, func.w))), func.time_dtypes


@pytest.mark.filterwarnings("ignore:.*did not converge")
@pytest.mark.parametrize("method", list(METHODS))
def test_complex_state_matches_torchdiffeq(method):
    ours, our_times = _solve(odekern.odeint, method)
    theirs, _ = _solve(torchdiffeq.odeint, method)
    assert ours[0].dtype == C128 and our_times == {torch.float64}
    for a, b in zip(ours, theirs):
        assert_close(a, b, kind="cross")


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_complex_state_adjoint_matches_backprop(method):
    adjoint, _ = _solve(odekern.odeint_adjoint, method)
    backprop, _ = _solve(odekern.odeint, method)
    assert adjoint[2].dtype == torch.float64  # a real parameter gets a real gradient
    for a, b in zip(adjoint, backprop):
        assert_close(a, b, kind="cross")
