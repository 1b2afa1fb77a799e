"""Every CUDA kernel of rk_stage (combine with and without base, fused final combination +
error ratio, error ratio, the deterministic finalize reduction), every NK instantiation
1..13, float32 and float64, executed on CPU by the emulation over the real launch geometry
(256 threads, up to 4096 blocks, warp-shuffle block sums) against reference.py; plus the
size past 4096 blocks where the launch switches to grid-stride loops, chunked k lists
(> kMaxK) and the in-place update."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import DTYPES, RK_GRID_STRIDE_SIZE, RK_KINDS, RK_NKS, RK_SIZES, rk_check

from odekern.ops.rk_stage import reference as rk_ref
from odekern.testing import assert_close, randn


@pytest.mark.parametrize("n", RK_SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp64", "fp32"])
@pytest.mark.parametrize("nk", RK_NKS)
@pytest.mark.parametrize("kind", RK_KINDS)
def test_rk_stage_cuda_kernels_match_reference(emu, kind, nk, dtype, n):
    rk_check(emu, kind, nk, dtype, n)


@pytest.mark.parametrize("kind", ["combine", "error_ratio"])  # one per kernel
def test_grid_stride_beyond_max_blocks(emu, kind):
    rk_check(emu, kind, 7, torch.float32, RK_GRID_STRIDE_SIZE)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp64", "fp32"])
def test_more_k_than_kmaxk_folds_in_chunks_in_place(emu, dtype):
    n, nk = 300, 16
    y = randn(n, dtype=dtype)
    ks = [randn(n, dtype=dtype, seed=j + 1) for j in range(nk)]
    coeffs = [0.05 * (j - 7) for j in range(nk)]
    want = rk_ref.rk_combine(y, ks, coeffs)
    emu.rk_combine_out(y, ks, coeffs, y)  # out is y: the update happens in place
    assert_close(y, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp64", "fp32"])
def test_combine_rounds_into_the_base_once(emu, dtype):
    eps = torch.finfo(dtype).eps  # as tests/ops/test_rk_stage.py's test of the same name
    y = torch.ones(300, dtype=dtype)
    out = torch.full_like(y, float("nan"))
    emu.rk_combine_out(y, [torch.ones_like(y)] * 4, [0.4 * eps] * 4, out)
    assert torch.equal(out, torch.full_like(y, 1 + 2 * eps))


def test_no_stages_copies_or_zeroes_without_a_kernel(emu):
    y = randn(37, dtype=torch.float64)
    out = torch.full_like(y, float("nan"))
    emu.rk_combine_out(y, [], [], out)
    assert torch.equal(out, y)
    emu.rk_combine_out(None, [], [], out)
    assert torch.equal(out, torch.zeros_like(y))
    before = y.clone()
    emu.rk_combine_out(y, [], [], y)  # out is y: nothing to do
    assert torch.equal(y, before)
