"""rk_stage: everything an explicit Runge-Kutta / Adams solver computes between RHS calls.

- ``rk_combine(y, ks, coeffs)``: ``y + sum_j coeffs[j] * ks[j]`` (stage inputs with
  ``coeffs = dt * a_i``, the final combination with ``dt * b``, Adams history combinations).
- ``rk_error_ratio(y0, y1, ks, err_coeffs, rtol=, atol=)``: that ratio alone when ``y1`` exists
  (FSAL tableaus such as Dopri5; ``ks=[err], err_coeffs=[1.0]`` for a materialised error).

``rk_combine(None, ks, coeffs)`` drops the base term (error estimates, Adams increments).

``out=`` buffers are written in place when no gradient is needed (then the result *is* ``out``).
When autograd is recording (a tensor input requires grad), a fresh tensor is returned and
``out`` is left untouched: always use the return value. Coefficients that are tensors requiring
grad (gradients with respect to the time grid) take the differentiable reference route.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from odekern.dispatch import check_backend_name, register, select
from odekern.ops.rk_stage import dispatch, op, reference  # dispatch registers the solvers' fused stages
from odekern.solvers.state import any_carries_tangent

__all__ = ["fused_backend", "rk_combine", "rk_error_ratio"]


def fused_backend(y: torch.Tensor, ks: Sequence[torch.Tensor], *, error_pass: bool = False) -> Optional[str]:
    """The non-reference backend that would run these operands, or None (solvers then keep
    their plain PyTorch path, which is the reference itself). ``y``: any operand fixing the
    dtype and device."""
    try:
        chosen = select(op.ERROR_RATIO if error_pass else op.COMBINE, y.device, None, y=y, ks=list(ks))
    except RuntimeError:
        return None
    return None if chosen.name == "reference" else chosen.name


def _check(name: str, y: torch.Tensor, ks: Sequence[torch.Tensor], coeffs: Sequence,
           out: Optional[torch.Tensor], outname: str) -> None:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name}: the state must be a tensor, got {type(y).__name__}")
    if not all(isinstance(k, torch.Tensor) for k in ks):
        raise TypeError(f"{name}: ks must be a sequence of tensors")
    if len(ks) != len(coeffs):
        raise ValueError(f"{name}: got {len(ks)} k tensors but {len(coeffs)} coefficients")
    for j, k in enumerate(ks):
        if not isinstance(k, torch.Tensor) or k.shape != y.shape:
            shape = tuple(k.shape) if isinstance(k, torch.Tensor) else type(k).__name__
            raise ValueError(f"{name}: ks[{j}] has shape {shape}, expected the state's {tuple(y.shape)}")
    if out is not None and (out.shape != y.shape or out.dtype != y.dtype or out.device != y.device):
        raise ValueError(f"{name}: {outname} must have the state's shape/dtype/device "
                         f"{tuple(y.shape)}/{y.dtype}/{y.device}, got "
                         f"{tuple(out.shape)}/{out.dtype}/{out.device}")


def _grad_coeffs(coeffs: Sequence) -> bool:
    return any(isinstance(c, torch.Tensor) and c.requires_grad for c in coeffs)


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _plain_torch_only(coeffs: Sequence, tensors: Sequence[torch.Tensor]) -> bool:
    """Time-grid coefficients that require grad, or inputs carrying a forward-mode tangent or
    inside a torch.func transform: only the differentiable reference keeps those derivatives."""
    return (torch.is_grad_enabled() and _grad_coeffs(coeffs)) or any_carries_tangent(tensors)


def _name(backend: Optional[str]) -> str:
    # The custom ops take a plain str: torch's autograd wrapper mishandles a trailing None arg.
    return "auto" if backend is None else backend


def _floats(coeffs: Sequence) -> list[float]:
    return [float(c) for c in coeffs]


def rk_combine(y: Optional[torch.Tensor], ks: Sequence[torch.Tensor], coeffs: Sequence, *,
               out: Optional[torch.Tensor] = None, backend: Optional[str] = None) -> torch.Tensor:
    """``y + sum_j coeffs[j] * ks[j]`` (``y=None``: no base), fused; see the module docstring."""
    check_backend_name(backend)
    ks = list(ks)
    if y is None and not ks:
        raise ValueError("rk_combine: needs a base y or at least one k tensor")
    like = y if y is not None else ks[0]
    _check("rk_combine", like, ks, coeffs, out, "out")
    present = [t for t in (y, *ks) if t is not None]
    if _plain_torch_only(coeffs, present):
        return reference.rk_combine(y, ks, coeffs)
    if _needs_grad(*present):
        return op.rk_combine(like, ks, _floats(coeffs), y is not None, _name(backend))
    if out is None:
        out = torch.empty_like(like, memory_format=torch.contiguous_format)
    op.rk_combine_out(y, ks, _floats(coeffs), out, _name(backend))
    return out


def rk_error_ratio(y0: torch.Tensor, y1: torch.Tensor, ks: Sequence[torch.Tensor],
                   err_coeffs: Sequence, *, rtol: float, atol: float,
                   backend: Optional[str] = None) -> torch.Tensor:
    """RMS error ratio of ``sum_j err_coeffs[j] ks[j]`` against ``atol + rtol max(|y0|, |y1|)``
    in one read-only pass (0-dim float64, no gradient)."""
    check_backend_name(backend)
    ks = list(ks)
    _check("rk_error_ratio", y0, ks, err_coeffs, y1, "y1")
    if not ks:
        raise ValueError("rk_error_ratio: needs at least one k tensor")
    for argname, v in (("rtol", rtol), ("atol", atol)):
        if isinstance(v, torch.Tensor) and v.numel() != 1:
            raise ValueError(f"rk_error_ratio: {argname} must be a scalar for the fused pass, got shape {tuple(v.shape)}")
    if any_carries_tangent([y0, y1, *ks]):
        return reference.rk_error_ratio(y0, y1, ks, err_coeffs, rtol=rtol, atol=atol)
    with torch.no_grad():
        return op.rk_error_ratio(y0.detach(), y1.detach(), [k.detach() for k in ks],
                                 _floats(err_coeffs), float(rtol), float(atol), _name(backend))
