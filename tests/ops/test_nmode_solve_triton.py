"""The Triton backend of nmode_solve, run by Triton's interpreter on CPU tensors
(TRITON_INTERPRET=1, set in tests/conftest.py).

Oracles: the pure-PyTorch reference (same algorithm: rounding tolerances) and torchdiffeq
(different library: cross-library tolerances), plus gradcheck in float64. Shapes are small
and odd (210 elements = one full and one partial 128-lane block) because the interpreter
runs every lane of every block step by step.
"""

from __future__ import annotations


import pytest
import torch

import odekern
from odekern.ops.nmode_solve import reference
from odekern.ops.nmode_solve.config import NmodeConfig
from odekern.testing import (ADJOINT_VS_DISCRETE_ATOL, EXACT_GRADIENT_TOL_FP64, STEP_SIZE_RTOL, assert_close,
                             non_contiguous, randn)

from odekern import dispatch as backends

if backends.availability().get("triton") is not True:
    pytest.skip(f"triton backend unavailable: {backends.availability().get('triton')}",
                allow_module_level=True)

from odekern.ops.nmode_solve import triton as tri
from odekern.ops.nmode_solve.triton import launch as tri_launch

# The interpreter also evaluates the masked-off lanes of a partial block (zeros), where the
# initial-step formula divides 0 by 0 and log2 sees 0; numpy warns, the lanes are discarded.
pytestmark = pytest.mark.filterwarnings(
    "ignore:(invalid value|divide by zero) encountered:RuntimeWarning")

SHAPE = (2, 3, 5, 7)
# (method, solve kwargs, t1). dopri5 on [0, 0.05] with rtol 1e-7, atol 1e-9 is CNM-UNet's
# setting; fixed grids are short (the interpreter's cost is per step), except in
# test_rk4_reference_setting_matches_torchdiffeq (dt = 0.05 over [0, 1]). Grids whose last
# step is clipped (0.35 / 0.1, 1.0 / 0.3) are included on purpose.
CASES = {
    "euler": ("euler", {"step_size": 0.1}, 0.35),
    "midpoint": ("midpoint", {"step_size": 0.1}, 0.3),
    "rk4": ("rk4", {"step_size": 0.05}, 0.2),
    "rk4_classic": ("rk4_classic", {"step_size": 0.3}, 1.0),
    "dopri5_global": ("dopri5", {"control": "global", "rtol": 1e-7, "atol": 1e-9}, 0.05),
    "dopri5_per_element": ("dopri5", {"control": "per_element", "rtol": 1e-7, "atol": 1e-9}, 0.05),
}


def _inputs(dtype, g_shape=(1, 3, 5, 7), requires_grad=False):
    y0 = randn(*SHAPE, dtype=dtype, seed=1, requires_grad=requires_grad)
    g = randn(*g_shape, dtype=dtype, seed=2, requires_grad=requires_grad)
    return y0, g


def _solve(backend, y0, g, case, **extra):
    method, kw, t1 = CASES[case]
    return odekern.nmode_solve(y0, g, 0.0, t1, method=method, backend=backend, **kw, **extra)


# ----------------------------------------------------------------------------------- forward

FWD_PARAMS = ([(c, torch.float64) for c in CASES]
              + [(c, torch.float32) for c in ("rk4", "dopri5_global", "dopri5_per_element")])


@pytest.mark.parametrize("case,dtype", FWD_PARAMS, ids=lambda p: str(p))
def test_forward_and_f_outputs_match_reference(case, dtype):
    y0, g = _inputs(dtype)
    got = _solve("triton", y0, g, case, return_f=True)
    want = _solve("reference", y0, g, case, return_f=True)
    for name, a, b in zip(("y1", "f0", "f1"), got, want):
        assert a.shape == y0.shape and a.dtype == dtype
        assert_close(a, b, msg=f"{case} {name}")


