"""odeint and ODEBlock under torch.compile(fullgraph=True).

Fixed-grid solves with the output times given as Python numbers (ODEBlock does this itself)
read no tensor on the host, so dynamo traces them whole: torch._dynamo.explain reports no graph
break, results equal eager up to float32 rounding (inductor reorders arithmetic), and a
non-finite solution raises as in eager (an in-graph assertion on CPU).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch._dynamo as dynamo
import torch._inductor.config
from torch._dynamo.testing import CompileCounter

import odekern
from odekern.nn import ODEBlock
from odekern.testing import assert_close, randn

TIMES = [0.0, 0.3, 1.0]
# Two steps, and 0.3 between grid points: dynamo unrolls the steps, and the compile time (most of
# these tests' time) grows with the graph.
STEP_SIZE = 0.5


@pytest.fixture(autouse=True)
def fresh_dynamo():
    dynamo.reset()
    yield
    dynamo.reset()


class ConvField(torch.nn.Module):
    """A continuous U-Net style right-hand side: conv, group norm, tanh, time modulation."""

    def __init__(self, channels=8):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = torch.nn.GroupNorm(2, channels)

    def forward(self, t, x, *higher):
        return torch.tanh(self.norm(self.conv(x))) * torch.cos(t)


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
@pytest.mark.parametrize("grad", [False, True])
def test_odeint_with_python_times_compiles_whole(method, grad):
    field = ConvField()
    solve = lambda y: odekern.odeint(field, y, TIMES, method=method, options={"step_size": STEP_SIZE})  # noqa: E731
    y0 = randn(2, 8, 6, 6, seed=1)
    with torch.set_grad_enabled(grad):
        assert dynamo.explain(solve)(y0).graph_break_count == 0
        compiled = torch.compile(solve, fullgraph=True)
        assert_close(compiled(y0), solve(y0))
        # Python times give the solve of the same times as a tensor.
        assert_close(solve(y0), odekern.odeint(field, y0, torch.tensor(TIMES), method=method,
                                                options={"step_size": STEP_SIZE}))


@pytest.mark.parametrize("order", [1, 2])
def test_ode_block_compiles_whole_forward_and_backward(order):
    block = ODEBlock(ConvField(), method="rk4", step_size=STEP_SIZE, order=order)
    x = randn(2, 8, 6, 6, seed=2)
    assert dynamo.explain(block)(x).graph_break_count == 0
    compiled = torch.compile(block, fullgraph=True)
    grads = []
    for fn in (compiled, block):
        xi = x.clone().requires_grad_()
        out = fn(xi)
        out.square().sum().backward()
        grads.append((out.detach(), xi.grad))
    assert_close(grads[0][0], grads[1][0])
    assert_close(grads[0][1], grads[1][1])


@pytest.mark.parametrize("method, gradient, entry", [
    ("rk4", "checkpoint", "odeint_checkpointed"), ("dopri5", "checkpoint", "odeint_checkpointed"),
    ("rk4", "adjoint", "odeint_adjoint"), ("dopri5", "adjoint", "odeint_adjoint"), ("dopri5", "backprop", "odeint"),
])
def test_compiled_block_runs_its_solve_eagerly(method, gradient, entry):
    """The checkpointed and the adjoint solves are graph breaks (their backward passes
    differentiate one retaken step at a time / solve the adjoint system, which no graph holds),
    and so is an adaptive solve (it reads the state at every step: compiled frame by frame it
    recompiled as the step count changed and ran slower): no compiled graph contains the RHS's
    convolution, the argument checks around the solve add no break, and values and gradients are
    eager's."""
    accuracy = {"step_size": STEP_SIZE} if method == "rk4" else {"rtol": 1e-4, "atol": 1e-6}
    block = ODEBlock(ConvField(), method=method, gradient=gradient, **accuracy)
    x = randn(2, 8, 6, 6, seed=2, requires_grad=True)
    explanation = dynamo.explain(block)(x)
    ops = [str(op) for graph in explanation.ops_per_graph for op in graph]
    assert explanation.graph_break_count >= 1
    assert not [op for op in ops if "conv" in op], ops
    # The block's times are numbers: the argument checks read no tensor, so the only break is
    # the call of the eager solve.
    assert {reason.user_stack[-1].name for reason in explanation.break_reasons} == {entry}
    dynamo.reset()
    results = []
    for fn in (torch.compile(block), block):
        out = fn(x)
        results.append((out, torch.autograd.grad(out.square().sum(), (x, *block.parameters()))))
    assert_close(results[0][0], results[1][0])
    for got, want in zip(results[0][1], results[1][1]):
        assert_close(got, want)


