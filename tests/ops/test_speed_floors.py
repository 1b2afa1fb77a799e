"""The speed floors of the nmODE benchmarks (tests/native, bench/ops/bench_nmode_solve.py) compute
what they claim: ``reps`` chained evaluations of the RHS's transcendental per element, the same
values as torch's own sin, and dopri5 attempts on the adjoint system, the same values as the
pure-PyTorch reference's steps (a floor that skipped work would make every ratio to it look
bad)."""

import pytest
import torch

import odekern
from odekern.ops.nmode_solve import reference
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


@pytest.mark.parametrize("control", [False, True])
def test_adjoint_attempt_floor_takes_dopri5_steps(testing_ops, control):
    """Every attempt is a whole dopri5 step of the adjoint system from [v, 1, 0] at g = 0 with
    step 1e-3 (accepted: the controller, when run, must not change the state); 2.5 attempts on
    average over blocks of 64 lanes run 2 in the first block and 3 in the second."""
    x = randn(128, dtype=torch.float64, scale=2.0)
    g = torch.zeros_like(x)

    def steps(v, n):
        state = (v, torch.ones_like(v), torch.zeros_like(v))
        return reference.solve_list(lambda s: reference.adjoint_rhs(s, g[: v.numel()]), state, [1e-3] * n, 1.0,
                                    "dopri5")[1]

    got = testing_ops.nmode_adjoint_attempt_floor(x, 2.5, control)
    assert_close(got[:64], steps(x[:64], 2), rtol=1e-13, atol=1e-15)
    assert_close(got[64:], steps(x[64:], 3), rtol=1e-13, atol=1e-15)
    assert not torch.equal(got[:64], steps(x[:64], 3)[:64])
