"""ODEBlock(order=2) solves the state (x, x') as a tuple: no concatenation or split per stage.

Issue 4, "Higher-order blocks": the state [x, x'] is handled without a cat/split copy per
stage. Checked below the autograd layer (every aten op is counted, so a copy cannot hide in
a helper), for the forward with and without autograd and for the backward of every gradient
mode that solves the tuple; then the values against the concatenated system of Proposition 1
solved by torchdiffeq, and gradcheck in float64.
"""

from __future__ import annotations

import pytest
import torch
import torchdiffeq
from torch import nn

from odekern import ODEBlock
from odekern.adjoint import _AugmentedDynamics, _AugmentedLayout, _TupleParts
from odekern.testing import OpCounter, assert_close, randn

F64 = torch.float64
C = 3
COPY_OPS = ("aten.cat", "aten.stack")
SPLIT_OPS = ("aten.split", "aten.split_with_sizes", "aten.chunk", "aten.unbind")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py


class TwoConvAccel(nn.Module):
    """x'' = tanh(conv(x) + conv(x')) - 0.3 x: a conv RHS that itself concatenates nothing, so
    any concatenation seen during a solve would be the solver's."""

    def __init__(self):
        super().__init__()
        self.conv_x = nn.Conv2d(C, C, 3, padding=1)
        self.conv_v = nn.Conv2d(C, C, 3, padding=1)

    def forward(self, t, x, v):
        return torch.tanh(self.conv_x(x) + self.conv_v(v)) - 0.3 * x


def _block(method="rk4", gradient="backprop", dtype=torch.float32, **kw):
    torch.manual_seed(0)
    options = {"step_size": 0.25} if method == "rk4" else {}
    return ODEBlock(TwoConvAccel(), order=2, velocity_init=nn.Conv2d(C, C, 1), method=method,
                    gradient=gradient, **options, **kw).to(dtype)


def _state_copies(ops: OpCounter, state_numel: int) -> dict[str, int]:
    """Concatenations/splits whose result is at least one state component big (scalars stacked
    by an error norm do not count)."""
    return {name: ops.counts[name] for name in COPY_OPS + SPLIT_OPS
            if ops.counts[name] and ops.largest[name] >= state_numel}


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_forward_makes_no_state_copy(method, grad):
    block = _block(method)
    x = randn(2, C, 6, 5, seed=1, requires_grad=grad)
    with torch.set_grad_enabled(grad), OpCounter() as ops:
        block(x)
    assert ops.counts["aten.convolution"] >= 2 * 16  # the solve ran (>= 16 RHS calls)
    assert _state_copies(ops, x.numel()) == {}


@pytest.mark.parametrize("gradient", ["backprop", "adjoint", "checkpoint"])
def test_forward_and_backward_make_no_state_copy(gradient):
    block = _block(gradient=gradient)
    x = randn(2, C, 6, 5, seed=2, requires_grad=True)
    with OpCounter() as ops:
        block(x).square().sum().backward()
    assert ops.counts["aten.convolution_backward"] > 0
    assert _state_copies(ops, x.numel()) == {}


def test_counter_sees_the_concatenation_of_a_flat_solve():
    """The check above is not vacuous: the concatenated system of Proposition 1 (what the block
    solved before) shows one concatenation per RHS call."""
    block = _block()
    x = randn(2, C, 6, 5, seed=3)

    def flat_system(t, z):
        x_, v_ = torch.chunk(z, 2, dim=1)
        return torch.cat((v_, block.func(t, x_, v_)), dim=1)

    from odekern import odeint

    with torch.no_grad(), OpCounter() as ops:
        odeint(flat_system, torch.cat((x, block.velocity_init(x)), dim=1), block.t, method="rk4",
               options={"step_size": 0.25})
    assert _state_copies(ops, x.numel()).get("aten.cat", 0) >= 16


def test_dynamics_pass_the_velocity_on_unchanged():
    block = _block()
    z = (randn(1, C, 4, 4, seed=4), randn(1, C, 4, 4, seed=5))
    dz = block.dynamics(torch.tensor(0.0), z)
    assert isinstance(dz, tuple) and dz[0] is z[1]


