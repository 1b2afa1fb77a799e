"""Mixed and low precision: autocast RHS outputs, float16/bfloat16 states, nmode_solve inputs.

Oracles: the same solve in float32/float64 (an independent precision), with the per-dtype
tolerances of odekern.testing.
"""

from __future__ import annotations

import pytest
import torch

import odekern
from odekern.testing import assert_close, randn

T = torch.tensor([0.0, 0.5, 1.0])


def _mlp(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8)).to(dtype)


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_autocast_rhs_output_is_cast_up_and_the_state_stays_float32(method):
    net = _mlp()
    y0 = randn(4, 8, seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net(y0).dtype == torch.bfloat16  # the RHS really returns bfloat16
        out = odekern.odeint(lambda t, y: net(y), y0, T, method=method)
    assert out.dtype == torch.float32
    assert_close(out, odekern.odeint(lambda t, y: net(y), y0, T, method=method), **odekern.testing.tol(torch.bfloat16))


def test_autocast_backward_reaches_the_parameters():
    net = _mlp()
    y0 = randn(4, 8, seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = odekern.odeint_adjoint(lambda t, y: net(y), y0, T, method="rk4", adjoint_params=tuple(net.parameters()))
    out[-1].square().sum().backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in net.parameters())


def test_tuple_state_accepts_a_lower_precision_component():
    y0 = (randn(3, seed=3), randn(3, seed=4))
    out = odekern.odeint(lambda t, z: (z[1].bfloat16(), -z[0]), y0, T, method="rk4")
    assert out[0].dtype == out[1].dtype == torch.float32
    exact = odekern.odeint(lambda t, z: (z[1], -z[0]), y0, T, method="rk4")
    for a, b in zip(out, exact):
        assert_close(a, b, **odekern.testing.tol(torch.bfloat16))


def test_a_higher_precision_rhs_output_is_still_refused():
    with pytest.raises(TypeError, match="lower floating precision"):
        odekern.odeint(lambda t, y: y.double(), torch.ones(3), T, method="rk4")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_state_with_dopri5_controls_its_steps_in_float32(dtype):
    net = _mlp()
    y0 = randn(4, 8, seed=5)
    low = odekern.odeint(lambda t, y: net.to(dtype)(y), y0.to(dtype), T.to(dtype), rtol=1e-3, atol=1e-4)
    assert low.dtype == dtype
    exact = odekern.odeint(lambda t, y: net.double()(y), y0.double(), T.double(), rtol=1e-10, atol=1e-12)
    assert_close(low.double(), exact, **odekern.testing.tol(dtype, "solve"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nmode_solve_low_precision_inputs_are_solved_in_float32(dtype):
    y0, g = randn(2, 3, 5, seed=6), randn(1, 3, 5, seed=7)
    y0_low, g_low = y0.to(dtype).requires_grad_(), g.to(dtype).requires_grad_()
    y1 = odekern.nmode_solve(y0_low, g_low, 0.0, 0.5)
    assert y1.dtype == dtype
    # Exactly the float32 solve of the rounded inputs, rounded back.
    assert torch.equal(y1.detach(), odekern.nmode_solve(y0_low.detach().float(), g_low.detach().float(), 0.0, 0.5).to(dtype))
    y1.float().sum().backward()
    assert y0_low.grad.dtype == dtype and g_low.grad.dtype == dtype
    # A float32 state with an autocast-made phase term g.
    assert_close(odekern.nmode_solve(y0, g.to(dtype), 0.0, 0.5), odekern.nmode_solve(y0, g.to(dtype).float(), 0.0, 0.5))
