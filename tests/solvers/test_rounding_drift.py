"""Rounding error accumulated over many fixed-grid steps: odekern's is no larger than
torchdiffeq's, on every backend, for tensor and tuple states and in low precision.

Each step's solution is y0 + dy with the increment dy summed first (csrc/ops/rk_stage/rk_stage.h
says why); adding the stage terms onto y0 one at a time rounds at y's magnitude once per term,
in the same direction step after step (rk4, float32, 200 steps: 4x torchdiffeq's error; in
float16 3x). Errors are measured against the same method run in float64 by torchdiffeq, so only
rounding separates the solutions."""

import warnings

import pytest
import torch
import torchdiffeq

import odekern
from odekern import testing

pytestmark = pytest.mark.usefixtures("one_thread")

# Adams through implicit_adams: explicit_adams' high orders amplify rounding at these steps, so
# its float32 and float64 solutions differ by ~1e-2 in both libraries and the errors are noise.
METHODS = ["rk4", "heun3", "implicit_adams"]
# odekern's rounding error may exceed torchdiffeq's by this factor (float32: both round the same
# operations, so the errors agree to a few percent); in float16/bfloat16 testing's low-precision
# rule applies.
FLOAT32_FACTOR = 1.5


def _matrix(dtype):
    return torch.randn(3, 3, generator=torch.Generator().manual_seed(5)).to(dtype)


def _func(t, y):
    if isinstance(y, tuple):
        return tuple(torch.tanh(part @ _matrix(part.dtype)) for part in y)
    return torch.tanh(y @ _matrix(y.dtype))


def _errors(y0, method, steps, dtype):
    t = torch.tensor([0.0, 1.0])
    options = dict(step_size=1.0 / steps)
    as_double = tuple(p.double() for p in y0) if isinstance(y0, tuple) else y0.double()
    exact = torchdiffeq.odeint(_func, as_double, t.double(), method=method, options=options)
    cast = tuple(p.to(dtype) for p in y0) if isinstance(y0, tuple) else y0.to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float16 Adams may not converge in torchdiffeq
        theirs = torchdiffeq.odeint(_func, cast, t, method=method, options=options)
    ours = odekern.odeint(_func, cast, t, method=method, options=options)

    def error(ys):
        if isinstance(ys, tuple):
            return sum((a[-1].double() - b[-1]).abs().mean().item() for a, b in zip(ys, exact))
        return (ys[-1].double() - exact[-1]).abs().mean().item()

    return error(ours), error(theirs)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("tuple_state", [False, True], ids=["tensor", "tuple"])
def test_float32_rounding_over_many_steps_is_torchdiffeqs(backend, method, tuple_state):
    y0 = testing.randn(64, 3, dtype=torch.float32, seed=1)
    if tuple_state:  # two small components: one foreach operation per term for both
        y0 = (y0, testing.randn(32, 3, dtype=torch.float32, seed=2))
    with odekern.use_backend(backend):
        ours, theirs = _errors(y0, method, 200, torch.float32)
    assert ours <= FLOAT32_FACTOR * theirs, f"{method}: {ours:.3e} against torchdiffeq's {theirs:.3e}"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_rounding_over_the_steps_is_within_the_rule(method, dtype):
    y0 = testing.randn(256, 3, dtype=torch.float32, seed=3)
    ours, theirs = _errors(y0, method, 20, dtype)
    assert ours <= testing.LOW_PRECISION_FACTOR * theirs, (
        f"{method} {dtype}: {ours:.3e} against torchdiffeq's {theirs:.3e}")
