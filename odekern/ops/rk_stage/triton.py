"""Triton kernels of rk_stage: ``_rk_combine_fwd_kernel`` / ``_rk_error_ratio_fwd_kernel``
(math) and ``combine_out`` / ``error_ratio`` (allocation, grid, block size).

Up to MAX_K k tensors per launch (longer combinations are folded in chunks). Coefficients are
passed as a small tensor in the state's dtype rather than as scalar arguments, because Triton
would narrow Python floats to float32 and break float64 solves. The error ratio is reduced
per program into float64 partial sums; only the sum of those partials (one per BLOCK
elements) is left to torch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_K = 13  # rk_stage::kMaxK: dopri8's widest combination (13 stages) in one pass
BLOCK = 1024
KERNEL_DTYPES = (torch.float32, torch.float64)


@triton.jit
def _weighted_k(acc, c_ptr, j: tl.constexpr, k_ptr, offs, mask):
    return acc + tl.load(c_ptr + j) * tl.load(k_ptr + offs, mask=mask, other=0.0)


@triton.jit
def _rk_combine_fwd_kernel(y_ptr, out_ptr, c_ptr, k0, k1, k2, k3, k4, k5, k6,
                           k7, k8, k9, k10, k11, k12, n,
                           NK: tl.constexpr, HAS_BASE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    acc = tl.load(c_ptr + 0) * tl.load(k0 + offs, mask=mask, other=0.0)
    if NK > 1:
        acc = _weighted_k(acc, c_ptr, 1, k1, offs, mask)
    if NK > 2:
        acc = _weighted_k(acc, c_ptr, 2, k2, offs, mask)
    if NK > 3:
        acc = _weighted_k(acc, c_ptr, 3, k3, offs, mask)
    if NK > 4:
        acc = _weighted_k(acc, c_ptr, 4, k4, offs, mask)
    if NK > 5:
        acc = _weighted_k(acc, c_ptr, 5, k5, offs, mask)
    if NK > 6:
        acc = _weighted_k(acc, c_ptr, 6, k6, offs, mask)
    if NK > 7:
        acc = _weighted_k(acc, c_ptr, 7, k7, offs, mask)
    if NK > 8:
        acc = _weighted_k(acc, c_ptr, 8, k8, offs, mask)
    if NK > 9:
        acc = _weighted_k(acc, c_ptr, 9, k9, offs, mask)
    if NK > 10:
        acc = _weighted_k(acc, c_ptr, 10, k10, offs, mask)
    if NK > 11:
        acc = _weighted_k(acc, c_ptr, 11, k11, offs, mask)
    if NK > 12:
        acc = _weighted_k(acc, c_ptr, 12, k12, offs, mask)
    if HAS_BASE:  # the increment first, then y once (rk_stage.h's combine says why)
        acc = tl.load(y_ptr + offs, mask=mask, other=0.0) + acc
    tl.store(out_ptr + offs, acc, mask=mask)


@triton.jit
def _rk_error_ratio_fwd_kernel(y0_ptr, y1_ptr, d_ptr, partial_ptr, k0, k1, k2, k3, k4, k5, k6,
                               k7, k8, k9, k10, k11, k12, n, rtol, atol,
                               NK: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    y0 = tl.load(y0_ptr + offs, mask=mask, other=0.0)
    y1 = tl.load(y1_ptr + offs, mask=mask, other=0.0)
    err = tl.load(d_ptr + 0) * tl.load(k0 + offs, mask=mask, other=0.0)
    if NK > 1:
        err = _weighted_k(err, d_ptr, 1, k1, offs, mask)
    if NK > 2:
        err = _weighted_k(err, d_ptr, 2, k2, offs, mask)
    if NK > 3:
        err = _weighted_k(err, d_ptr, 3, k3, offs, mask)
    if NK > 4:
        err = _weighted_k(err, d_ptr, 4, k4, offs, mask)
    if NK > 5:
        err = _weighted_k(err, d_ptr, 5, k5, offs, mask)
    if NK > 6:
        err = _weighted_k(err, d_ptr, 6, k6, offs, mask)
    if NK > 7:
        err = _weighted_k(err, d_ptr, 7, k7, offs, mask)
    if NK > 8:
        err = _weighted_k(err, d_ptr, 8, k8, offs, mask)
    if NK > 9:
        err = _weighted_k(err, d_ptr, 9, k9, offs, mask)
    if NK > 10:
        err = _weighted_k(err, d_ptr, 10, k10, offs, mask)
    if NK > 11:
        err = _weighted_k(err, d_ptr, 11, k11, offs, mask)
    if NK > 12:
        err = _weighted_k(err, d_ptr, 12, k12, offs, mask)
    scale = atol + rtol * tl.maximum(tl.abs(y0), tl.abs(y1)).to(tl.float64)
    r = tl.where(mask, err.to(tl.float64) / scale, 0.0)
    tl.store(partial_ptr + tl.program_id(0), tl.sum(r * r, axis=0))


def supports(*, y: torch.Tensor, ks, **_) -> list[str]:
    reasons = []
    if y.dtype not in KERNEL_DTYPES:
        reasons.append(f"dtype {y.dtype} not in float32/float64")
    if any(k.dtype != y.dtype for k in ks):
        reasons.append("the k tensors must share the state's dtype")
    return reasons


def supports_error(*, y: torch.Tensor, ks, **kw) -> list[str]:
    reasons = supports(y=y, ks=ks, **kw)
    if not 1 <= len(ks) <= MAX_K:
        reasons.append(f"the fused error pass takes 1..{MAX_K} stages, got {len(ks)}")
    return reasons


def _padded(ks, filler):
    return list(ks) + [filler] * (MAX_K - len(ks))


def _contiguous_target(out):
    return out if out.is_contiguous() else torch.empty_like(out, memory_format=torch.contiguous_format)


def _coeff_tensor(values, like):
    return torch.tensor([float(v) for v in values], dtype=like.dtype, device=like.device)


def combine_out(y, ks, coeffs, out) -> None:
    """``y=None``: no base term."""
    n = out.numel()
    if n == 0:
        return
    target = _contiguous_target(out)
    src = None if y is None else y.contiguous()
    if len(ks) == 0:
        target.copy_(src) if src is not None else target.zero_()
    grid = (triton.cdiv(n, BLOCK),)
    for start in range(0, len(ks), MAX_K):
        chunk = [k.contiguous() for k in ks[start:start + MAX_K]]
        c = _coeff_tensor(coeffs[start:start + MAX_K], out)
        base = chunk[0] if src is None else src  # any valid pointer when HAS_BASE is off
        _rk_combine_fwd_kernel[grid](base, target, c, *_padded(chunk, base), n,
                                     NK=len(chunk), HAS_BASE=src is not None, BLOCK=BLOCK)
        src = target
    if target is not out:
        out.copy_(target)


def error_ratio(y0, y1, ks, err_coeffs, rtol, atol) -> torch.Tensor:
    n = y0.numel()
    if n == 0:
        return torch.zeros((), dtype=torch.float64, device=y0.device)
    y0c = y0.contiguous()
    chunk = [k.contiguous() for k in ks]
    grid = (triton.cdiv(n, BLOCK),)
    partial = torch.empty(grid[0], dtype=torch.float64, device=y0.device)
    _rk_error_ratio_fwd_kernel[grid](y0c, y1.contiguous(), _coeff_tensor(err_coeffs, y0), partial,
                                     *_padded(chunk, y0c), n, float(rtol), float(atol),
                                     NK=len(chunk), BLOCK=BLOCK)
    return (partial.sum() / n).sqrt()


def aot_variants() -> list[dict]:
    """What ``python -m tools.gpucheck`` compiles for sm_80/sm_90: each kernel in float32 and
    float64 at the widest stage count (NK=MAX_K, dopri8), the register-heaviest production launch."""
    out = []
    for dt in ("fp32", "fp64"):
        p = f"*{dt}"
        ks = {f"k{i}": p for i in range(MAX_K)}
        tols = {"rtol": "fp32", "atol": "fp32"}
        out.append({"kernel": _rk_combine_fwd_kernel,
                    "signature": {"y_ptr": p, "out_ptr": p, "c_ptr": p, **ks, "n": "i32"},
                    "constexprs": {"NK": MAX_K, "HAS_BASE": True, "BLOCK": BLOCK},
                    "label": f"{dt} NK={MAX_K}"})
        out.append({"kernel": _rk_error_ratio_fwd_kernel,
                    "signature": {"y0_ptr": p, "y1_ptr": p, "d_ptr": p, "partial_ptr": "*fp64",
                                  **ks, "n": "i32", **tols},
                    "constexprs": {"NK": MAX_K, "BLOCK": BLOCK}, "label": f"{dt} NK={MAX_K}"})
    return out
