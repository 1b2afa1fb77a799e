"""Gradient mode "checkpoint" with adaptive methods: the forward pass is odeint's adaptive solve
and the backward pass replays its accepted steps, so values and gradients are backprop's.

Backprop here is odeint recording its graph, which runs the PyTorch stage code; the checkpointed
forward pass runs without a graph, on the fused stage kernels. Their sums round differently,
and an error estimate dominated by cancellation (dopri8's, far below the tolerance) can then
choose other step sizes. So the comparisons with backprop run on the reference backend, where
both take the same steps; the default backend is checked by gradcheck and against itself."""

import pytest
import torch
from torch import nn
from solver_problems import assert_backprops, weighted_grads

import odekern
from odekern import ODEBlock, odeint, testing
from odekern.checkpoint import checkpointable_methods, odeint_checkpointed

F64 = torch.float64
ADAPTIVE = ["dopri5", "bosh3", "tsit5", "dopri8"]


class ConvRHS(nn.Module):
    def __init__(self, channels=3, dtype=F64, dropout=0.0, scale=1.0):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1).to(dtype)
        self.dropout = nn.Dropout(dropout)
        self.scale = scale

    def forward(self, t, y):
        return self.scale * self.dropout(torch.tanh(self.conv(y))) * torch.cos(3 * t) - 0.3 * y


def test_adaptive_methods_are_checkpointable():
    assert set(ADAPTIVE) <= set(checkpointable_methods())


@pytest.mark.parametrize("method", ADAPTIVE)
@pytest.mark.parametrize("checkpoints", [1, 3, 64])  # 64: more than the steps, all kept by the forward pass
@pytest.mark.parametrize("decreasing", [False, True])
def test_equals_backprop(method, checkpoints, decreasing):
    func = ConvRHS()
    y0 = testing.randn(2, 3, 4, 5, dtype=F64, seed=1, requires_grad=True)
    t = torch.tensor([0.0, 0.3, 0.31, 0.5, 1.0], dtype=F64)
    t = 1.0 - t if decreasing else t
    leaves = (y0, *func.parameters())
    with odekern.use_backend("reference"):
        got = odeint_checkpointed(func, y0, t, checkpoints=checkpoints, method=method, rtol=1e-6, atol=1e-8)
        ref, status = odeint(func, y0, t, method=method, rtol=1e-6, atol=1e-8, options={"on_max_steps": "return"})
        assert status.n_steps >= 4
        assert_backprops(got, ref, leaves)


@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_gradcheck_float64(method):
    """On the default backend (fused stage kernels), against finite differences; tight
    tolerances make the step sizes' own dependence on the inputs negligible. (bosh3, third
    order, needs hundreds of steps there: it is compared with backprop above.)"""
    w = testing.randn(3, 3, dtype=F64, seed=4, requires_grad=True)
    y0 = testing.randn(3, dtype=F64, seed=5, requires_grad=True)
    t = torch.tensor([0.0, 0.3, 0.77, 1.0], dtype=F64)

    def solve(y0, w):
        return odeint_checkpointed(lambda t, y: torch.tanh(w @ y), y0, t, checkpoints=2, method=method,
                                   rtol=1e-12, atol=1e-12, adjoint_params=(w,))

    assert torch.autograd.gradcheck(solve, (y0, w))


def test_default_backend_gradient_is_its_solves_own():
    """Without forcing a backend: the checkpointed values are odeint's under no_grad (the same
    kernels), and the gradient does not depend on how many checkpoints the backward may hold."""
    func = ConvRHS()
    y0 = testing.randn(2, 3, 4, 5, dtype=F64, seed=2, requires_grad=True)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=F64)
    leaves = (y0, *func.parameters())
    with torch.no_grad():
        plain = odeint(func, y0, t, method="dopri5", rtol=1e-6, atol=1e-8)
    results = [odeint_checkpointed(func, y0, t, checkpoints=c, method="dopri5", rtol=1e-6, atol=1e-8)
               for c in (1, 2, 8)]
    grads = [weighted_grads(r, leaves) for r in results]
    for r, g in zip(results, grads):
        assert torch.equal(r, plain)
        for a, b in zip(g, grads[0]):
            testing.assert_close(a, b)


def test_step_t_jump_t_and_first_step_options():
    func = ConvRHS()
    y0 = testing.randn(1, 3, 4, 4, dtype=F64, seed=3, requires_grad=True)
    t = torch.tensor([0.0, 0.45, 1.0], dtype=F64)
    options = {"jump_t": [0.3, 0.62], "step_t": [0.5], "first_step": 0.05, "max_step": 0.4}
    leaves = (y0, *func.parameters())
    with odekern.use_backend("reference"):
        got = odeint_checkpointed(func, y0, t, checkpoints=2, method="dopri5", rtol=1e-5, atol=1e-7,
                                  options=dict(options))
        ref = odeint(func, y0, t, method="dopri5", rtol=1e-5, atol=1e-7, options=dict(options))
        assert_backprops(got, ref, leaves)


