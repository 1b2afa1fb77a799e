"""nmode_solve under torch.compile(fullgraph=True): no graph break, results and gradients equal
to eager, and the same errors as eager (the finiteness check runs inside the custom op)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo

import odekern
from odekern.testing import randn

SETTINGS = [dict(), dict(method="rk4", step_size=0.01), dict(control="per_element"),
            dict(gradient="adjoint")]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    dynamo.reset()
    yield
    dynamo.reset()


@pytest.mark.parametrize("kw", SETTINGS, ids=lambda k: "-".join(map(str, k.values())) or "dopri5")
def test_compiles_without_graph_breaks_and_matches_eager(kw):
    y0, g = randn(2, 3, 8, 8, seed=0), randn(1, 3, 8, 8, seed=1)
    solve = lambda y, g: odekern.nmode_solve(y, g, 0.0, 0.05, **kw)  # noqa: E731
    assert dynamo.explain(solve)(y0, g).graph_break_count == 0
    compiled = torch.compile(solve, fullgraph=True)
    results = []
    for fn in (compiled, solve):
        y, gg = y0.clone().requires_grad_(), g.clone().requires_grad_()
        out = fn(y, gg)
        out.square().sum().backward()
        results.append((out.detach(), y.grad, gg.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_compiled_solve_raises_like_eager_on_non_finite_input(backend):
    g = randn(1, 3, 4, 4, seed=2)
    compiled = torch.compile(lambda y: odekern.nmode_solve(y, g, 0.0, 0.05, backend=backend), fullgraph=True)
    with pytest.raises(ValueError, match="y0 contains non-finite"):
        compiled(torch.full((2, 3, 4, 4), float("nan")))
