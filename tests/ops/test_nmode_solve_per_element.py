"""dopri5 with control="per_element" on the CPU backend: the block-vectorised lanes
(csrc/ops/nmode_solve/nmode_solve_cpu_per_element.h) against the header's scalar per-element
solver, which runs each element alone (nmode_pe_scalar_reference of the test extension,
tests/native), and against the pure-PyTorch reference.

The lanes do per element the scalar solver's arithmetic, except that the controller's
pow(ratio, 1/5) is a polynomial + Newton fifth root (libm's pow does not vectorise). That moves
a step size by about an ulp of a double: float32 states never see it (T(dt) rounds it away),
so float32 is compared bit for bit; float64 agrees to rounding level (VECTORISED_VS_SCALAR_REL_FP64).
Sizes are not multiples of the block (32 lanes) nor of the forward's tasks (runs of elements whose
lanes are refilled as elements finish); y0 and g mix magnitudes so that lanes of one block need
very different numbers of steps (and some blocks exceed the backward's per-segment record of 64
attempts, so the segment replay runs).
"""

from __future__ import annotations

import pytest
import torch

import odekern
from odekern.ops.nmode_solve import reference
from odekern.testing import VECTORISED_VS_SCALAR_REL_FP64, assert_close, randn

pytestmark = pytest.mark.skipif(odekern.backends()["cpu"] is not True, reason="needs the C++ extension")


@pytest.fixture(autouse=True)
def _scalar_oracle(testing_ops):
    """The scalar solver lives in the test extension (built on first use)."""


MAX_STEPS = 10**6


def _mixed_inputs(n: int, g_n: int, dtype: torch.dtype, seed: int = 0):
    """y0 [n] and g [g_n] (n % g_n == 0) with magnitudes from 1e-3 to 30, so that step counts
    differ a lot between neighbouring lanes."""
    scales = torch.tensor([1e-3, 0.1, 1.0, 5.0, 30.0], dtype=torch.float64)
    y0 = randn(n, dtype=torch.float64, seed=seed) * scales[torch.arange(n) % 5]
    g = randn(g_n, dtype=torch.float64, seed=seed + 1) * scales[(torch.arange(g_n) * 3) % 5]
    return y0.to(dtype), g.to(dtype)


def _scalar(y0, g, t1, rtol, atol, gy1, gf0=None, gf1=None):
    y1, gy0, gg = torch.ops.odekern_testing.nmode_pe_scalar_reference(y0, g, 0.0, t1, rtol, atol, MAX_STEPS,
                                                                       gy1, gf0, gf1)
    return y1, gy0, gg.view(-1, g.numel()).sum(0)


def _vectorised(y0, g, t1, rtol, atol, gy1, gf0=None, gf1=None):
    """The CPU backend's op (y1, f0, f1) and its exact gradients for the given cotangents."""
    a = y0.view(-1, g.numel()).clone().requires_grad_(True)  # [R, G] against g [1, G]
    b = g.view(1, -1).clone().requires_grad_(True)
    y1, f0, f1 = odekern.nmode_solve(a, b, 0.0, t1, method="dopri5", control="per_element", rtol=rtol,
                                     atol=atol, gradient="checkpoint", return_f=True, backend="cpu")
    y1, f0, f1 = y1.reshape(-1), f0.reshape(-1), f1.reshape(-1)
    loss = (y1 * gy1).sum()
    if gf0 is not None:
        loss = loss + (f0 * gf0).sum() + (f1 * gf1).sum()
    ga, gb = torch.autograd.grad(loss, (a, b))
    return y1.detach(), ga.reshape(-1), gb.reshape(-1)


def _same(actual, expected, dtype, what):
    if dtype == torch.float32:
        assert torch.equal(actual, expected), (
            f"{what}: float32 lanes differ from the scalar solver, max |diff| "
            f"{(actual - expected).abs().max().item():.3e}")
    else:
        scale = max(expected.abs().max().item(), 1.0)
        assert_close(actual, expected, rtol=0.0, atol=VECTORISED_VS_SCALAR_REL_FP64 * scale, msg=what)


