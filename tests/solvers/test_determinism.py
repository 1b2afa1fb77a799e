"""Results do not depend on the number of CPU threads.

Step sizes come from error norms; a float32 reduction's rounding depends on how it is split
across threads, so the norms accumulate in float64 and the same steps are taken. The sizes
straddle ATen's parallel-reduction grain (32768 elements), where a float32 RMS differed between
1 and 2 threads by 1.5e-5 in the solution (100k elements).
"""

from __future__ import annotations

import pytest
import torch

import odekern
from odekern.testing import randn


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("n", [40_000, 100_000])
def test_dopri5_float32_is_bit_identical_across_thread_counts(restore_threads, n, grad):
    y0 = randn(n, seed=0)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        y = y0.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            out = odekern.odeint(lambda t, x: -x * torch.sin(x) + torch.cos(t), y, torch.tensor([0.0, 1.0]))
        results.append(out.detach())
    assert torch.equal(results[0], results[1])