def test_adjoint_dynamics_pass_the_velocity_on_without_copy():
    """The backward's augmented state (a_t, x, v, a_x, a_v, a_theta...) is a tuple too; its
    dx/dt component is the state's v storage itself."""
    block = _block(dtype=F64)
    params = tuple(block.dynamics.parameters())
    x, v = randn(1, C, 4, 4, dtype=F64, seed=6), randn(1, C, 4, 4, dtype=F64, seed=7)
    adj = (randn(1, C, 4, 4, dtype=F64, seed=8), randn(1, C, 4, 4, dtype=F64, seed=9))
    aug = (torch.zeros((), dtype=F64), x, v, *adj, *(torch.zeros_like(p) for p in params))
    dynamics = _AugmentedDynamics(block.dynamics, _AugmentedLayout(2, True), _TupleParts(aug), params)
    t = torch.tensor(0.1, dtype=F64)
    out = dynamics(t, aug)
    assert len(out) == len(aug)
    assert out[1].data_ptr() == v.data_ptr()
    # a_x' = -a_v . da/dx and a_v' = -a_x - a_v . da/dv for (x, v)' = (v, a(x, v)):
    xx, vv = x.clone().requires_grad_(), v.clone().requires_grad_()
    g_x, g_v = torch.autograd.grad(block.func(t, xx, vv), (xx, vv), adj[1])
    assert_close(out[3], -g_x, msg="a_x'")
    assert_close(out[4], -adj[0] - g_v, msg="a_v'")


def hand_built_system(accel: nn.Module):
    def rhs(t, z):
        x, v = z[:, :C], z[:, C:]
        return torch.cat([v, accel(t, x, v)], dim=1)

    return rhs


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_values_and_gradients_match_torchdiffeq_on_the_concatenated_system(method):
    block = _block(method, dtype=F64, return_state=True)
    x = randn(2, C, 5, 4, dtype=F64, seed=10, requires_grad=True)
    state = block(x)
    options = {"step_size": 0.25} if method == "rk4" else None
    ref = torchdiffeq.odeint(hand_built_system(block.func), torch.cat([x, block.velocity_init(x)], dim=1),
                             block.t.to(F64), method=method, options=options)[-1]
    kind = "rounding" if method == "rk4" else "cross"
    assert_close(state, ref, kind=kind)
    params = (x, *block.parameters())
    for i, (a, b) in enumerate(zip(torch.autograd.grad(state.square().sum(), params),
                                   torch.autograd.grad(ref.square().sum(), params))):
        assert_close(a, b, kind=kind, msg=f"gradient {i}")


@pytest.mark.parametrize("gradient", ["backprop", "adjoint", "checkpoint"])
def test_gradcheck(gradient):
    block = _block(gradient=gradient, dtype=F64)
    x = randn(1, C, 3, 3, dtype=F64, seed=11, requires_grad=True)
    # rk4 at h=0.25 over [0, 1]: the continuous adjoint is within O(h^4) of the discrete gradient.
    tol = {"atol": 1e-4, "rtol": 1e-3} if gradient == "adjoint" else {}
    assert torch.autograd.gradcheck(lambda x_, *p: block(x_), (x, *block.parameters()), fast_mode=True, **tol)


def _max_abs_norm(z):
    assert isinstance(z, torch.Tensor) and z.shape[1] == 2 * C  # written for the concatenated state
    return z.abs().max()


@pytest.mark.parametrize("option", [None, ("control", "per_sample"), ("norm", _max_abs_norm)],
                         ids=["default", "per_sample", "callable"])
def test_dopri5_takes_the_steps_of_the_concatenated_system(option):
    """The block's error norm is still that of the concatenated state [x, x'] (as before the
    tuple state): same values within rounding and the same number of RHS evaluations as odekern
    solving the concatenated system."""
    from odekern import odeint

    options = {} if option is None else dict([option])
    block = _block("dopri5", dtype=F64, return_state=True, options=options, rtol=1e-6, atol=1e-8)
    calls = []
    block.func.register_forward_pre_hook(lambda module, args: calls.append(1))
    x = randn(2, C, 5, 4, dtype=F64, seed=12)
    with torch.no_grad():
        state = block(x)
        n_tuple = len(calls)
        calls.clear()
        flat = odeint(hand_built_system(block.func), torch.cat([x, block.velocity_init(x)], dim=1),
                      block.t.to(F64), method="dopri5", options=dict(options), rtol=1e-6, atol=1e-8)[-1]
    assert_close(state, flat)
    assert n_tuple == len(calls) > 12