def test_tuple_state_float32():
    func = ConvRHS(dtype=torch.float32)
    x = testing.randn(1, 3, 4, 4, seed=5, requires_grad=True)
    v = testing.randn(1, 3, 4, 4, seed=6, requires_grad=True)

    def rhs(t, y):
        return y[1], func(t, y[0]) - 0.5 * y[1]

    t = torch.tensor([0.0, 0.5, 1.0])
    with odekern.use_backend("reference"):
        got = odeint_checkpointed(rhs, (x, v), t, checkpoints=2, method="dopri5", rtol=1e-4, atol=1e-6)
        ref = odeint(rhs, (x, v), t, method="dopri5", rtol=1e-4, atol=1e-6)
        assert_backprops(got, ref, (x, v, *func.parameters()))


@pytest.mark.parametrize("checkpoints", [2, 64])  # 64: the backward pass starts from kept states
@pytest.mark.parametrize("options", [{}, {"first_step": 0.9}])
def test_random_rhs_draws_what_the_forward_drew(options, checkpoints):
    """Dropout in the RHS: the forward solve drew numbers for the initial step selection (no
    first_step) and for rejected attempts (a first step too large) too; every replayed
    evaluation draws what its first evaluation drew, so the gradient is backprop's for the same
    draws, and the caller's generator is left where backprop leaves it."""
    # Noise small enough for the step control to settle (a tolerance below it would take steps
    # as small as the tolerance over the noise).
    func = ConvRHS(dropout=0.1, scale=0.05).train()
    y0 = testing.randn(2, 3, 4, 5, dtype=F64, seed=7, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    leaves = (y0, *func.parameters())
    options = {"max_num_steps": 200, **options}
    with odekern.use_backend("reference"):
        torch.manual_seed(0)
        ref, status = odeint(func, y0, t, method="dopri5", rtol=1e-3, atol=1e-5,
                             options={"on_max_steps": "return", **options})
        after_ref = torch.rand(1)
        torch.manual_seed(0)
        got = odeint_checkpointed(func, y0, t, checkpoints=checkpoints, method="dopri5", rtol=1e-3,
                                  atol=1e-5, options=dict(options))
        after_got = torch.rand(1)
        assert status.n_steps >= 2 and status.n_rejected >= (1 if "first_step" in options else 0)
        assert torch.equal(after_got, after_ref)
        assert_backprops(got, ref, leaves)


def test_ode_block_with_dopri5_equals_backprop():
    func = ConvRHS()
    x = testing.randn(2, 3, 4, 4, dtype=F64, seed=8, requires_grad=True)
    blocks = [ODEBlock(func, t=(0.0, 0.5, 1.0), method="dopri5", rtol=1e-5, atol=1e-7, gradient=g, checkpoints=2)
              for g in ("checkpoint", "backprop")]
    with odekern.use_backend("reference"):
        got, ref = (b(x) for b in blocks)
        assert_backprops(got, ref, (x, *func.parameters()))


def test_single_output_time_and_nothing_to_differentiate():
    func = ConvRHS()
    y0 = testing.randn(1, 3, 3, 3, dtype=F64, seed=9, requires_grad=True)
    one = odeint_checkpointed(func, y0, torch.tensor([0.25], dtype=F64), checkpoints=2, method="dopri5")
    testing.assert_close(one[0], y0)
    (g,) = torch.autograd.grad(one.sum(), y0)
    testing.assert_close(g, torch.ones_like(y0))
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with torch.no_grad():
        testing.assert_close(odeint_checkpointed(func, y0, t, checkpoints=2, method="dopri5"),
                             odeint(func, y0, t, method="dopri5"))


def test_refusals():
    func = ConvRHS()
    y0 = testing.randn(1, 3, 3, 3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    for method in ("fehlberg2", "adaptive_heun", "implicit_adams"):
        with pytest.raises(ValueError, match="cannot be replayed step by step"):
            odeint_checkpointed(func, y0, t, checkpoints=2, method=method)
        with pytest.raises(ValueError, match="cannot be replayed step by step"):
            ODEBlock(func, method=method, gradient="checkpoint")
    with pytest.raises(ValueError, match=r"does not support options\['on_max_steps'\]='return'"):
        odeint_checkpointed(func, y0, t, checkpoints=2, method="dopri5", options={"on_max_steps": "return"})
    with pytest.raises(ValueError, match=r"does not support options\['control'\]='per_sample'"):
        odeint_checkpointed(func, y0, t, checkpoints=2, method="dopri5", options={"control": "per_sample"})
    with pytest.raises(ValueError, match="does not differentiate with respect to t"):
        odeint_checkpointed(func, y0, t.clone().requires_grad_(), checkpoints=2, method="dopri5")
    with pytest.raises(ValueError, match="rtol"):
        odeint_checkpointed(func, y0, t, checkpoints=2, method="dopri5", rtol=-1.0)
    with pytest.raises(odekern.solvers.SolveError, match="max_num_steps"):
        odeint_checkpointed(func, y0, torch.tensor([0.0, 50.0], dtype=F64), checkpoints=2, method="dopri5",
                            options={"max_num_steps": 2})


def test_double_backward_refused():
    func = ConvRHS()
    y0 = testing.randn(1, 3, 3, 3, dtype=F64, seed=10, requires_grad=True)
    out = odeint_checkpointed(func, y0, torch.tensor([0.0, 0.5], dtype=F64), checkpoints=2, method="dopri5")
    (g,) = torch.autograd.grad(out.square().sum(), y0, create_graph=True)
    with pytest.raises(RuntimeError, match="cannot differentiate its gradient"):
        torch.autograd.grad(g.sum(), y0)


def _peak_states(rtol):
    """Peak of live tensor bytes over forward + backward, in states, and the accepted steps."""
    func = ConvRHS(channels=4, dtype=torch.float32).train()  # dropout 0: draws nothing
    y0 = testing.randn(1, 4, 16, 16, seed=4, requires_grad=True)
    t = torch.tensor([0.0, 3.0])
    with testing.LiveTensorBytes() as live:
        out = odeint_checkpointed(func, y0, t, checkpoints=3, method="dopri5", rtol=rtol, atol=rtol * 1e-2)
        out[-1].square().sum().backward()
        del out
    steps = odeint(func, y0.detach(), t, method="dopri5", rtol=rtol, atol=rtol * 1e-2,
                   options={"on_max_steps": "return"})[1].n_steps
    return live.peak_bytes / (y0.numel() * y0.element_size()), steps


def test_memory_flat_in_accepted_steps():
    """An RHS that draws no random numbers: the peak does not grow with the accepted steps (a
    solve that draws keeps two generator states per step, a few kB on the CPU)."""
    (few, n_few), (many, n_many) = _peak_states(1e-3), _peak_states(1e-7)
    assert n_many > 3 * n_few, (n_few, n_many)
    assert many <= few + 1.0, (few, many, n_few, n_many)


def test_the_backward_pass_starts_from_the_states_the_forward_pass_kept():
    """With fewer steps than checkpoints the forward pass keeps every state the backward pass
    needs: it takes each accepted step once, recorded (7 evaluations of dopri5's), and none
    unrecorded to reach a state; with 2 checkpoints it has to."""
    func = ConvRHS()
    grad_enabled = []

    def counted(t, y):
        grad_enabled.append(torch.is_grad_enabled())
        return func(t, y)

    y0 = testing.randn(1, 3, 8, 8, dtype=F64, seed=5, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 2.0], dtype=F64)
    with torch.no_grad():  # the checkpointed forward pass's own arithmetic, so its own steps
        n = odeint(func, y0, t, method="dopri5", rtol=1e-6, atol=1e-8, options={"on_max_steps": "return"})[1].n_steps
    for checkpoints in (n + 1, 2):
        out = odeint_checkpointed(counted, y0, t, checkpoints=checkpoints, method="dopri5", rtol=1e-6, atol=1e-8)
        grad_enabled.clear()
        out.square().sum().backward()
        if checkpoints > n:
            assert grad_enabled == [True] * (7 * n), (n, grad_enabled)
        else:
            assert grad_enabled.count(True) == 7 * n and grad_enabled.count(False) > 0, (n, grad_enabled)


def _mlp_block_and_input():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 8)).double()
    x = testing.randn(4, 8, seed=3, dtype=F64, requires_grad=True)
    return net, x, lambda g: ODEBlock(lambda t, y: net(y), method="dopri5", rtol=1e-6, atol=1e-8, gradient=g)


def test_compiled_block_equals_eager_backprop():
    """Inside torch.compile the adaptive checkpointed solve runs eagerly (no graph can hold its
    value-dependent steps); the compiled block's values and gradients are eager backprop's."""
    net, x, block = _mlp_block_and_input()
    leaves = (x, *net.parameters())
    got = torch.compile(block("checkpoint"))(x)
    ref = block("backprop")(x)
    assert_backprops(got, ref, leaves)


def test_torch_func_grad_solves_as_odeint():
    net, x, block = _mlp_block_and_input()
    got = torch.func.grad(lambda z: block("checkpoint")(z).sum())(x.detach())
    (ref,) = torch.autograd.grad(block("backprop")(x).sum(), x)
    testing.assert_close(got, ref)
