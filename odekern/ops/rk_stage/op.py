"""torch.library custom ops of rk_stage; every body picks its kernel with backends.select.

Two routes, chosen by the public functions in ``__init__``:

- ``odekern::rk_combine`` (functional, returns a new tensor, autograd registered): used when a
  gradient is needed. Writing stage results into reused buffers cannot work under autograd:
  the RHS (a conv, say) saves its input for backward, so overwriting that buffer at the next
  stage would corrupt the graph. Autograd keeps every stage alive anyway, so the allocation
  costs nothing extra, and the fused kernel still does the arithmetic. The backward of a linear
  combination needs no saved tensors: grad_y = g, grad_k_j = c_j * g.
- ``odekern::rk_combine_out`` (writes into a caller buffer, no autograd): used under no_grad (forward-only solves, the adjoint's solves, checkpoint
  recomputation), where the solver loop then allocates nothing per step.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from odekern.dispatch import check_backend_name, optional_module, register, select
from odekern.ops.rk_stage import cpp, reference

COMBINE, ERROR_RATIO = "rk_combine", "rk_error_ratio"


def _reference_combine_out(y, ks, coeffs, out) -> None:
    with torch.no_grad():
        out.copy_(reference.rk_combine(y, ks, coeffs))


def _reference_error_ratio(y0, y1, ks, err_coeffs, rtol, atol) -> torch.Tensor:
    return reference.rk_error_ratio(y0, y1, ks, err_coeffs, rtol, atol)


TRITON_MODULE = "odekern.ops.rk_stage.triton"


def _triton():
    """The Triton kernels' module (an optional dependency: see dispatch.optional_module)."""
    mod = optional_module(TRITON_MODULE)
    if isinstance(mod, str):
        raise RuntimeError(mod)
    return mod


def _triton_refusals(supports: str):
    def refusals(**inputs) -> list[str]:
        mod = optional_module(TRITON_MODULE)
        return [mod] if isinstance(mod, str) else list(getattr(mod, supports)(**inputs))
    return refusals


def _register() -> None:
    register(COMBINE, "reference", _reference_combine_out)
    register(ERROR_RATIO, "reference", _reference_error_ratio)
    for name in ("cpu", "cuda"):
        register(COMBINE, name, cpp.combine_out, cpp.supports)
        register(ERROR_RATIO, name, cpp.error_ratio, cpp.supports_error)
    register(COMBINE, "triton", lambda *a: _triton().combine_out(*a),
             _triton_refusals("supports"))
    register(ERROR_RATIO, "triton", lambda *a: _triton().error_ratio(*a),
             _triton_refusals("supports_error"))


_register()


def _kernel(op: str, y: Optional[torch.Tensor], ks: Sequence[torch.Tensor], backend: str):
    like = y if y is not None else ks[0]  # fixes dtype/device when there is no base term
    return select(op, like.device, backend, y=like, ks=ks).fn


@torch.library.custom_op("odekern::rk_combine_out", mutates_args=("out",))
def rk_combine_out(y: Optional[torch.Tensor], ks: list[torch.Tensor], coeffs: list[float], out: torch.Tensor,
                   backend: str = "auto") -> None:
    _kernel(COMBINE, y, ks, backend)(y, ks, coeffs, out)


@rk_combine_out.register_fake
def _(y, ks, coeffs, out, backend="auto"):
    return None


@torch.library.custom_op("odekern::rk_combine", mutates_args=())
def rk_combine(y: torch.Tensor, ks: list[torch.Tensor], coeffs: list[float], has_base: bool,
               backend: str) -> torch.Tensor:
    """Functional form; ``has_base=False`` ignores ``y`` (pass any operand): torch's autograd
    wrapper for custom ops mishandles a None tensor argument, so "no base" is a flag."""
    out = torch.empty_like(y, memory_format=torch.contiguous_format)
    _kernel(COMBINE, y, ks, backend)(y if has_base else None, ks, coeffs, out)
    return out


@rk_combine.register_fake
def _(y, ks, coeffs, has_base, backend):
    return torch.empty_like(y, memory_format=torch.contiguous_format)


def _combine_setup(ctx, inputs, output):
    ctx.coeffs = list(inputs[2])
    ctx.has_base = inputs[3]


# No argument of rk_combine has a default: the dispatcher drops trailing arguments equal to
# their defaults and the generated autograd.Function then expects fewer gradients.
def _combine_backward(ctx, grad):
    return (grad if ctx.has_base else None), [grad * c for c in ctx.coeffs], None, None, None


rk_combine.register_autograd(_combine_backward, setup_context=_combine_setup)


@torch.library.custom_op("odekern::rk_error_ratio", mutates_args=())
def rk_error_ratio(y0: torch.Tensor, y1: torch.Tensor, ks: list[torch.Tensor], err_coeffs: list[float],
                   rtol: float, atol: float, backend: str = "auto") -> torch.Tensor:
    ratio = _kernel(ERROR_RATIO, y0, ks, backend)(y0, y1, ks, err_coeffs, rtol, atol)
    return ratio.to(device=y0.device, dtype=torch.float64).reshape(()).clone()


@rk_error_ratio.register_fake
def _(y0, y1, ks, err_coeffs, rtol, atol, backend="auto"):
    return y0.new_empty((), dtype=torch.float64)