@pytest.mark.parametrize("case", ["rk4", "dopri5_global", "dopri5_per_element"])
def test_direct_forward_stats_match_reference(case):
    """The contract level: same step sequence (stats) as the reference, f outputs optional."""
    method, kw, t1 = CASES[case]
    cfg = NmodeConfig(method=method, **kw)
    y0, g = randn(210, dtype=torch.float64, seed=3), randn(105, dtype=torch.float64, seed=4)
    y1, f0, f1, stats = tri.forward(y0, g, 0.0, t1, cfg, True)
    r_y1, r_f0, r_f1, r_stats = reference.forward(y0, g, 0.0, t1, cfg, True)
    assert stats.dtype == torch.float64 and stats.device.type == "cpu"
    assert stats[:2].tolist() == r_stats[:2].tolist(), "accepted/rejected step counts differ"
    assert_close(stats, r_stats, rtol=STEP_SIZE_RTOL, atol=0.0)
    for a, b in zip((y1, f0, f1), (r_y1, r_f0, r_f1)):
        assert_close(a, b)
    y1_nof, e0, e1, _ = tri.forward(y0, g, 0.0, t1, cfg, False)
    assert e0.numel() == 0 and e1.numel() == 0
    torch.testing.assert_close(y1_nof, y1, rtol=0, atol=0)


def test_global_control_counts_steps_like_torchdiffeq():
    """dopri5 global control is torchdiffeq's controller: same number of accepted steps."""
    torchdiffeq = pytest.importorskip("torchdiffeq", reason="torchdiffeq not installed")
    y0, g = _inputs(torch.float64, g_shape=SHAPE)
    cfg = NmodeConfig(method="dopri5", control="global", rtol=1e-7, atol=1e-9)
    y1, _, _, stats = tri.forward(y0.reshape(-1), g.reshape(-1), 0.0, 0.3, cfg, False)
    calls = []

    def f(t, y):
        calls.append(1)
        return reference.rhs(y, g)

    want = torchdiffeq.odeint(f, y0, torch.tensor([0.0, 0.3], dtype=torch.float64),
                              method="dopri5", rtol=1e-7, atol=1e-9)[-1]
    assert_close(y1.view(SHAPE), want, kind="cross")
    # torchdiffeq: 2 evaluations for the initial step, then 6 per attempt.
    assert (len(calls) - 2) // 6 == int(stats[0] + stats[1])


def test_odd_sizes_empty_and_single_element():
    for case in ("rk4_classic", "dopri5_global", "dopri5_per_element"):
        empty = randn(0, dtype=torch.float64)
        out = _solve("triton", empty, empty.clone(), case)
        assert out.shape == (0,) and out.dtype == torch.float64
    for n in (1, 129):
        y0 = randn(n, dtype=torch.float64, seed=5)
        g = randn(n, dtype=torch.float64, seed=6)
        for case in ("rk4_classic", "dopri5_global", "dopri5_per_element"):
            got = _solve("triton", y0, g, case)
            want = _solve("reference", y0, g, case)
            assert got.shape == (n,)
            assert_close(got, want, msg=f"n={n} {case}")


def test_non_contiguous_input_and_full_g():
    y0, g = _inputs(torch.float64, g_shape=SHAPE)
    y0_nc = non_contiguous(y0)
    got = _solve("triton", y0_nc, g, "rk4")
    assert_close(got, _solve("reference", y0, g, "rk4"))


def test_rk4_reference_setting_matches_torchdiffeq():
    """The issue's fixed-step setting: rk4 (3/8 rule), dt = 0.05 over [0, 1], with f outputs."""
    torchdiffeq = pytest.importorskip("torchdiffeq", reason="torchdiffeq not installed")
    y0, g = _inputs(torch.float64)
    y1, f0, f1 = odekern.nmode_solve(y0, g, 0.0, 1.0, method="rk4", step_size=0.05,
                                     backend="triton", return_f=True)
    want = torchdiffeq.odeint(lambda t, y: reference.rhs(y, g), y0,
                              torch.tensor([0.0, 1.0], dtype=torch.float64), method="rk4",
                              options={"step_size": 0.05})[-1]
    assert_close(y1, want, kind="cross")
    assert_close(f0, reference.rhs(y0, g), kind="cross")
    assert_close(f1, reference.rhs(want, g), kind="cross")


# --------------------------------------------------------------------------------- gradients

def _grads(backend, case, dtype, gradient, g_shape=(1, 3, 5, 7)):
    y0, g = _inputs(dtype, g_shape=g_shape, requires_grad=True)
    y1, f0, f1 = _solve(backend, y0, g, case, return_f=True, gradient=gradient)
    w = [randn(*SHAPE, dtype=dtype, seed=s) for s in (7, 8, 9)]
    loss = (w[0] * y1).sum() + (w[1] * f0).sum() + (w[2] * f1).sum()
    return torch.autograd.grad(loss, (y0, g))


