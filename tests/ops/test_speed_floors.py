"""The speed floors of the nmODE benchmarks (tests/native, bench/ops/bench_nmode_solve.py) compute
what they claim: ``reps`` chained evaluations of the RHS's transcendental per element, the same
values as torch's own sin (a floor that skipped work would make every ratio to it look bad)."""

import pytest
import torch

import odekern
from odekern.testing import assert_close, randn

pytestmark = pytest.mark.skipif(odekern.backends()["cpu"] is not True, reason="needs the C++ extension")


def _chain(step, x, reps):
    for _ in range(reps):
        x = step(x)
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_floors_are_chained_evaluations(testing_ops, dtype):
    x = randn(3, 67, dtype=dtype, scale=2.0)  # a full and a partial block of lanes
    assert_close(testing_ops.nmode_sin_sq_floor(x, 3), _chain(lambda v: torch.sin(v) ** 2, x, 3))
    # The adjoint RHS's sincos at g = 0: f = -v + sin^2 v and its derivative term sin 2v.
    assert_close(testing_ops.nmode_sincos_floor(x, 3),
                 _chain(lambda v: -v + torch.sin(v) ** 2 + torch.sin(2 * v), x, 3))
