"""Host synchronisations per step, counted as reads of a tensor value on the host
(``aten._local_scalar_dense``, what ``.item()``, ``float()``, ``bool()`` and ``.tolist()`` call):
on a GPU each one stalls the host until the device has caught up.

Fixed-grid solves read nothing per step (NaN/inf is checked once, on the final state; step sizes
are read once) and add no reduction over the state per step, in every gradient mode, backward
passes included; adaptive solves read at most one value per step attempt (the accept decision),
as torchdiffeq does.
"""

from __future__ import annotations

import pytest
import torch

import odekern
import odekern.solvers.registry
from odekern.testing import OpCounter, randn

SCALAR_READ = "aten._local_scalar_dense"


class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, t, y):
        return torch.tanh(self.conv(y)) * torch.cos(t)


def _reads(method, options, grad, gradient="odeint", **kw):
    y0 = randn(2, 4, 8, 8, seed=1).requires_grad_(grad)
    field = Field()
    adaptive = method in odekern.solvers.registry.ADAPTIVE_METHODS
    with torch.set_grad_enabled(grad), OpCounter() as ops:
        result = odekern.odeint(field, y0, torch.tensor([0.0, 0.5, 1.0]), method=method,
                                options={**options, "on_max_steps": "return"} if adaptive else options, **kw)
    attempts = result[1].n_steps + result[1].n_rejected if adaptive else round(1.0 / options["step_size"])
    return ops.counts[SCALAR_READ], attempts


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4", "explicit_adams"])
@pytest.mark.parametrize("grad", [False, True])
def test_fixed_grid_solves_read_nothing_per_step(method, grad):
    coarse, n_coarse = _reads(method, {"step_size": 0.1}, grad)
    fine, n_fine = _reads(method, {"step_size": 0.01}, grad)
    assert n_fine > 5 * n_coarse
    assert fine == coarse, f"{fine - coarse} more host reads for {n_fine - n_coarse} more steps"


@pytest.mark.parametrize("method", ["implicit_adams", "fixed_adams"])
def test_adams_corrector_reads_one_value_per_iteration(method):
    # The Moulton corrector's convergence test is a decision per iteration, read on the host as
    # torchdiffeq reads it; nothing else is read per step. A tight tolerance makes it iterate.
    max_iters = 3
    options = {"max_iters": max_iters}
    coarse, n_coarse = _reads(method, {**options, "step_size": 0.1}, False, rtol=1e-10, atol=1e-12)
    fine, n_fine = _reads(method, {**options, "step_size": 0.01}, False, rtol=1e-10, atol=1e-12)
    assert fine > coarse, "the corrector's convergence test was not read"
    assert fine - coarse <= max_iters * (n_fine - n_coarse)


def _block_reads(gradient, method, step_size):
    """Host reads of an ODEBlock's forward and of its backward, in a gradient mode."""
    block = odekern.ODEBlock(Field(), method=method, options={"step_size": step_size}, gradient=gradient)
    x = randn(2, 4, 8, 8, seed=1).requires_grad_(True)
    with OpCounter() as forward:
        out = block(x)
    with OpCounter() as backward:
        out.sum().backward()
    return forward.counts[SCALAR_READ], backward.counts[SCALAR_READ]


@pytest.mark.parametrize("gradient", ["backprop", "adjoint", "checkpoint"])
@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_fixed_grid_gradient_modes_read_nothing_per_step(gradient, method):
    # 10 steps against 100; the checkpoint mode's backward recomputes steps from its stored
    # states, and neither those nor the recorded steps may read a value.
    coarse, fine = _block_reads(gradient, method, 0.1), _block_reads(gradient, method, 0.01)
    assert fine == coarse, f"host reads (forward, backward): {coarse} for 10 steps, {fine} for 100"


def _reductions(method, step_size):
    y0 = randn(2, 4, 8, 8, seed=1)
    with torch.no_grad(), OpCounter() as ops:
        odekern.odeint(Field(), y0, torch.tensor([0.0, 0.5, 1.0]), method=method, options={"step_size": step_size})
    return sum(n for name, n in ops.counts.items() if name in ("aten.sum", "aten.isfinite", "aten.all"))


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4", "explicit_adams"])
def test_fixed_grid_solves_check_finiteness_once_not_per_step(method):
    # The RHS (conv, tanh, cos) has no reduction of its own: every one counted is the solver's.
    coarse, fine = _reductions(method, 0.1), _reductions(method, 0.01)
    assert coarse >= 1, "the final state is not checked"
    assert fine == coarse, f"{fine - coarse} more reductions for 90 more steps"


def test_adaptive_solves_read_at_most_one_value_per_step_attempt():
    loose, n_loose = _reads("dopri5", {}, False, rtol=1e-3, atol=1e-5)
    tight, n_tight = _reads("dopri5", {}, False, rtol=1e-8, atol=1e-10)
    assert n_tight > n_loose + 5
    assert tight - loose <= n_tight - n_loose