# (n, g_n, t1, rtol, atol): CNM setting on odd sizes (incl. one element and a block plus one);
# a long tight solve whose lanes need 10 to several hundred attempts (segment replays).
SETTINGS = {
    "cnm-odd": (3 * 37, 37, 0.05, 1e-7, 1e-9),
    "one-element": (1, 1, 0.05, 1e-7, 1e-9),
    "block-plus-one": (33, 33, 0.05, 1e-7, 1e-9),
    "long-tight": (2 * 45, 45, 3.0, 1e-9, 1e-11),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_lanes_match_the_scalar_solver(setting, dtype):
    n, g_n, t1, rtol, atol = SETTINGS[setting]
    y0, g = _mixed_inputs(n, g_n, dtype)
    gy1 = randn(n, dtype=dtype, seed=7)
    want = _scalar(y0, g, t1, rtol, atol, gy1)
    got = _vectorised(y0, g, t1, rtol, atol, gy1)
    for a, w, what in zip(got, want, ("y(t1)", "grad y0", "grad g")):
        _same(a, w, dtype, f"{setting} {what}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_f_outputs_and_their_cotangents_match_the_scalar_solver(dtype):
    n, g_n, t1, rtol, atol = SETTINGS["cnm-odd"]
    y0, g = _mixed_inputs(n, g_n, dtype, seed=3)
    gy1, gf0, gf1 = (randn(n, dtype=dtype, seed=s) for s in (11, 12, 13))
    want = _scalar(y0, g, t1, rtol, atol, gy1, gf0, gf1)
    got = _vectorised(y0, g, t1, rtol, atol, gy1, gf0, gf1)
    for a, w, what in zip(got, want, ("y(t1)", "grad y0", "grad g")):
        _same(a, w, dtype, what)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_refilled_lanes_over_several_tasks_match_the_scalar_solver(dtype):
    """The forward runs tasks (runs of up to 4,096 elements, at least 4 lanes' worth, about 8
    per thread for a small state) whose lanes take the next element as soon as theirs finishes:
    8,331 elements make several tasks with a short last one on any thread count; y(t1), f(t0)
    and f(t1) of every element are compared. Each element's arithmetic is its lane's alone, so
    float32 is bit for bit."""
    n, g_n = 3 * 2777, 2777
    y0, g = _mixed_inputs(n, g_n, dtype, seed=4)
    want_y1 = _scalar(y0, g, 0.05, 1e-7, 1e-9, torch.zeros(n, dtype=dtype))[0]
    y1, f0, f1 = odekern.nmode_solve(y0.view(-1, g_n), g.view(1, g_n), 0.0, 0.05, control="per_element",
                                     rtol=1e-7, atol=1e-9, return_f=True, backend="cpu")
    _same(y1.reshape(-1), want_y1, dtype, "y(t1)")
    # f is the C++ polynomial sin^2, the reference torch's sin: equal to rounding, and any
    # element written to another's place would be far off.
    gr = g.repeat(n // g_n)
    assert_close(f0.reshape(-1), reference.rhs(y0, gr), msg="f(t0)")
    assert_close(f1.reshape(-1), reference.rhs(want_y1, gr), msg="f(t1)")


def test_lanes_match_the_pytorch_reference():
    """Independent of the C++ header: the pure-PyTorch per-element solver (torch's own sin)."""
    n, g_n, t1, rtol, atol = SETTINGS["cnm-odd"]
    y0, g = _mixed_inputs(n, g_n, torch.float64, seed=5)
    kw = dict(method="dopri5", control="per_element", rtol=rtol, atol=atol)
    y0, g = y0.view(-1, g_n), g.view(1, g_n)
    want = odekern.nmode_solve(y0, g, 0.0, t1, backend="reference", **kw)
    got = odekern.nmode_solve(y0, g, 0.0, t1, backend="cpu", **kw)
    assert_close(got, want)


def test_more_attempts_than_the_backward_record_falls_back_to_the_scalar_path():
    """A block needing more than 64 * 32 attempts (the last lane here takes ~3100) runs the
    scalar pe_solve_vjp: its gradients are then the scalar solver's bit for bit, in float64
    too (the lanes' own float64 gradients would differ at rounding level, see the docstring)."""
    y0, g = _mixed_inputs(5, 5, torch.float64, seed=9)
    gy1 = torch.ones(5, dtype=torch.float64)
    want = _scalar(y0, g, 40.0, 1e-15, 1e-17, gy1)
    got = _vectorised(y0, g, 40.0, 1e-15, 1e-17, gy1)
    _same(got[0], want[0], torch.float64, "y(t1)")
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])


def test_too_many_steps_raises():
    y0, g = _mixed_inputs(40, 40, torch.float32)
    with pytest.raises(RuntimeError, match="max_num_steps"):
        odekern.nmode_solve(y0, g, 0.0, 0.05, control="per_element", max_num_steps=2, backend="cpu")