GRAD_PARAMS = ([(c, "checkpoint", torch.float64) for c in CASES]
               + [(c, "adjoint", torch.float64) for c in ("euler", "rk4", "dopri5_global",
                                                          "dopri5_per_element")]
               + [("dopri5_global", "checkpoint", torch.float32), ("rk4_classic", "adjoint", torch.float32)])


@pytest.mark.parametrize("case,gradient,dtype", GRAD_PARAMS, ids=lambda p: str(p))
def test_gradients_match_reference(case, gradient, dtype):
    """grad wrt y0 and the broadcast g (summed over the batch), through y1, f0 and f1."""
    got = _grads("triton", case, dtype, gradient)
    want = _grads("reference", case, dtype, gradient)
    assert got[1].shape == (1, 3, 5, 7)
    for name, a, b in zip(("grad_y0", "grad_g"), got, want):
        assert_close(a, b, msg=f"{case} {gradient} {name}")


@pytest.mark.parametrize("checkpoints", [2, 4])
def test_exact_backward_recomputation_paths(monkeypatch, checkpoints):
    """Few register checkpoints force every recomputation path of the exact backward: with
    C = 2, euler's 7 steps make segments longer than C (each state recomputed from its
    checkpoint); with C = 4, several short segments; per-element dopri5 replays its
    controller once per C accepted steps. Results must not depend on C."""
    monkeypatch.setattr(tri_launch, "REGISTER_CHECKPOINTS", checkpoints)
    y0, g = randn(70, dtype=torch.float64, seed=15), randn(70, dtype=torch.float64, seed=16)
    gy1, gf1 = randn(70, dtype=torch.float64, seed=17), randn(70, dtype=torch.float64, seed=18)
    for cfg, t1 in ((NmodeConfig(method="euler", step_size=0.05), 0.35),
                    (NmodeConfig(method="dopri5", control="per_element", rtol=1e-9, atol=1e-11), 0.1)):
        stats = tri.forward(y0, g, 0.0, t1, cfg, False)[3]
        got = tri.backward(gy1, None, gf1, y0, g, stats, 0.0, t1, cfg)
        want = reference.backward(gy1, None, gf1, y0, g, stats, 0.0, t1, cfg)
        for a, b in zip(got, want):
            assert_close(a, b, msg=f"{cfg.method} C={checkpoints}")


def test_direct_backward_without_f_cotangents():
    """grad_f0/grad_f1 may be None; saved state is y0, g and the stats only."""
    cfg = NmodeConfig(method="dopri5", control="per_element")
    y0, g = randn(70, dtype=torch.float64, seed=10), randn(35, dtype=torch.float64, seed=11)
    gy1 = randn(70, dtype=torch.float64, seed=12)
    _, _, _, stats = tri.forward(y0, g, 0.0, 0.05, cfg, False)
    got = tri.backward(gy1, None, None, y0, g, stats, 0.0, 0.05, cfg)
    want = reference.backward(gy1, None, None, y0, g, stats, 0.0, 0.05, cfg)
    assert got[0].shape == (70,) and got[1].shape == (35,)
    for a, b in zip(got, want):
        assert_close(a, b)


class _Rhs(torch.nn.Module):
    def __init__(self, g):
        super().__init__()
        self.g = g

    def forward(self, t, y):
        return reference.rhs(y, self.g)


def _torchdiffeq_grads(solver, **options):
    y0, g = _inputs(torch.float64, g_shape=SHAPE, requires_grad=True)
    t = torch.tensor([0.0, 0.05], dtype=torch.float64)
    kw = {"adjoint_params": (g,)} if solver.__name__ == "odeint_adjoint" else {}
    y1 = solver(_Rhs(g), y0, t, method="dopri5", rtol=1e-7, atol=1e-9, options=options, **kw)[-1]
    w = [randn(*SHAPE, dtype=torch.float64, seed=s) for s in (7, 8, 9)]
    loss = (w[0] * y1).sum() + (w[1] * reference.rhs(y0, g)).sum() + (w[2] * reference.rhs(y1, g)).sum()
    return torch.autograd.grad(loss, (y0, g))


