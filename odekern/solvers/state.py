"""A solver state is a tensor or a tuple of tensors; this module is the one place that tells them apart.

Tuple states (a second-order block's ``(x, v)``, the adjoint's ``(a_t, *y, *a_y, *a_theta)``
for a tuple ``y``) are never concatenated: every operation the solvers do on a state goes
through the helpers below (or through ``stages``, which applies each combination per
component), so each component keeps its own storage and an RHS may return a component of its
input as a component of its output without any copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
import math
from typing import Any

import torch
from torch.autograd import forward_ad

Tensor = torch.Tensor
State = Tensor | tuple


def is_tuple(state: Any) -> bool:
    """Whether ``state`` is a tuple state (the only test of it in the solvers)."""
    return isinstance(state, tuple)


def components(state: State) -> tuple[Tensor, ...]:
    """The component tensors of ``state`` (a plain tensor is its own single component)."""
    return state if is_tuple(state) else (state,)


def rebuild(like: State, parts: Iterable[Tensor]) -> State:
    """``parts`` shaped as ``like``: a tuple for a tuple state, the single tensor otherwise."""
    parts = tuple(parts)
    return parts if is_tuple(like) else parts[0]


def map_state(fn: Callable[..., Tensor], state: State, *others: Any) -> State:
    """``fn`` applied per component; ``others`` are states split alongside ``state``."""
    if is_tuple(state):
        return tuple(fn(*args) for args in zip(state, *others))
    return fn(state, *others)


def component(value: Any, i: int) -> Any:
    """Component ``i`` of a tuple state or per-component tuple (tolerances); anything else as is."""
    return value[i] if isinstance(value, (tuple, list)) else value


def join(parts: Iterable[Tensor], out: State | None) -> tuple:
    """Per-component results as a tuple state: ``out`` itself when every part was written into it,
    so callers can keep recognising their preallocated buffers by identity."""
    parts = tuple(parts)
    if out is not None and all(p is o for p, o in zip(parts, out)):
        return out
    return parts


def first(state: State) -> Tensor:
    """A component fixing the state's dtype and device (all components share them)."""
    return components(state)[0]


def numel(state: State) -> int:
    return sum(c.numel() for c in components(state))


def empty_like(state: State) -> State:
    return map_state(torch.empty_like, state)


def detach(state: State) -> State:
    return map_state(Tensor.detach, state)


def carries_tangent(x: Tensor) -> bool:
    """Whether ``x`` is inside a torch.func transform (grad, jvp, vmap, ...) or carries a
    forward-mode tangent. Such tensors must only meet plain differentiable torch ops: an
    ``out=`` write or a fused kernel would silently drop the tangent or the batch dimension."""
    if torch._C._functorch.is_functorch_wrapped_tensor(x):
        return True
    return forward_ad._current_level >= 0 and forward_ad.unpack_dual(x).tangent is not None


def no_transform_active() -> bool:
    """No forward-mode AD level and no torch.func transform is active, so no tensor can carry a
    tangent or batch dimensions (two global flags; cheap enough for every combination)."""
    return forward_ad._current_level < 0 and torch._C._functorch.maybe_current_level() is None


def plain_eager() -> bool:
    """Eager code outside every transform: no tensor carries a tangent or batch dimensions and
    torch.compile is not tracing, so the fast paths (foreach operations, in-place buffers) apply."""
    return no_transform_active() and not torch.compiler.is_compiling()


def inside_transform() -> bool:
    """Eager code under a torch.func transform or a forward-mode AD level, where an
    autograd.Function's backward is not used (torch.func differentiates its forward). Not under
    torch.compile, which traces the transforms itself."""
    return not (no_transform_active() or torch.compiler.is_compiling())


def any_carries_tangent(tensors: Iterable[Tensor | None]) -> bool:
    """``carries_tangent`` for any of ``tensors``; two global flags answer it outside transforms."""
    if torch.compiler.is_compiling():
        return False  # torch.compile traces torch.func transforms itself, on fake tensors
    if no_transform_active():
        return False
    return any(x is not None and carries_tangent(x) for x in tensors)


def inside_vmap() -> bool:
    """Whether the caller runs under ``torch.func.vmap`` (possibly nested in other transforms),
    where no value may decide control flow (no ``.item()``, no data-dependent branch)."""
    if torch.compiler.is_compiling():
        return False
    stack = torch._C._functorch.get_interpreter_stack()
    return bool(stack) and any(i.key() == torch._C._functorch.TransformType.Vmap for i in stack)


def records_derivatives(tensors: Sequence[Tensor | None]) -> bool:
    """Whether a result computed from ``tensors`` must keep derivatives: autograd records it, or
    an input carries a tangent (``carries_tangent``). Solvers and ops then use plain torch ops
    and fresh tensors instead of preallocated buffers and fused kernels."""
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors):
        return True
    return any_carries_tangent(tensors)


