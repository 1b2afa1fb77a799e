"""Each CUDA op run through the emulation and compared with the op's pure-PyTorch reference,
at the backend-contract level (odekern/ops/<op>/config.py): the same arguments go to
``torch.ops.odekern_cuda_emu.<op>`` (the real binding, launchers and kernels) and to
``reference.py``. The parameter lists here are shared by the tests and by the coverage guard,
so what the guard proves reaches every kernel is what the tests check.

Tolerances (odekern.testing): the kernels and the reference run the same algorithm with
different sin implementations, so "rounding" tolerances, with absolute ones scaled by the
magnitude of summed gradients (as tests/ops/test_nmode_solve.py).
"""

from __future__ import annotations

import torch

from odekern.ops.nmode_solve import reference as nmode_ref
from odekern.ops.nmode_solve.config import NmodeConfig
from odekern.ops.rk_stage import reference as rk_ref
from odekern.testing import LOW_PRECISION_FACTOR, assert_close, backend_peak_atol, randn, tol

DTYPES = [torch.float64, torch.float32]

# nmode_solve: (solve kwargs, t1). Fixed grids with a clipped last step; dopri5 under both
# step controls in the CNM setting. Together they launch every nmode kernel.
NMODE_CASES = {
    "euler": (dict(method="euler", step_size=0.1), 0.35),
    "midpoint": (dict(method="midpoint", step_size=0.1), 0.3),
    "rk4": (dict(method="rk4", step_size=0.05), 0.5),
    "rk4_classic": (dict(method="rk4_classic", step_size=0.1), 0.35),
    "dopri5-global": (dict(method="dopri5", rtol=1e-7, atol=1e-9, control="global"), 0.05),
    "dopri5-per_element": (dict(method="dopri5", rtol=1e-7, atol=1e-9, control="per_element"), 0.05),
}
# In float32 the CNM tolerances (1e-7) are below the format's resolution: the per-element
# controller's accept/reject decisions then hinge on rounding, and the kernel and the reference
# (same algorithm, another sin) may pick different step sequences. Tolerances float32 resolves:
FP32_DOPRI5_TOL = dict(rtol=1e-5, atol=1e-7)
GRADIENTS = ["exact", "adjoint"]
# (N, G): one element; odd sizes that leave most of the last 128-thread block idle; a g
# broadcast over repeats (the backward's threads loop over N / G elements each).
NMODE_SIZES = [(1, 1), (129, 129), (7 * 37, 7)]

RK_THREADS, RK_MAX_BLOCKS = 256, 4096  # rk_stage_cuda.cu's launch geometry
# rk_stage: one element (255 idle threads); 3 full blocks and a partial one (the finalize
# reduction over several block partials).
RK_SIZES = [1, 1000]
# Past kMaxBlocks * kThreads elements the launchers stop adding blocks and each thread strides
# over the grid: the size that exercises that split.
RK_GRID_STRIDE_SIZE = RK_MAX_BLOCKS * RK_THREADS + 333
RK_NKS = list(range(1, 14))  # every NK instantiation (kMaxK = 13)
RK_KINDS = ["combine", "combine_no_base", "error_ratio"]


def assert_low_precision_ok(kernel_out: torch.Tensor, ref_low: torch.Tensor, ref_fp64: torch.Tensor) -> None:
    """The 2x rule: |kernel - fp64| <= 2 * |ref_low - fp64| (max norm), plus a float floor."""
    kernel_err = (kernel_out.double() - ref_fp64).abs().max().item()
    ref_err = (ref_low.double() - ref_fp64).abs().max().item()
    floor = torch.finfo(ref_low.dtype).eps
    assert kernel_err <= LOW_PRECISION_FACTOR * ref_err + floor, (
        f"kernel error {kernel_err:.3e} exceeds {LOW_PRECISION_FACTOR}x the reference's "
        f"own {ref_low.dtype} error {ref_err:.3e}"
    )


