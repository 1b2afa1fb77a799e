"""The C++ (CPU) and CUDA kernels of rk_stage, called through torch.ops.odekern_C.

The kernels need contiguous operands; strided inputs are made contiguous here and a strided
``out`` receives its result through a contiguous scratch tensor (a copy the solver never pays:
its buffers are allocated contiguous).
"""

from __future__ import annotations

from typing import Sequence

import torch

KERNEL_DTYPES = (torch.float32, torch.float64)


def _ops():
    return torch.ops.odekern_C


def max_error_k() -> int:
    """How many k tensors the built extension's error pass takes at once (rk_stage::kMaxK: one
    tableau's error weights in one pass). Asked of the extension itself, so Python never
    assumes more than the build it runs against has; an extension without the query takes 7."""
    query = getattr(_ops(), "rk_stage_max_k", None)
    return int(query()) if query is not None else 7


def supports(*, y: torch.Tensor, ks: Sequence[torch.Tensor], **_) -> list[str]:
    """``y`` is the tensor fixing dtype/device (the base, or the output when there is none)."""
    reasons = []
    if y.dtype not in KERNEL_DTYPES:
        reasons.append(f"dtype {y.dtype} not in float32/float64")
    if any(k.dtype != y.dtype for k in ks):
        reasons.append("the k tensors must share the state's dtype")
    if any(k.device != y.device for k in ks):
        reasons.append("the k tensors must be on the state's device")
    if not hasattr(torch.ops.odekern_C, "rk_error_ratio"):
        reasons.append("odekern._C was built without rk_stage (rebuild the extension)")
    return reasons


def supports_error(*, y: torch.Tensor, ks: Sequence[torch.Tensor], **kw) -> list[str]:
    reasons = supports(y=y, ks=ks, **kw)
    if not reasons and not 1 <= len(ks) <= max_error_k():
        reasons.append(f"the fused error pass takes 1..{max_error_k()} stages, got {len(ks)}")
    return reasons


def _into(out: torch.Tensor, run) -> None:
    if out.is_contiguous():
        run(out)
    else:
        scratch = torch.empty_like(out, memory_format=torch.contiguous_format)
        run(scratch)
        out.copy_(scratch)


def combine_out(y, ks, coeffs, out) -> None:
    """``coeffs``: Python floats (every caller passes them so)."""
    yc = None if y is None else y.contiguous()
    kc = [k.contiguous() for k in ks]
    if out.is_contiguous():  # the solvers' own buffers always are: no closure on the hot path
        _ops().rk_combine_out(yc, kc, coeffs, out)
    else:
        _into(out, lambda o: _ops().rk_combine_out(yc, kc, coeffs, o))


def error_ratio(y0, y1, ks, err_coeffs, rtol, atol) -> torch.Tensor:
    return _ops().rk_error_ratio(y0.contiguous(), y1.contiguous(), [k.contiguous() for k in ks],
                                 [float(d) for d in err_coeffs], float(rtol), float(atol))


# Fake (meta) kernels of the C++ ops, so torch.compile, meta tensors and opcheck can trace them.
if hasattr(torch.ops.odekern_C, "rk_error_ratio"):
    @torch.library.register_fake("odekern_C::rk_combine_out")
    def _(y, ks, coeffs, out):
        return None

    @torch.library.register_fake("odekern_C::rk_error_ratio")
    def _(y0, y1, ks, err_coeffs, rtol, atol):
        return y0.new_empty((), dtype=torch.float64)