def test_a_compiled_func_stays_compiled_inside_an_eager_solve():
    """The eager adaptive solve calls func as it is: a func compiled on its own runs compiled."""
    counter = CompileCounter()
    field = ConvField()
    compiled_field = torch.compile(field, backend=counter)
    y0 = randn(2, 8, 6, 6, seed=3)
    solve = torch.compile(lambda y: odekern.odeint(compiled_field, 2 * y, [0.0, 0.5], method="dopri5", rtol=1e-4,
                                                   atol=1e-6))
    assert_close(solve(y0), odekern.odeint(field, 2 * y0, [0.0, 0.5], method="dopri5", rtol=1e-4, atol=1e-6))
    assert counter.frame_count >= 1


def test_compiled_event_solve_runs_eagerly():
    solve = lambda y: odekern.odeint(lambda t, z: -z, y, torch.tensor([0.0, 5.0]),  # noqa: E731
                                     event_fn=lambda t, z: z.sum() - 0.5)
    y0 = torch.ones(2, dtype=torch.float64)
    explanation = dynamo.explain(solve)(y0)
    assert {reason.user_stack[-1].name for reason in explanation.break_reasons} == {"odeint"}
    dynamo.reset()
    (event_t, ys), (ref_t, ref_ys) = torch.compile(solve)(y0), solve(y0)
    assert_close(event_t, ref_t)
    assert_close(ys, ref_ys)
    assert_close(event_t, torch.log(torch.tensor(4.0)), kind="cross", rtol=1e-5)  # 2 e^-t = 0.5


@pytest.mark.parametrize("gradient", ["checkpoint", "adjoint"])
def test_checkpointed_or_adjoint_block_in_inference_compiles_whole(gradient):
    """With nothing to differentiate the checkpointed and the adjoint block's solve is odeint's,
    which reads no tensor for a fixed grid: one graph, as a backprop block."""
    block = ODEBlock(ConvField(), method="rk4", step_size=STEP_SIZE, gradient=gradient)
    x = randn(2, 8, 6, 6, seed=2)
    with torch.no_grad():
        assert dynamo.explain(block)(x).graph_break_count == 0
        assert_close(torch.compile(block, fullgraph=True)(x), block(x))


@torch._inductor.config.patch(fallback_random=True)
def test_compiled_checkpointed_block_with_dropout_gets_backprops_gradient():
    """With inductor drawing random numbers as eager does (docs/composability.md), compiled
    backprop sees the masks the checkpointed solve (eager inside the compiled block) draws in its
    forward pass and again in its retaken steps."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.2), torch.nn.Tanh(), torch.nn.Linear(16, 8))
    y0 = randn(4, 8, seed=3, requires_grad=True)
    leaves = (y0, *net.parameters())

    def run(gradient):
        block = torch.compile(ODEBlock(lambda t, y: net(y), method="rk4", step_size=STEP_SIZE, gradient=gradient))
        torch.manual_seed(5)
        out = block(y0)
        return out, torch.autograd.grad(out.sum(), leaves)

    (out, grads), (ref_out, ref_grads) = run("checkpoint"), run("backprop")
    assert_close(out, ref_out)
    for g, r in zip(grads, ref_grads):
        assert_close(g, r)


def test_compiled_solve_raises_on_a_non_finite_solution():
    blow_up = lambda t, y: y * 1e30  # noqa: E731
    compiled = torch.compile(lambda y: odekern.odeint(blow_up, y, [0.0, 1.0], method="euler",
                                                      options={"step_size": 0.25}), fullgraph=True)
    with pytest.raises(RuntimeError, match="non-finite"):
        compiled(torch.ones(3))


def test_python_times_are_validated():
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
        odekern.odeint(lambda t, y: -y, torch.ones(2), [0.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="finite real numbers"):
        odekern.odeint(lambda t, y: -y, torch.ones(2), [0.0, float("nan")])
    backward = odekern.odeint(lambda t, y: -y, torch.ones(2), [1.0, 0.0], method="rk4", options={"step_size": 0.1})
    assert_close(backward[-1], torch.full((2,), torch.e), kind="cross", rtol=1e-5)


FIRST_SOLVE = """
import torch, torch._dynamo as dynamo, odekern
field = torch.nn.Conv2d(2, 2, 3, padding=1)
y0 = torch.randn(1, 2, 6, 6)
for method in ("euler", "rk4"):
    solve = lambda y: odekern.odeint(lambda t, z: torch.tanh(field(z)), y, [0.0, 1.0], method=method,
                                     options={"step_size": 0.25})
    reasons = [r.reason for r in dynamo.explain(solve)(y0).break_reasons]
    assert not reasons, (method, reasons)
print("ok")
"""


def test_the_first_solve_of_a_process_compiles_whole():
    """In a fresh process nothing is cached yet: a solver's coefficients as floats must not come
    from a lazy cache such as functools.cached_property, whose lock (Python 3.11) dynamo cannot
    trace, or the first solve inside torch.compile breaks the graph (an error with fullgraph=True)."""
    done = subprocess.run([sys.executable, "-c", FIRST_SOLVE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
