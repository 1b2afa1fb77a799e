"""``tools.gpucheck``: odekern's GPU code lowers for sm_80 and sm_90 without spills, and the
check itself can fail (a broken .cu, a spilling kernel, an unlisted Triton kernel).

The repository checks compile for real: nvcc for every csrc/**/*.cu, and Triton's AOT
compiler (in a child interpreter with TRITON_INTERPRET=0) for every ``*_kernel`` of
odekern/ops/*/triton.py, one variant per kernel (``quick``; the CLI compiles all variants).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tools import gpucheck

TARGETS = ["sm_80", "sm_90"]
NMODE_TRITON_KERNELS = {
    "_nmode_list_fwd_kernel", "_nmode_list_bwd_kernel", "_nmode_global_init_kernel",
    "_nmode_global_d2_kernel", "_nmode_global_attempt_kernel", "_nmode_pe_fwd_kernel",
    "_nmode_pe_bwd_kernel", "_nmode_adjoint_bwd_kernel",
}
NMODE_CU = os.path.join(gpucheck.ROOT, "csrc", "ops", "nmode_solve", "nmode_solve_cuda.cu")


def _nvcc() -> str | None:
    return gpucheck.DEFAULT_NVCC if os.path.exists(gpucheck.DEFAULT_NVCC) else shutil.which("nvcc")


needs_nvcc = pytest.mark.skipif(_nvcc() is None, reason="nvcc not installed (CUDA toolkit missing)")


def _assert_clean(results, kind):
    for r in results:
        assert r.error is None, f"{r.kind} {r.kernel} [{r.variant}] {r.target} failed:\n{r.error}"
        for field in ("regs", "spill_stores", "spill_loads", "stack", "smem"):
            assert isinstance(getattr(r, field), int), f"{r.kernel} {r.target}: {field} did not parse"
        assert 0 < r.regs <= 255, f"{r.kernel} {r.target}: implausible register count {r.regs}"
        assert r.spills == 0, (f"{r.kind} {r.kernel} [{r.variant}] {r.target} spills "
                               f"{r.spill_stores} B / {r.spill_loads} B")
    assert all(r.kind == kind for r in results)


# ------------------------------------------------------------------------ the check's logic

PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z6kernelIfEvPT_i' for 'sm_80'
ptxas info    : Function properties for _Z6kernelIfEvPT_i
    16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 1024 bytes smem, 368 bytes cmem[0]
ptxas info    : Function properties for _Z6helperv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function 'other' for 'sm_80'
ptxas info    : Function properties for other
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 7 registers, 360 bytes cmem[0]
"""


def test_parse_ptxas_log_per_entry_function():
    stats = gpucheck.parse_ptxas_log(PTXAS_LOG)
    assert set(stats) == {"_Z6kernelIfEvPT_i", "other"}  # the device function is no entry
    assert stats["_Z6kernelIfEvPT_i"] == {"regs": 40, "stack": 16, "spill_stores": 8,
                                          "spill_loads": 12, "smem": 1024}
    assert stats["other"] == {"regs": 7, "stack": 0, "spill_stores": 0, "spill_loads": 0, "smem": 0}


def test_failures_report_errors_spills_and_emptiness():
    ok = gpucheck.KernelResult("cuda", "k", "sm_80", "a.cu", 10, 0, 0, 0, 0)
    spill = gpucheck.KernelResult("cuda", "s", "sm_90", "a.cu", 255, 4, 8, 16, 0)
    broken = gpucheck.KernelResult("triton", "b", "sm_80", "fp32", error="boom")
    assert gpucheck.failures([ok]) == []
    assert any("spills" in w for w in gpucheck.failures([ok, spill]))
    assert gpucheck.failures([ok, spill], allow_spills=True) == []
    assert any("boom" in w for w in gpucheck.failures([ok, broken], allow_spills=True))
    assert gpucheck.failures([]) == ["no GPU kernel found (no Triton kernel and no .cu file)"]
    table = gpucheck.format_table([ok, broken])
    assert "| cuda | k | a.cu | sm_80 | 10 | 0/0 | 0 | 0 |" in table and "FAILED: boom" in table


def test_json_is_written_atomically(tmp_path):
    path = tmp_path / "out" / "gpucheck.json"
    rows = [gpucheck.KernelResult("cuda", "k", "sm_80", "a.cu", 10, 0, 0, 0, 0)]
    gpucheck.write_json(str(path), rows)
    assert json.loads(path.read_text())[0]["regs"] == 10
    assert os.listdir(path.parent) == ["gpucheck.json"]  # no temp file left behind


# ----------------------------------------------------------------- the check can fail (nvcc)

@needs_nvcc
def test_broken_cu_fails_and_good_cu_is_measured(tmp_path, capsys):
    (tmp_path / "good.cu").write_text(
        "__global__ void scale_kernel(float* y, const float* x, int n) {\n"
        "  int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
        "  if (i < n) y[i] = 2.0f * sinf(x[i]);\n}\n")
    (tmp_path / "broken.cu").write_text("__global__ void broken_kernel(float* y) { y[0] = ; }\n")
    code = gpucheck.main(["--only", "cuda", "--csrc", str(tmp_path), "--targets", "sm_80",
                          "--nvcc", _nvcc(), "--json", str(tmp_path / "r.json")])
    assert code == 1
    assert "FAILED" in capsys.readouterr().err
    rows = json.loads((tmp_path / "r.json").read_text())
    by_file = {os.path.basename(r["variant"]): gpucheck.KernelResult(**r) for r in rows}
    assert len(rows) == 2
    assert by_file["broken.cu"].error and "nvcc exit" in by_file["broken.cu"].error
    good = by_file["good.cu"]
    assert good.error is None and good.kernel == "scale_kernel" and good.regs > 0
    assert good.spills == 0


# ------------------------------------------------------------------ the repository's kernels

@pytest.mark.slow
@needs_nvcc
def test_repository_cuda_kernels_compile_for_sm80_and_sm90_without_spills():
    sources = gpucheck.cuda_sources()
    assert NMODE_CU in sources, f"expected the nmode_solve CUDA kernels in {NMODE_CU}"
    results = gpucheck.run(TARGETS, triton=False, nvcc=_nvcc())
    _assert_clean(results, "cuda")
    for src in sources:
        rel = os.path.relpath(src, gpucheck.ROOT)
        for t in TARGETS:
            assert any(r.variant == rel and r.target == t for r in results), f"{rel} {t} missing"
    nmode = {(r.kernel, r.target) for r in results if "nmode" in r.kernel}
    assert {t for _, t in nmode} == set(TARGETS), "no nmode CUDA kernel measured for some target"


@pytest.mark.slow
def test_repository_triton_kernels_compile_for_sm80_and_sm90_without_spills():
    results = gpucheck.run(TARGETS, cuda=False, quick=True)
    found = {r.kernel for r in results}
    assert NMODE_TRITON_KERNELS <= found, f"missing Triton kernels: {NMODE_TRITON_KERNELS - found}"
    _assert_clean(results, "triton")
    for kernel in found:
        assert {r.target for r in results if r.kernel == kernel} == set(TARGETS), kernel