def test_exact_gradient_is_backprop_through_torchdiffeq():
    """gradient="checkpoint" is backprop through torchdiffeq's odeint on the same steps. torchdiffeq
    also differentiates its initial step size (a function of y0); pinning first_step to ours
    removes that term, and what remains must agree to rounding."""
    torchdiffeq = pytest.importorskip("torchdiffeq", reason="torchdiffeq not installed")
    y0, g = _inputs(torch.float64, g_shape=SHAPE)
    cfg = NmodeConfig(method="dopri5", control="global", rtol=1e-7, atol=1e-9)
    stats = tri.forward(y0.reshape(-1), g.reshape(-1), 0.0, 0.05, cfg, False)[3]
    assert stats[1] == 0, "the pinned first step must be our first accepted step"
    want = _torchdiffeq_grads(torchdiffeq.odeint, first_step=float(stats[3]))
    got = _grads("triton", "dopri5_global", torch.float64, "checkpoint", g_shape=SHAPE)
    for name, a, b in zip(("grad_y0", "grad_g"), got, want):
        assert_close(a, b, msg=name, **EXACT_GRADIENT_TOL_FP64)


def test_adjoint_gradient_matches_torchdiffeq_odeint_adjoint():
    """gradient="adjoint" vs odeint_adjoint (CNM setting): both solve the continuous adjoint
    to rtol 1e-7 with different step control (torchdiffeq: one RMS norm over the whole
    augmented state; here: per element), so they agree to the tolerance (measured: 7e-8
    absolute, the same for the reference backend), not to rounding."""
    torchdiffeq = pytest.importorskip("torchdiffeq", reason="torchdiffeq not installed")
    want = _torchdiffeq_grads(torchdiffeq.odeint_adjoint)
    got = _grads("triton", "dopri5_global", torch.float64, "adjoint", g_shape=SHAPE)
    for name, a, b in zip(("grad_y0", "grad_g"), got, want):
        tol = ADJOINT_VS_DISCRETE_ATOL["global"]
        assert_close(a, b, atol=tol, rtol=tol, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["rk4_classic", "dopri5_global"])
def test_gradcheck_float64(case):
    """Analytic exact gradient vs finite differences (gradcheck's fast mode: one random
    projection, so the interpreter stays quick). Fixed grids: exact. dopri5: finite
    differences also see the step sizes move, which the exact gradient holds fixed by design;
    that term is of the order of the local error (rtol 1e-7), far below atol."""
    method, kw, t1 = CASES[case]
    y0 = randn(2, 2, dtype=torch.float64, seed=13, requires_grad=True)
    g = randn(1, 2, dtype=torch.float64, seed=14, requires_grad=True)

    def fn(y0, g):
        return odekern.nmode_solve(y0, g, 0.0, t1, method=method, backend="triton",
                                   gradient="checkpoint", return_f=True, **kw)

    assert torch.autograd.gradcheck(fn, (y0, g), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


# ------------------------------------------------------------------------- refusals, errors

def test_supports_refuses_with_reasons():
    y0 = torch.zeros(4, dtype=torch.float16)
    reasons = tri.supports(y0=y0, g=y0, cfg=NmodeConfig(method="rk4", step_size=0.1))
    assert reasons and "float16" in reasons[0]
    y64 = torch.zeros(4, dtype=torch.float64)
    assert any("dtype" in r for r in tri.supports(y0=y64, g=torch.zeros(4, dtype=torch.float32)))
    assert any("meta" in r for r in tri.supports(y0=y64, g=torch.zeros(4, dtype=torch.float64,
                                                                      device="meta")))
    assert tri.supports(y0=y64, g=y64, cfg=NmodeConfig()) == []
    listed = backends.refusals("nmode_solve", "triton", y0.device, y0=y0, g=y0, cfg=NmodeConfig())
    assert listed == reasons


def test_forced_triton_backend_refusal_is_an_error():
    # nmode_solve itself solves float16 in float32; the kernels' own refusal, forced, raises.
    from odekern.ops.nmode_solve.op import select_backend

    y0 = torch.zeros(6, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="backend 'triton' was requested.*float16"):
        select_backend(y0, y0, NmodeConfig(), "triton")


@pytest.mark.parametrize("control", ["global", "per_element"])
def test_max_num_steps_exceeded_raises(control):
    y0, g = _inputs(torch.float64)
    with pytest.raises(RuntimeError, match="max_num_steps"):
        odekern.nmode_solve(y0, g, 0.0, 1.0, method="dopri5", control=control, max_num_steps=2,
                            backend="triton")