def nmode_check(emu, case: str, gradient: str, dtype: torch.dtype, n: int, g_count: int) -> None:
    kw, t1 = NMODE_CASES[case]
    if dtype == torch.float32 and kw["method"] == "dopri5":
        kw = dict(kw, **FP32_DOPRI5_TOL)
    cfg = NmodeConfig(gradient=gradient, **kw)
    method, step_size, rtol, atol, control, _, max_steps = cfg.to_args()
    y0 = randn(n, dtype=dtype, seed=n)
    g = randn(g_count, dtype=dtype, seed=n + 1, scale=0.7)
    got = emu.nmode_solve_fwd(y0, g, 0.0, t1, method, step_size, rtol, atol, control, max_steps, True)
    want = nmode_ref.forward(y0, g, 0.0, t1, cfg, True)
    for name, x, r in zip(("y1", "f0", "f1"), got[:3], want[:3]):
        assert_close(x, r, msg=f"{case} {dtype} N={n} G={g_count}: {name}")
    if dtype == torch.float64:
        # The same step sequence. A step size derives from an error estimate that cancels most
        # digits, so it carries rounding differences amplified ~1e8: "cross" tolerances.
        assert got[3][:2].tolist() == want[3][:2].tolist(), f"{case}: steps accepted/rejected differ"
        assert_close(got[3], want[3], kind="cross", msg=f"{case}: stats")
    gy1 = randn(n, dtype=dtype, seed=n + 2)
    gf0 = randn(n, dtype=dtype, seed=n + 3)
    gf1 = randn(n, dtype=dtype, seed=n + 4)
    for grads in ((gy1, gf0, gf1), (gy1, None, None)):  # None: the kernels' nullptr branches
        # The adjoint starts at the forward's y(t1), each implementation at its own.
        y1_got, y1_want = (got[0], want[0]) if gradient == "adjoint" else (None, None)
        got_b = emu.nmode_solve_bwd(*grads, y0, g, y1_got, got[3], 0.0, t1, method, step_size, rtol, atol,
                                    control, gradient, max_steps)
        want_b = nmode_ref.backward(*grads, y0, g, y1_want, want[3], 0.0, t1, cfg)
        if dtype == torch.float32 and control == "per_element" and method == "dopri5":
            # Each element re-derives its float32 step sequence in the backward; the kernel's
            # and the reference's differ by rounding, and the exact gradient follows its own
            # steps: the low-precision rule against the float64 reference instead.
            y1_64 = nmode_ref.forward(y0.double(), g.double(), 0.0, t1, cfg, False)[0]
            want64 = nmode_ref.backward(*(None if x is None else x.double() for x in grads), y0.double(),
                                        g.double(), y1_64 if gradient == "adjoint" else None, want[3], 0.0,
                                        t1, cfg)
            # The rule compares worst errors over a sample; a handful of elements can sit a
            # few ulps apart by chance, so below a warp's worth they get "cross" tolerances
            # against float64 instead.
            for x, r32, r64 in zip(got_b, want_b, want64):
                if x.numel() >= 32:
                    assert_low_precision_ok(x, r32, r64)
                else:
                    kw = tol(torch.float32, "cross")
                    kw["atol"] *= max(1.0, r64.abs().max().item())  # sums over N / G repeats
                    assert_close(x.double(), r64, **kw)
            continue
        for name, x, r in zip(("grad_y0", "grad_g"), got_b, want_b):
            assert_close(x, r, msg=f"{case} {gradient} {dtype} N={n} G={g_count}: {name}", atol=backend_peak_atol(r))
    got_nf = emu.nmode_solve_fwd(y0, g, 0.0, t1, method, step_size, rtol, atol, control, max_steps, False)
    assert_close(got_nf[0], want[0])


def _rk_inputs(n: int, nk: int, dtype: torch.dtype, seed: int = 0):
    y = randn(n, dtype=dtype, seed=seed)
    ks = [randn(n, dtype=dtype, seed=seed + 1 + j) for j in range(nk)]
    coeffs = [0.1 * (j + 1) - 0.27 for j in range(nk)]
    err_coeffs = [0.02 * (j - 2) + 0.001 for j in range(nk)]
    return y, ks, coeffs, err_coeffs


def rk_check(emu, kind: str, nk: int, dtype: torch.dtype, n: int) -> None:
    y, ks, coeffs, err_coeffs = _rk_inputs(n, nk, dtype, seed=nk)
    rtol, atol = 1e-3, 1e-6
    if kind in ("combine", "combine_no_base"):
        base = y if kind == "combine" else None
        out = torch.full_like(y, float("nan"))
        emu.rk_combine_out(base, ks, coeffs, out)
        assert_close(out, rk_ref.rk_combine(base, ks, coeffs), msg=f"{kind} nk={nk} n={n}")
    elif kind == "error_ratio":
        y1 = rk_ref.rk_combine(y, ks, coeffs)
        ratio = emu.rk_error_ratio(y, y1, ks, err_coeffs, rtol, atol)
        want = rk_ref.rk_error_ratio(y, y1, ks, err_coeffs, rtol, atol)
        assert ratio.dtype == torch.float64 and ratio.dim() == 0
        assert_close(ratio, want, msg=f"error_ratio nk={nk} n={n}", **tol(dtype))
    else:
        raise ValueError(f"kind must be one of {RK_KINDS}, got {kind!r}")
