"""odeint / odeint_adjoint / ODEBlock under torch.func and forward-mode AD.

The fused stage kernels and the solvers' preallocated buffers would drop tangents and batch
dimensions; the solvers must see such inputs and use plain differentiable ops. Oracles: reverse
mode through the same solve (the inner-product identity <u, J v> = <J^T u, v>), central finite
differences in float64, and a Python loop for vmap. States are large enough that the fused
kernels would otherwise run (above rk_stage.dispatch.MIN_NUMEL for no-grad solves).
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD

import odekern
from odekern.nn import ODEBlock
from odekern.testing import assert_close, randn

F64 = torch.float64
T = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
FIXED = dict(method="rk4", options=dict(step_size=0.1))
ADAPTIVE = dict(method="dopri5")


class Decay(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.7, dtype=F64))

    def forward(self, t, y):
        return -self.w * torch.tanh(y) + 0.1 * torch.cos(t)


@pytest.mark.parametrize("kw", [FIXED, ADAPTIVE], ids=["rk4", "dopri5"])
def test_jvp_matches_reverse_mode(kw):
    func = Decay()
    y0, v, u = (randn(64, 40, dtype=F64, seed=s) for s in (0, 1, 2))
    solve = lambda y: odekern.odeint(func, y, T, **kw)[-1]  # noqa: E731
    _, tangent = torch.func.jvp(solve, (y0,), (v,))
    assert tangent.abs().max() > 0.1
    y = y0.clone().requires_grad_()
    vjp, = torch.autograd.grad(solve(y), y, u)
    assert_close((u * tangent).sum(), (vjp * v).sum())


def test_forward_ad_matches_finite_differences():
    func = Decay()
    y0, v = randn(64, 40, dtype=F64, seed=3), randn(64, 40, dtype=F64, seed=4)
    with fwAD.dual_level():
        out = odekern.odeint(func, fwAD.make_dual(y0, v), T, **FIXED)
        tangent = fwAD.unpack_dual(out).tangent
    eps = 1e-6
    fd = (odekern.odeint(func, y0 + eps * v, T, **FIXED) - odekern.odeint(func, y0 - eps * v, T, **FIXED)) / (2 * eps)
    assert_close(tangent, fd, kind="cross")


@pytest.mark.parametrize("transform", ["grad", "jacrev", "jacfwd"])
@pytest.mark.parametrize("solver", ["odeint", "odeint_adjoint"])
def test_func_transforms_agree_with_autograd(transform, solver):
    func = Decay()
    y0 = randn(6, dtype=F64, seed=5)
    solve = getattr(odekern, solver)
    loss = lambda y: (solve(func, y, T, **FIXED)[-1] ** 2).sum()  # noqa: E731
    result = getattr(torch.func, transform)(loss)(y0)
    y = y0.clone().requires_grad_()
    grad, = torch.autograd.grad(loss(y), y)
    assert_close(result.reshape(-1), grad, kind="cross")


@pytest.mark.parametrize("kw", [
    FIXED, dict(method="euler"), dict(method="implicit_adams", options=dict(step_size=0.1)),
    dict(method="midpoint", options=dict(step_size=0.1, interp="cubic")),
    dict(method="bosh3", options=dict(first_step=0.05, step_t=[0.3], jump_t=[0.7])),
], ids=["rk4", "euler-on-t", "implicit_adams", "midpoint-cubic", "bosh3-step_t-jump_t"])
@pytest.mark.parametrize("direction", [1.0, -1.0], ids=["increasing", "decreasing"])
def test_jvp_with_respect_to_t_matches_reverse_mode_and_finite_differences(kw, direction):
    """A tangent on the output times moves the grid (fixed grids) or every step's time (adaptive
    methods) as a gradient does; it is not visible as requires_grad, and a solve that took t
    as constant lost 50-200% of the derivative."""
    func = Decay()
    y0 = randn(4, 5, dtype=F64, seed=7)
    # 0.45 lies between grid points: a finite difference there is smooth (at a grid point the
    # linear interpolation's slope jumps).
    times = direction * torch.tensor([0.0, 0.45, 1.0], dtype=F64)
    # v moves t[0] and t[-1] together: a finite difference that changed t[-1] - t[0] could add a
    # tiny last step to a step_size grid, which an Adams method (constant-step weights) takes
    # badly; reverse mode checks the general direction.
    v = torch.tensor([0.3, -0.7, 0.3], dtype=F64)
    loss = lambda tt: odekern.odeint(func, y0, tt, **kw).square().sum()  # noqa: E731
    _, along_v = torch.func.jvp(loss, (times,), (v,))
    t = times.clone().requires_grad_()
    grad, = torch.autograd.grad(loss(t), t)
    assert_close(along_v, (grad * v).sum())
    u = torch.tensor([0.3, -0.7, 1.1], dtype=F64)
    assert_close(torch.func.jvp(loss, (times,), (u,))[1], (grad * u).sum())
    if kw["method"] != "bosh3":  # adaptive steps move with rtol-level jumps under finite differences
        eps = 1e-6
        assert_close(along_v, (loss(times + eps * v) - loss(times - eps * v)) / (2 * eps), kind="cross")


def test_vmap_matches_a_loop_for_fixed_grids_and_refuses_adaptive_methods():
    func = Decay()
    ys = randn(5, 30, dtype=F64, seed=6)
    solve = lambda y: odekern.odeint(func, y, T, **FIXED)  # noqa: E731
    assert_close(torch.func.vmap(solve)(ys), torch.stack([solve(y) for y in ys], dim=0))
    with pytest.raises(ValueError, match="vmap"):
        torch.func.vmap(lambda y: odekern.odeint(func, y, T, **ADAPTIVE))(ys)


def test_ode_block_jvp_with_respect_to_parameters():
    block = ODEBlock(Decay(), method="rk4", options=dict(step_size=0.1)).double()
    x = randn(64, 40, dtype=F64, seed=7)
    params = dict(block.named_parameters())
    direction = {k: torch.ones_like(p) for k, p in params.items()}
    run = lambda p: torch.func.functional_call(block, p, (x,))  # noqa: E731
    _, tangent = torch.func.jvp(run, (params,), (direction,))
    u = randn(*tangent.shape, dtype=F64, seed=8)
    out = block(x)
    grads = torch.autograd.grad(out, list(params.values()), u)
    assert_close((u * tangent).sum(), sum(g.sum() for g in grads))


@pytest.mark.parametrize("transform", ["grad", "jacrev", "jvp", "vmap-grad"])
def test_checkpoint_mode_under_transforms_equals_its_eager_gradient(transform):
    """gradient="checkpoint" under torch.func solves as odeint does; the oracle is the eager
    checkpointed backward (recomputation from stored states, a different code path)."""
    block = ODEBlock(Decay(), t=(0.0, 0.5, 1.0), method="rk4", step_size=0.1, gradient="checkpoint",
                     checkpoints=2).double()
    params = dict(block.named_parameters())
    xs = randn(3, 2, 20, dtype=F64, seed=9)
    u = randn(2, 20, dtype=F64, seed=10)
    loss = lambda p, x: (torch.func.functional_call(block, p, (x,)) * u).sum()  # noqa: E731

    def eager(x):
        x = x.clone().requires_grad_()
        return torch.autograd.grad(loss(params, x), [*params.values(), x])

    if transform == "grad":
        got_p, got_x = torch.func.grad(loss, argnums=(0, 1))(params, xs[0])
        want = eager(xs[0])
        assert_close(torch.stack([*got_p.values()]), torch.stack(want[:-1]))
        assert_close(got_x, want[-1])
    elif transform == "jacrev":
        assert_close(torch.func.jacrev(loss, argnums=1)(params, xs[0]), eager(xs[0])[-1])
    elif transform == "jvp":
        direction = randn(2, 20, dtype=F64, seed=11)
        _, tangent = torch.func.jvp(lambda x: loss(params, x), (xs[0],), (direction,))
        assert_close(tangent, (eager(xs[0])[-1] * direction).sum())
    else:
        got = torch.func.vmap(torch.func.grad(loss, argnums=1), in_dims=(None, 0))(params, xs)
        assert_close(got, torch.stack([eager(x)[-1] for x in xs]))

