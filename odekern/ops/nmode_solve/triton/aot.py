"""What ``python -m tools.gpucheck`` compiles ahead of time for sm_80/sm_90: every nmODE kernel,
in float32 and float64, with the constexprs production launches use (the heaviest method per
kernel; per-method variants of the step-list kernels for rk4 and dopri5).

Signatures are derived from the kernels' own parameter lists, so a kernel that gains or renames
a parameter needs no edit here: a ``*_ptr`` parameter points to the state's dtype unless
POINTER_TYPES names it, any other runtime parameter is a 32-bit count, and ``tl.constexpr``
parameters are the variant's constexprs.
"""

from __future__ import annotations

import inspect

import triton.language as tl

from odekern.ops.nmode_solve.config import MethodId
from odekern.ops.nmode_solve.triton import kernels
from odekern.ops.nmode_solve.triton.launch import BLOCK, LAUNCH, REGISTER_CHECKPOINTS

# Pointer parameters that are not of the state's dtype: step lists, partial sums and scalar
# parameters travel in float64, lane statuses in int32.
POINTER_TYPES = {"dts_ptr": "*fp64", "adj_dts_ptr": "*fp64", "part_ptr": "*fp64", "par_ptr": "*fp64",
                 "status_ptr": "*i32"}
COUNT_TYPE = "i32"


def _is_constexpr(param: inspect.Parameter) -> bool:
    return param.annotation is tl.constexpr or param.annotation in ("tl.constexpr", "constexpr")


def signature(kernel, dtype: str) -> dict[str, str]:
    """Triton types of ``kernel``'s runtime parameters for a state of ``dtype`` ("fp32"/"fp64")."""
    params = inspect.signature(kernel.fn).parameters.values()
    return {p.name: (POINTER_TYPES.get(p.name, f"*{dtype}") if p.name.endswith("_ptr") else COUNT_TYPE)
            for p in params if not _is_constexpr(p)}


def constexpr_names(kernel) -> set[str]:
    return {p.name for p in inspect.signature(kernel.fn).parameters.values() if _is_constexpr(p)}


def aot_variants() -> list[dict]:
    out = []
    for dt in ("fp32", "fp64"):
        common = {"BLOCK": BLOCK}
        grads = {"HAS_GF0": True, "HAS_GF1": True, "C": REGISTER_CHECKPOINTS}
        variants = []
        for method in ("rk4", "dopri5"):
            mid = int(MethodId.of(method))
            variants += [
                (kernels._nmode_list_fwd_kernel, {"METHOD": mid, "NEED_F": True}, f"{method} need_f"),
                (kernels._nmode_list_bwd_kernel, {"METHOD": mid, **grads}, f"{method} grad_f"),
                (kernels._nmode_adjoint_bwd_kernel, {"METHOD": mid, **grads}, f"{method} adjoint"),
            ]
        variants += [
            (kernels._nmode_global_init_kernel, {}, ""),
            (kernels._nmode_global_d2_kernel, {}, ""),
            (kernels._nmode_global_attempt_kernel, {"FINISHING": True, "NEED_F": True}, "finishing need_f"),
            (kernels._nmode_pe_fwd_kernel, {"NEED_F": True, "C": REGISTER_CHECKPOINTS}, "need_f"),
            (kernels._nmode_pe_bwd_kernel, grads, "grad_f"),
        ]
        for kernel, constexprs, label in variants:
            out.append({"kernel": kernel, "signature": signature(kernel, dt),
                        "constexprs": {**constexprs, **common}, "label": f"{dt} {label}".strip(),
                        "options": dict(LAUNCH)})
    return out