LOW_PRECISION = (torch.float16, torch.bfloat16)


# A complex state's time, tolerances and norms are real. (A table, not ``dtype.to_real()``:
# torch.compile traces a dict lookup but not that method.)
_REAL_OF_COMPLEX = {torch.complex32: torch.float16, torch.complex64: torch.float32, torch.complex128: torch.float64}


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    """``dtype`` itself, or for a complex dtype the dtype of its real part."""
    return _REAL_OF_COMPLEX.get(dtype, dtype)


def widened(x: Tensor) -> Tensor:
    """``x`` in float32 when it is float16/bfloat16, else ``x`` itself: the step-size controller
    works at least in float32 (tolerances such as 1e-7 underflow in float16, and the error
    ratio would divide by zero there)."""
    return x.float() if x.dtype in LOW_PRECISION else x


def all_finite(state: State) -> bool:
    """No NaN/inf in any component. Called on inputs, on final states and, where a step must be
    named, per step (event solves; the repeat of a failed fixed-grid solve), so it first tries
    one sum per component (a single reduction pass, ~9x cheaper than ``isfinite(c).all()`` on a
    2M-element state): a NaN or inf element makes the sum non-finite, so a finite sum proves the
    component finite; a non-finite sum (a NaN/inf, or an overflow of finite values) is decided
    exactly.
    The sum is tested as a Python float: a tensor isfinite + bool costs two more dispatches.
    Under ``torch.func.vmap`` no value can be read, so the check cannot run and answers True:
    a non-finite result then shows as NaN/inf in the output (only fixed-grid solves run there).
    Meta tensors have no values and pass."""
    if inside_vmap():
        return True
    if any(c.is_meta for c in components(state)):
        return True  # meta tensors have shapes only: nothing to check (shape inference)
    with torch.no_grad():
        # abs(): the sum of a complex component is a Python complex.
        return all(math.isfinite(abs(c.sum().item())) or bool(torch.isfinite(c).all()) for c in components(state))


def assert_finite_traced(state: State, message: str) -> None:
    """The finiteness check inside torch.compile, where no value can be read without a graph
    break: an in-graph assertion that raises RuntimeError(message) when the compiled code runs
    on CPU. On accelerators it would be a fatal device-side assert, so there the check is left
    to the caller's output (documented in docs/composability.md)."""
    for c in components(state):
        if c.device.type == "cpu":
            torch._assert_async(torch.isfinite(c).all(), message)


def is_dense(x: Tensor) -> bool:
    """Whether ``x`` covers its storage without gaps or overlaps in some dimension order (a
    contiguous or, e.g., channels_last tensor)."""
    order = sorted(range(x.dim()), key=lambda d: -x.stride(d))
    return x.permute(order).is_contiguous()


def new_solution(y0: State, n: int) -> State:
    """``n`` rows per component, row 0 holding ``y0``."""

    def rows(c: Tensor) -> Tensor:
        # new_empty, not torch.empty: inside a torch.func transform the rows must live at the
        # transform's level, or writing a row would silently drop its tangent / batch dims.
        # Rows keep y0's memory format (channels_last stays channels_last) when y0 is dense.
        if c.dim() > 1 and not c.is_contiguous() and is_dense(c):
            out = c.new_empty_strided((n, *c.shape), (c.numel(), *c.stride()))
        else:
            out = c.new_empty((n, *c.shape))
        out[0] = c
        return out

    return map_state(rows, y0)


def row(solution: State, index: int) -> State:
    """Row ``index`` of a solution (views, writable in place)."""
    return map_state(lambda c: c[index], solution)


def store(solution: State, index: int, row_view: State | None, value: State) -> State:
    """Put ``value`` in row ``index`` unless a stage function already wrote it into ``row_view``
    (the preallocated views); an autograd-recorded value is copied in differentiably."""
    # Compared per component (torch.compile cannot trace identity of tuples it rebuilt).
    views = components(row_view) if row_view is not None else (None,) * len(components(solution))
    for c, v, r in zip(components(solution), components(value), views):
        if v is not r:
            c[index] = v
    return solution


def shares_storage(a: Tensor, state: State) -> bool:
    """Whether tensor ``a`` starts where a component of ``state`` does (an RHS returned its input)."""
    return any(a.data_ptr() == c.data_ptr() for c in components(state))


def shapes(state: State) -> list[torch.Size]:
    return [c.shape for c in components(state)]


def describe(state: State) -> str:
    if is_tuple(state):
        return "(" + ", ".join(str(tuple(c.shape)) for c in state) + ")"
    return str(tuple(state.shape))


def as_state(value: Sequence[Tensor] | Tensor) -> State:
    """An RHS result as a state: lists become tuples."""
    return tuple(value) if isinstance(value, list) else value
