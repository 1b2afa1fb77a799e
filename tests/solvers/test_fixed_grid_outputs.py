"""Where a fixed-grid solve puts its outputs: without a graph, a step that ends on an output time
writes its solution straight into that output's (contiguous) row of the result, so the only
copy into the result is y0's into row 0 (each avoided copy is a pass over the state, 8 MB on a
U-Net-sized feature map). The values are torchdiffeq's, which is the reference here; the rows
that follow are the next steps' inputs, so a row overwritten by a later step would show as a
wrong value.
"""

from __future__ import annotations

import pytest
import torch
import torchdiffeq

import odekern
from odekern.testing import OpObserver, randn


class CopiesIntoResult(OpObserver):
    """Counts copies into the storage of a solve's result (of each component's, for a tuple
    state), recognised by its size: ``rows`` rows of a component (no other tensor of these
    solves has that size)."""

    def __init__(self, rows: int, *components: torch.Tensor):
        super().__init__()
        self.result_bytes = {rows * c.numel() * c.element_size() for c in components}
        self.count = 0

    def _observe(self, func, out) -> None:
        if func.overloadpacket is torch.ops.aten.copy_ and out.untyped_storage().nbytes() in self.result_bytes:
            self.count += 1


def _func(t, y):
    return torch.sin(y) * t - 0.3 * y


# Output times on the grid (step 0.125), decreasing ones included; the last case has an output
# between grid points, which is interpolated into its row (no copy either).
TIMES = {"on-grid": [0.0, 0.5, 1.0], "decreasing": [1.0, 0.25, 0.0], "four": [0.0, 0.125, 0.25, 1.0],
         "between": [0.0, 0.3, 1.0]}


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4", "explicit_adams"])
@pytest.mark.parametrize("times", list(TIMES))
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_outputs_are_written_in_place_and_equal_torchdiffeqs(method, times, memory_format):
    y0 = randn(2, 3, 4, 5, seed=1).contiguous(memory_format=memory_format)
    t = torch.tensor(TIMES[times])
    options = {"step_size": 0.125}
    with torch.no_grad(), CopiesIntoResult(len(t), y0) as copies:
        got = odekern.odeint(_func, y0, t, method=method, options=options)
    with torch.no_grad():
        want = torchdiffeq.odeint(_func, y0, t, method=method, options=options)
    # Rows that are not contiguous (channels_last keeps y0's format) are written by copy, as
    # the fused kernels would otherwise copy into and out of them.
    on_grid = sum((float(x) / options["step_size"]).is_integer() for x in t[1:])
    expected = 1 if memory_format == torch.contiguous_format else 1 + on_grid
    assert copies.count == expected, f"{copies.count} copies into the result, expected {expected}"
    # float32, 8 steps: the fused combinations round differently from torchdiffeq's chains of
    # operations by a few ulps; an overwritten row would be off by the state's own size.
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert got[0].is_contiguous(memory_format=memory_format)


def test_tuple_state_outputs_are_written_in_place():
    y0 = (randn(3, 4, seed=2), randn(5, seed=3))
    t = torch.tensor([0.0, 0.5, 1.0])

    def func(t, y):
        return torch.cos(y[0]) - y[0], -0.5 * y[1]

    for method in ("euler", "rk4"):
        with torch.no_grad(), CopiesIntoResult(len(t), *y0) as copies:
            got = odekern.odeint(func, y0, t, method=method, options={"step_size": 0.125})
        with torch.no_grad():
            want = torchdiffeq.odeint(func, y0, t, method=method, options={"step_size": 0.125})
        assert copies.count == len(y0), f"{copies.count} copies into the result; only y0's into row 0"
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6, msg=method)


def test_recorded_solve_keeps_its_graph():
    # With a graph the steps write no rows in place (autograd needs every step's value): the
    # gradient is torchdiffeq's.
    y0 = randn(6, seed=4, dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    grads = []
    for lib in (odekern, torchdiffeq):
        x = y0.clone().requires_grad_()
        out = lib.odeint(_func, x, t, method="rk4", options={"step_size": 0.125})
        grads.append(torch.autograd.grad(out.sum(), x)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)
