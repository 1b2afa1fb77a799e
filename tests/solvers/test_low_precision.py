"""Mixed and low precision: autocast RHS outputs, float16/bfloat16 states, nmode_solve inputs.

Oracles: the same solve in float32/float64 (an independent precision), with the per-dtype
tolerances of odekern.testing.
"""

from __future__ import annotations

import pytest
import torch

import odekern
from odekern.solvers import checks
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


def test_checkpoint_gradient_under_autocast_is_backprops():
    """backward() runs outside the caller's autocast block; the checkpointed gradient must still
    replay and record its steps at the forward's precision, or it differentiates another
    trajectory (the float32 one: ~1e-2 off here). Against backprop without autocast's weight
    cache, which accumulates each weight's gradient over all steps in bfloat16 (~4% off here)."""
    net = _mlp()
    y0 = randn(4, 8, seed=3, requires_grad=True)
    leaves = (y0, *net.parameters())

    def grads(gradient, **extra):
        block = odekern.ODEBlock(lambda t, y: net(y), method="rk4", step_size=0.05, gradient=gradient, **extra)
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
            out = block(y0)
        return torch.autograd.grad(out.square().sum(), leaves)

    for got, want in zip(grads("checkpoint", checkpoints=3), grads("backprop")):
        assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("component_dtype", [torch.bfloat16, torch.float64], ids=["lower", "higher"])
def test_tuple_state_takes_a_component_of_another_real_precision(component_dtype):
    """bfloat16 from an RHS under autocast, float64 from a float64 buffer: cast to the state's
    float32, which keeps its precision (a complex component is refused)."""
    y0 = (randn(3, seed=3), randn(3, seed=4))
    out = odekern.odeint(lambda t, z: (z[1].to(component_dtype), -z[0]), y0, T, method="rk4")
    assert out[0].dtype == out[1].dtype == torch.float32
    exact = odekern.odeint(lambda t, z: (z[1], -z[0]), y0, T, method="rk4")
    for a, b in zip(out, exact):
        assert_close(a, b, **odekern.testing.tol(min(component_dtype, torch.float32, key=lambda d: d.itemsize)))
    with pytest.raises(TypeError, match=r"func\(t, y\)\[0\] returned dtype torch.complex64 .* needs a complex state"):
        odekern.odeint(lambda t, z: (z[1] + 0j, -z[0]), y0, T, method="rk4")


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


# --- Tolerances a state's dtype cannot resolve --------------------------------------------------
# Below rtol + atol / |y0| ~ u^2 (u: the dtype's unit roundoff) the accepted steps no longer move
# y at all and the solve returns about y0 at t1; up to ~64 u^2 it is still wrong by 10-100%
# (checks.resolvable_tolerance). Such requests raise instead of returning that result.

ADAPTIVE = ["dopri5", "bosh3", "fehlberg2", "adaptive_heun", "dopri8", "tsit5"]
BOUND = {torch.bfloat16: 2.0 ** -10, torch.float16: 2.0 ** -16, torch.float32: 2.0 ** -42}


def _decay(t, y):
    return -y * torch.cos(t) + 0.1 * t


def _y0(dtype):
    return torch.tensor([1.0, 2.0, -3.0, 0.01], dtype=dtype)


@pytest.mark.parametrize("method", ADAPTIVE)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_default_tolerances_on_a_half_precision_state_raise_naming_rtol(dtype, method):
    with pytest.raises(ValueError, match=r"rtol=1e-07 with atol=1e-09 .* more accuracy than a (b)?float16 state"):
        odekern.odeint(_decay, _y0(dtype), T, method=method)


@pytest.mark.parametrize("method", ADAPTIVE)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_just_above_the_bound_the_solve_is_accurate_and_a_quarter_of_it_is_refused(dtype, method):
    """Just above the bound the solve is right to the dtype's resolution times a few tens (2-27
    eps measured, the most for low-order methods, whose many steps each round y; checked against
    a float64 solve); a quarter of the bound is refused."""
    y0 = _y0(dtype)
    bound = BOUND[dtype]
    exact = odekern.odeint(_decay, y0.double(), T.double(), rtol=1e-12, atol=1e-14)[-1]
    got = odekern.odeint(_decay, y0, T, method=method, rtol=1.01 * bound, atol=0.0)[-1]
    resolution = torch.finfo(dtype).eps * exact.abs().clamp(min=1.0)
    assert ((got.double() - exact).abs() <= 32 * resolution).all(), (got, exact)
    with pytest.raises(ValueError, match="rtol"):
        odekern.odeint(_decay, y0, T, method=method, rtol=bound / 4, atol=0.0)


def test_the_bound_per_dtype_and_what_it_lets_through():
    for dtype, bound in BOUND.items():
        assert checks.resolvable_tolerance(dtype) == bound
    # float32 with torchdiffeq's defaults and the usual tight settings runs; float64 anything.
    for rtol, atol in ((1e-7, 1e-9), (1e-10, 1e-12), (2.4e-13, 0.0)):
        odekern.odeint(_decay, _y0(torch.float32), T, rtol=rtol, atol=atol, options={"max_num_steps": 10**6})
    with pytest.raises(ValueError, match="float32"):
        odekern.odeint(_decay, _y0(torch.float32), T, rtol=1e-13, atol=1e-15)
    odekern.odeint(_decay, _y0(torch.float64), T, rtol=1e-13, atol=1e-15)
    # A complex state is judged by its real dtype.
    with pytest.raises(ValueError, match="complex64"):
        odekern.odeint(_decay, _y0(torch.complex64), T, rtol=1e-13, atol=1e-15)
    # Fixed grids take no tolerance: nothing to refuse.
    odekern.odeint(_decay, _y0(torch.bfloat16), T, method="rk4", options={"step_size": 0.1})


def test_atol_counts_per_element_relative_to_y0_and_zeros_never_count():
    y0 = _y0(torch.bfloat16)
    # atol = 0.01 is 3.3e-3 relative to |y0| = 3: enough with any rtol.
    odekern.odeint(_decay, y0, T, rtol=0.0, atol=0.01)
    with pytest.raises(ValueError, match=r"rtol=0 with atol=0.001 .*here 0.00033"):
        odekern.odeint(_decay, y0, T, rtol=0.0, atol=1e-3)
    # A state of zeros (any atol > 0 is resolvable there) and a per-element tensor tolerance.
    odekern.odeint(_decay, torch.zeros(4, dtype=torch.bfloat16), T, rtol=0.0, atol=1e-6)
    with pytest.raises(ValueError, match="here 1e-07"):  # a zero element with atol = 0 hides nothing
        odekern.odeint(_decay, torch.tensor([0.0, 3.0], dtype=torch.bfloat16), T, rtol=1e-7, atol=0.0)
    rtol = torch.tensor([1e-2, 1e-2, 1e-2, 1e-7])
    odekern.odeint(_decay, y0, T, rtol=rtol, atol=1e-4)  # the 1e-7 element has |y0| = 0.01: atol covers it
    with pytest.raises(ValueError, match=r"rtol=tensor of shape \(4,\)"):
        odekern.odeint(_decay, y0, T, rtol=rtol.flip(0), atol=1e-4)


def test_a_tuple_state_names_the_component():
    y0 = (_y0(torch.bfloat16), _y0(torch.bfloat16))
    with pytest.raises(ValueError, match="component 1 of the tuple y0"):
        odekern.odeint(lambda t, y: (-y[0], -y[1]), y0, T, rtol=(1e-2, 1e-6), atol=0.0)


def test_odeint_adjoint_checks_its_backward_tolerances_before_solving():
    calls = []

    def func(t, y):
        calls.append(t)
        return -y

    y0 = _y0(torch.bfloat16).requires_grad_()
    with pytest.raises(ValueError, match=r"adjoint_rtol=1e-06 with atol=0.0001"):
        odekern.odeint_adjoint(func, y0, T, rtol=1e-2, atol=1e-4, adjoint_rtol=1e-6, adjoint_params=())
    with pytest.raises(ValueError, match=r"^rtol=1e-07"):  # adjoint tolerances defaulted to the forward's
        odekern.odeint_adjoint(func, y0, T, adjoint_params=())
    assert calls == []
    out = odekern.odeint_adjoint(func, y0, T, rtol=1e-2, atol=1e-4, adjoint_params=())
    out[-1].float().sum().backward()
    assert_close(y0.grad.float(), torch.full((4,), float(torch.exp(torch.tensor(-1.0)))),
                 **odekern.testing.tol(torch.bfloat16, "solve"))
