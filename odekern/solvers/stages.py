"""Every linear combination a solver forms between right-hand-side evaluations.

This module is the seam for fused kernels: the solvers call only these functions for
stage inputs, step solutions, embedded error estimates, error ratios, Adams history sums and
output interpolation, so a faster backend replaces them here and nowhere else. The versions
below are plain PyTorch.

Conventions shared by all functions:

- A state is a tensor or a tuple of tensors (``odekern.solvers.state``). For a tuple state every
  combination is applied per component (each component through the fused kernels when a
  backend fits) and the components are never concatenated; error ratios reduce over all
  components with the norm, from one fused RMS per component when the norm allows it.
- ``ks`` is a sequence of tensors shaped like the state; ``coeffs`` a sequence of Python floats
  of the same length. Zero coefficients are skipped (no work, and ``0 * inf`` never appears).
- ``dt`` is a Python float or a 0-dim tensor. A tensor ``dt`` that requires grad keeps the
  result differentiable with respect to time (fixed grids built from ``t``).
- ``out`` is a preallocated buffer to write into. It is a hint: when autograd must record the
  operation (grad enabled and any input requires grad) the result is a fresh tensor and ``out``
  is left untouched, because in-place writes would break backprop through the solve. Callers
  therefore always use the *returned* tensor. ``out`` must not alias any input.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, Sequence, Union

import torch

from odekern.solvers.norms import component_rms_combiner, max_norm, rms_norm
from odekern.solvers.state import (LOW_PRECISION, State, any_carries_tangent, component, components, is_tuple,
                                   join, map_state, no_transform_active, plain_eager, records_derivatives,
                                   widened)

Tensor = torch.Tensor
TimeLike = Union[float, Tensor]


class FusedStages(Protocol):
    """What a fused-kernel op offers the solvers. The solvers own this interface and the op
    registers itself (``register_fused_stages``), so the solver core never imports a kernel
    package and the kernels build on the core, never the other way round. Each method returns
    None (or False) when its fused pass does not fit the operands; the PyTorch code below then
    runs."""

    def try_combine(self, base: Optional[Tensor], ks: Sequence[Tensor], coeffs: Sequence[float],
                    out: Optional[Tensor]) -> Optional[Tensor]: ...

    def bind_combine(self, like: Tensor) -> tuple[Optional[Callable[[Optional[Tensor], list, list, Tensor], None]],
                                                  bool, bool]:
        """For a whole solve on operands shaped, typed and placed like ``like``: the kernel
        writing ``base + sum_j coeffs[j] ks[j]`` into ``out`` for unrecorded operands (None when
        no fused backend would run them), whether ``try_combine`` may fuse recorded ones, and
        whether the kernel is to run single-term combinations too (else the PyTorch code does)."""
        ...

    def can_error_ratio(self, y0: Tensor, ks: Sequence[Tensor]) -> bool: ...

    def try_error_ratio(self, y0: Tensor, y1: Tensor, ks: Sequence[Tensor], coeffs: Sequence[float],
                        rtol: float, atol: float) -> Optional[Tensor]: ...


_fused: Optional[FusedStages] = None


def register_fused_stages(provider: Optional[FusedStages]) -> None:
    """Install the fused stage kernels the solvers use (None: plain PyTorch only)."""
    global _fused
    _fused = provider


def fused_stages() -> Optional[FusedStages]:
    """The registered fused stage kernels, or None."""
    return _fused


def _each(seq: Sequence, i: int) -> list:
    """Component ``i`` of every state in ``seq``."""
    return [x[i] for x in seq]


def _records_grad(tensors: Sequence[Optional[Tensor]], dt: TimeLike = 0.0) -> bool:
    return records_derivatives([*tensors, dt] if isinstance(dt, Tensor) else tensors)


def linear_combination(coeffs: Sequence[float], ks: Sequence[Tensor], *, scale: TimeLike = 1.0,
                       base: Optional[Tensor] = None, out: Optional[Tensor] = None) -> Tensor:
    """``base + scale * sum_j coeffs[j] * ks[j]`` (``base`` defaults to zero)."""
    if is_tuple(base if base is not None else ks[0]):
        n = len(base if base is not None else ks[0])
        return join((linear_combination(coeffs, _each(ks, i), scale=scale, base=component(base, i),
                                        out=component(out, i)) for i in range(n)), out)
    fused = _fused_linear_combination(coeffs, ks, scale, base, out)  # rk_stage kernels
    if fused is not None:
        return fused
    return _torch_linear_combination(coeffs, ks, scale, base, out)


def _torch_linear_combination(coeffs: Sequence[float], ks: Sequence[Tensor], scale: TimeLike,
                              base: Optional[Tensor], out: Optional[Tensor]) -> Tensor:
    """``linear_combination`` of one tensor component in plain PyTorch."""
    # The increment is formed first and base added once, as torchdiffeq's y0 + dy
    # (csrc/ops/rk_stage/rk_stage.h's combine says why). With a base it is formed as
    # c_p (k_p + sum_j (c_j / c_p) k_j) (_pivoted), so that base and increment still take one
    # add per term (a separate scaling op would add a pass over the state).
    terms = [(c, k) for c, k in zip(coeffs, ks) if c != 0.0]
    if _records_grad([base, *(k for _, k in terms)], scale) or out is None:
        like = base if base is not None else (terms[0][1] if terms else None)
        if not terms:
            return base.clone() if base is not None else torch.zeros_like(ks[0])
        if not isinstance(scale, Tensor):
            # One add per term (no separate scaling op, half the autograd nodes of mul + add).
            h = float(scale)
            c0, k0 = terms[0]
            if base is not None and len(terms) == 1:
                return torch.add(base, k0, alpha=h * c0)
            if base is not None:
                weight, k_p, ((r, k), *rest) = _pivoted(terms, h)
                acc = torch.add(k_p, k, alpha=r)
                for r, k in rest:
                    acc = torch.add(acc, k, alpha=r)
                return torch.add(base, acc, alpha=weight)
            acc = k0 * (h * c0)
            for c, k in terms[1:]:
                acc = torch.add(acc, k, alpha=h * c)
            return acc
        if scale.dtype != like.dtype:
            # A time step in another dtype than the state (a float32 grid for a float64 state):
            # its value is used exactly, the products are formed in the state's precision.
            scale = scale.to(like.dtype)
        acc = None
        for c, k in terms:
            term = k * (scale * c)
            acc = term if acc is None else acc + term
        return acc if base is None else base + acc
    h = float(scale)
    if not terms:
        return out.copy_(base) if base is not None else out.zero_()
    # The recorded path's operations in its order, so both give the same values.
    c0, k0 = terms[0]
    if base is not None and len(terms) == 1:
        return torch.add(base, k0, alpha=h * c0, out=out)
    if base is None:
        torch.mul(k0, h * c0, out=out)
        for c, k in terms[1:]:
            out.add_(k, alpha=h * c)
        return out
    increment = out if not _overlap(out, base) else torch.empty_like(out)
    weight, k_p, ((r, k), *rest) = _pivoted(terms, h)
    torch.add(k_p, k, alpha=r, out=increment)
    for r, k in rest:
        increment.add_(k, alpha=r)
    return torch.add(base, increment, alpha=weight, out=out)


def _pivoted(terms: Sequence[tuple[float, Any]], h: float) -> tuple[float, Any, list[tuple[float, Any]]]:
    """``(h c_p, k_p, [(c_j / c_p, k_j) for j != p])`` for terms ``(c_j, k_j)`` (at least two, no
    zero c): ``h sum_j c_j k_j = h c_p (k_p + sum_j (c_j / c_p) k_j)``. p is the first term of
    largest |c|, so every ratio is at most 1 in magnitude; the other terms keep their order, so
    the first of them is ``terms[0]`` unless that is the pivot (the first operation reads k_0
    either way, as the callers' ``out`` buffers assume)."""
    p = 0
    for j in range(1, len(terms)):  # a loop, not max(key=...), which torch.compile cannot trace
        if abs(terms[j][0]) > abs(terms[p][0]):
            p = j
    c_p, k_p = terms[p]
    return h * c_p, k_p, [(c / c_p, k) for j, (c, k) in enumerate(terms) if j != p]


def _overlap(a: Tensor, b: Tensor) -> bool:
    """Whether writing ``a`` may change ``b`` (a caller's ``out`` that is, or views, its base)."""
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


class SolveStages:
    """``linear_combination`` and the step functions built on it, bound to one solve's state.

    The fused-kernel decision (backend, override, size threshold) depends only on the state's
    dtype, device and size and on the backend override, so it is taken once per component when
    the solve starts: an unrecorded combination then costs one kernel call instead of a backend
    selection, which on a state of a few thousand elements costs more than the kernel. Results
    are those of the module functions of the same names, which run whenever the bound kernel
    does not apply (autograd recording, a differentiable step, forward-mode tangents)."""

    # Components of a tuple state below this size are combined together by multi-tensor
    # (foreach) operations, one call per term for all of them: a call per component costs more
    # than the arithmetic on a parameter adjoint or a bias.
    SMALL_COMPONENT = 1 << 12

    def __init__(self, like: State):
        parts = components(like)
        bind = _fused is not None and not torch.compiler.is_compiling() and not any_carries_tangent(parts)
        bound = [_fused.bind_combine(c) if bind else (None, _fused is not None, False) for c in parts]
        self._kernels = [kernel for kernel, _, _ in bound]
        # Recorded combinations of states too small to fuse go straight to the PyTorch code.
        self._fuse_recorded = [fuse for _, fuse, _ in bound]
        self._fuse_single = [single for _, _, single in bound]
        self._tuple = is_tuple(like)
        small = [i for i, c in enumerate(parts) if c.numel() < self.SMALL_COMPONENT] if self._tuple else []
        self._small = small if len(small) > 1 else []
        self._large = [i for i in range(len(parts)) if i not in self._small]

    def linear_combination(self, coeffs: Sequence[float], ks: Sequence[State], *, scale: TimeLike = 1.0,
                           base: Optional[State] = None, out: Optional[State] = None) -> State:
        """``base + scale * sum_j coeffs[j] * ks[j]``, as ``linear_combination``."""
        if self._tuple:
            parts = self._small_components(coeffs, ks, scale, base, out) if self._small else None
            if parts is None:
                return join((self._component(i, coeffs, _each(ks, i), scale, component(base, i), component(out, i))
                             for i in range(len(self._kernels))), out)
            for i in self._large:
                parts[i] = self._component(i, coeffs, _each(ks, i), scale, component(base, i), component(out, i))
            return join(parts, out)
        return self._component(0, coeffs, ks, scale, base, out)

    def _small_components(self, coeffs, ks, scale, base, out) -> Optional[list]:
        """The small components of an unrecorded tuple combination by foreach operations, written
        into ``out`` when given (the others are left None for the caller), or None when they
        must take the per-component path."""
        if isinstance(scale, Tensor) or not plain_eager():
            return None
        small = self._small
        terms = [([k[i] for i in small], scale * c) for c, k in zip(coeffs, ks) if c != 0.0]
        bases = None if base is None else [base[i] for i in small]
        if not terms or (torch.is_grad_enabled() and any(
                t.requires_grad for t in [*(bases or ()), *(t for group, _ in terms for t in group)])):
            return None
        # As _torch_linear_combination: the increment first, then the base once.
        (first, weight), rest = terms[0], terms[1:]
        if bases is not None and not rest:
            results = torch._foreach_add(bases, first, alpha=weight)
        elif bases is not None:
            weight, pivot, ((r, group), *others) = _pivoted([(c, group) for group, c in terms], 1.0)
            results = torch._foreach_add(pivot, group, alpha=r)
            for r, group in others:
                torch._foreach_add_(results, group, alpha=r)
            results = torch._foreach_add(bases, results, alpha=weight)
        else:
            results = torch._foreach_mul(first, weight)
            for group, weight in rest:
                torch._foreach_add_(results, group, alpha=weight)
        if out is not None:  # the caller's buffers (a solver keeps its stage inputs there)
            torch._foreach_copy_([out[i] for i in small], results)
            results = [out[i] for i in small]
        parts: list = [None] * len(self._kernels)
        for i, r in zip(small, results):
            parts[i] = r
        return parts

    def _component(self, i: int, coeffs, ks, scale, base, out) -> Tensor:
        if not isinstance(scale, Tensor) and no_transform_active():
            # records_derivatives() without its tangent check, which the branch has settled
            # (calling it costs ~0.8 us, 14% of a combination on a 1,024-element state).
            recording = torch.is_grad_enabled() and ((base is not None and base.requires_grad)
                                                     or any(k.requires_grad for k in ks))
            kernel = self._kernels[i]
            if not recording and kernel is not None:
                kept, weights = _fused_terms(coeffs, ks, scale)
                if len(kept) > 1 or (kept and self._fuse_single[i]):
                    if out is None:
                        # Grad enabled (no reused buffers) but nothing recorded: the same kernel
                        # into a fresh tensor, without the per-call backend selection.
                        like = base if base is not None else kept[0]
                        out = torch.empty_like(like, memory_format=torch.contiguous_format)
                    kernel(base, kept, weights, out)
                    return out
                if kept:  # one term: a single PyTorch op beats a kernel call (bind_combine)
                    return _torch_linear_combination(coeffs, ks, scale, base, out)
            elif recording and not self._fuse_recorded[i]:
                return _torch_linear_combination(coeffs, ks, scale, base, out)
        return linear_combination(coeffs, ks, scale=scale, base=base, out=out)

    def stage_state(self, y0: State, dt: TimeLike, a_row: Sequence[float], ks: Sequence[State],
                    out: Optional[State] = None) -> State:
        """As the module function ``stage_state``."""
        return self.linear_combination(a_row, ks, scale=dt, base=y0, out=out)

    def step_solution(self, y0: State, dt: TimeLike, b: Sequence[float], ks: Sequence[State],
                      out: Optional[State] = None) -> State:
        """As the module function ``step_solution``."""
        return self.linear_combination(b, ks, scale=dt, base=y0, out=out)

    def adams_increment(self, dt: TimeLike, coeffs: Sequence[float], history: Sequence[State],
                        out: Optional[State] = None) -> State:
        """As the module function ``adams_increment``."""
        return self.linear_combination(coeffs, history, scale=dt, out=out)

    def add(self, y0: State, dy: State, out: Optional[State] = None) -> State:
        """As the module function ``add``."""
        return self.linear_combination((1.0,), (dy,), base=y0, out=out)


def stage_state(y0: Tensor, dt: TimeLike, a_row: Sequence[float], ks: Sequence[Tensor],
                out: Optional[Tensor] = None) -> Tensor:
    """Input of a Runge-Kutta stage: ``y0 + dt * sum_j a_row[j] * ks[j]``."""
    return linear_combination(a_row, ks, scale=dt, base=y0, out=out)


def step_solution(y0: Tensor, dt: TimeLike, b: Sequence[float], ks: Sequence[Tensor],
                  out: Optional[Tensor] = None) -> Tensor:
    """Solution after one Runge-Kutta step: ``y0 + dt * sum_j b[j] * ks[j]``."""
    return linear_combination(b, ks, scale=dt, base=y0, out=out)


def error_estimate(dt: TimeLike, b_err: Sequence[float], ks: Sequence[Tensor],
                   out: Optional[Tensor] = None) -> Tensor:
    """Embedded error estimate ``dt * sum_j b_err[j] * ks[j]``."""
    return linear_combination(b_err, ks, scale=dt, out=out)


def error_ratio(err: Tensor, y0: Tensor, y1: Tensor, rtol: TimeLike, atol: TimeLike,
                norm: Callable[[Tensor], Tensor]) -> Tensor:
    """``norm(err / (atol + rtol * max(|y0|, |y1|)))``: <= 1 means the step is accepted.

    A fused kernel computes the RMS case in one pass without materialising the quotient.
    ``rtol`` / ``atol`` may be tuples with one entry per component of a tuple state.
    """
    fused = _fused_error_ratio(y0, y1, (err,), (1.0,), 1.0, rtol, atol, norm)  # rk_stage
    if fused is not None:
        return fused
    if norm is max_norm and is_tuple(err):
        ratio = _tuple_max_error_ratio(err, y0, y1, rtol, atol)
        if ratio is not None:
            return ratio
    ratio = norm(_scaled_error(err, y0, y1, rtol, atol))
    # A user's norm may come out negative (torchdiffeq takes abs()); the built-in ones cannot.
    return ratio if norm is max_norm or norm is rms_norm else ratio.abs()


#: Elements of a large CPU state that Adams' corrector test reads first (``corrector_converged``).
CORRECTOR_TEST_PREFIX = 2048


def _plain_real(a: State, rtol: TimeLike, atol: TimeLike) -> bool:
    """A real tensor state of float32/float64 with tolerances that are plain numbers, eager and
    outside transforms: the case whose corrector quotient is formed in place (``_in_place_ratio``)."""
    return (isinstance(a, Tensor) and a.numel() > 0 and a.is_floating_point() and a.dtype not in LOW_PRECISION
            and isinstance(rtol, (int, float)) and isinstance(atol, (int, float))
            and plain_eager())


def _in_place_ratio(a: Tensor, b: Tensor, rtol: float, atol: float) -> Tensor:
    """max |a - b| / (atol + rtol max(|a|, |b|)) with three allocations instead of nine (a
    quarter to a third less time from 1k to 1M elements), by torchdiffeq's operations in its
    order, so the ratio is the same."""
    with torch.no_grad():
        err = torch.sub(a, b).abs_()
        scale = a.abs()
        torch.maximum(scale, b.abs(), out=scale)
        return err.div_(scale.mul_(rtol).add_(atol)).max()


def difference_ratio(a: State, b: State, rtol: TimeLike, atol: TimeLike) -> Tensor:
    """``error_ratio(a - b, a, b, rtol, atol, max_norm)``, unrecorded: the convergence ratio of
    Adams' corrector (``a``, ``b`` two successive increments); formed in place for a real tensor
    state with plain tolerances."""
    if _plain_real(a, rtol, atol):
        return _in_place_ratio(a, b, rtol, atol)
    with torch.no_grad():
        return error_ratio(difference(a, b), a, b, rtol, atol, max_norm)


def corrector_converged(a: State, b: State, rtol: TimeLike, atol: TimeLike) -> bool:
    """Whether ``difference_ratio(a, b, rtol, atol) < 1`` (NaN: not converged).

    Every element must pass, so one that fails decides for the whole state. Every iteration of
    the corrector but its last fails, and usually on most elements, so on a large CPU state the
    first ``CORRECTOR_TEST_PREFIX`` elements are tested first (their quotient costs a few
    microseconds; the whole state's, nine passes over it: a fifth of an implicit_adams solve of
    a 2M-element state), and only when they pass is the whole state tested. Each element's
    quotient is the same either way, so the answer is too. Not on a GPU, where the passes are
    cheap and the prefix's answer would be a second read of the device."""
    if not _plain_real(a, rtol, atol):
        return float(difference_ratio(a, b, rtol, atol)) < 1
    n = CORRECTOR_TEST_PREFIX
    if (a.device.type == "cpu" and a.numel() > 2 * n and a.shape == b.shape
            and a.is_contiguous() and b.is_contiguous()):
        if not float(_in_place_ratio(a.view(-1)[:n], b.view(-1)[:n], rtol, atol)) < 1:
            return False
    return float(_in_place_ratio(a, b, rtol, atol)) < 1


def difference(a: State, b: State) -> State:
    """``a - b``, unrecorded, for a test that only steers a solver (Adams' corrector): one
    foreach call for a tuple state, where a combination would take several per component."""
    with torch.no_grad():
        if is_tuple(a) and plain_eager():
            return tuple(torch._foreach_sub(list(a), list(b)))
        return map_state(torch.sub, a, b)


def _tuple_max_error_ratio(err, y0, y1, rtol, atol) -> Optional[Tensor]:
    """The max-norm error ratio of a tuple state by foreach operations (a few calls for all
    components instead of several operations per component), or None when the tolerances are
    not plain numbers, a component is of low precision, or a transform is active."""
    if not (isinstance(rtol, (int, float)) and isinstance(atol, (int, float))) or not plain_eager():
        return None
    kept = [i for i, e in enumerate(err) if e.numel()]
    if not kept or any(err[i].dtype in LOW_PRECISION for i in kept):
        return None
    scale = torch._foreach_abs([y0[i] for i in kept])
    torch._foreach_maximum_(scale, torch._foreach_abs([y1[i] for i in kept]))
    torch._foreach_mul_(scale, rtol)
    torch._foreach_add_(scale, atol)
    scaled = torch._foreach_abs([err[i] for i in kept])
    torch._foreach_div_(scaled, scale)
    return torch.stack(torch._foreach_max(scaled)).max()


def _scaled_error(err, y0, y1, rtol, atol):
    """``err / (atol + rtol * max(|y0|, |y1|))`` per component."""
    if is_tuple(err):
        return tuple(_scaled_error(e, a, b, component(rtol, i), component(atol, i))
                     for i, (e, a, b) in enumerate(zip(err, y0, y1)))
    return widened(err) / (atol + rtol * torch.maximum(widened(y0).abs(), widened(y1).abs()))


def embedded_error_ratio(y0: Tensor, y1: Tensor, dt: TimeLike, b_err: Sequence[float], ks: Sequence[Tensor],
                         rtol: TimeLike, atol: TimeLike, norm: Callable[[Tensor], Tensor],
                         err_out: Optional[Tensor] = None) -> Tensor:
    """Error estimate of an embedded RK step and its ratio to the tolerance, as a 0-dim tensor.

    One call so that a fused kernel can form ``dt * sum b_err k``, divide by the tolerance and
    reduce (RMS) in a single pass; this reference does ``error_estimate`` then ``error_ratio``.
    The result never requires grad (it only steers the controller).
    """
    fused = _fused_error_ratio(y0, y1, ks, b_err, dt, rtol, atol, norm)  # rk_stage
    if fused is not None:
        return fused
    with torch.no_grad():
        err = error_estimate(dt, b_err, ks, out=err_out)
        return error_ratio(err, y0, y1, rtol, atol, norm)


def adams_increment(dt: TimeLike, coeffs: Sequence[float], history: Sequence[Tensor],
                    out: Optional[Tensor] = None) -> Tensor:
    """Adams history sum ``dt * sum_j coeffs[j] * history[j]`` (history newest first)."""
    return linear_combination(coeffs, history, scale=dt, out=out)


def add(y0: Tensor, dy: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """``y0 + dy`` (end of an Adams / fixed-grid step)."""
    return linear_combination((1.0,), (dy,), base=y0, out=out)


def lerp(y0: Tensor, y1: Tensor, theta: TimeLike, out: Optional[Tensor] = None) -> Tensor:
    """Linear interpolation ``y0 + theta * (y1 - y0)`` between grid values (0 <= theta <= 1)."""
    if is_tuple(y0):
        return join((lerp(a, b, theta, out=component(out, i)) for i, (a, b) in enumerate(zip(y0, y1))), out)
    if _records_grad([y0, y1], theta) or out is None:
        return y0 + theta * (y1 - y0)
    return torch.lerp(y0, y1, float(theta), out=out)


def polynomial(coeffs: Sequence[Tensor], x: TimeLike, out: Optional[Tensor] = None) -> Tensor:
    """Dense output ``sum_p coeffs[p] * x**p`` (coefficients lowest power first)."""
    if is_tuple(coeffs[0]):
        return join((polynomial(_each(coeffs, i), x, out=component(out, i)) for i in range(len(coeffs[0]))), out)
    if _records_grad(coeffs, x) or out is None:
        total = coeffs[0] + x * coeffs[1]
        power = x
        for c in coeffs[2:]:
            power = power * x
            total = total + power * c
        return total
    xf = float(x)
    return linear_combination([xf ** p for p in range(len(coeffs))], coeffs, out=out)


def hermite(y0: Tensor, f0: Tensor, y1: Tensor, f1: Tensor, dt: TimeLike, theta: TimeLike,
            out: Optional[Tensor] = None) -> Tensor:
    """Cubic Hermite interpolation on ``[t0, t0 + dt]`` at fraction ``theta`` from values and slopes."""
    if is_tuple(y0):
        return join((hermite(*parts, dt, theta, out=component(out, i))
                     for i, parts in enumerate(zip(y0, f0, y1, f1))), out)
    h00 = (1 + 2 * theta) * (1 - theta) ** 2
    h10 = theta * (1 - theta) ** 2
    h01 = theta * theta * (3 - 2 * theta)
    h11 = theta * theta * (theta - 1)
    if _records_grad([y0, f0, y1, f1], dt) or _records_grad([], theta) or out is None:
        return h00 * y0 + h10 * dt * f0 + h01 * y1 + h11 * dt * f1
    h = float(dt)
    return linear_combination([float(h00), float(h10) * h, float(h01), float(h11) * h], [y0, f0, y1, f1], out=out)


# ------------------------------------------------------------------------------------------------
# Fused-kernel dispatch: the registered FusedStages (the rk_stage op registers itself) takes over
# the combinations above whenever a non-reference backend fits the operands; when none does (or
# the reference is forced) the plain PyTorch code above runs unchanged, so it stays the
# reference core. Same conventions as above: use the returned tensor; ``out`` is a hint.
# ------------------------------------------------------------------------------------------------


def _fused_terms(coeffs: Sequence[float], ks: Sequence[Tensor], scale: TimeLike):
    """(ks, dt-scaled float coefficients) with zero terms dropped, or None when ``scale`` must stay
    differentiable (gradients with respect to the time grid take the PyTorch path)."""
    if isinstance(scale, Tensor) and scale.requires_grad and torch.is_grad_enabled():
        return None
    h = float(scale)
    kept, weights = [], []
    for c, k in zip(coeffs, ks):
        if c != 0.0:
            kept.append(k)
            weights.append(h * float(c))
    return kept, weights


def _fused_linear_combination(coeffs: Sequence[float], ks: Sequence[Tensor], scale: TimeLike,
                              base: Optional[Tensor], out: Optional[Tensor]) -> Optional[Tensor]:
    """``base + scale * sum_j coeffs[j] ks[j]`` in one fused pass, or None to use the code above
    (also for states too small for fusing to pay, which the provider decides)."""
    if _fused is None or len(ks) == 0 or any_carries_tangent([base, *ks]):
        return None
    terms = _fused_terms(coeffs, ks, scale)
    if terms is None or not terms[0]:
        return None
    return _fused.try_combine(base, terms[0], terms[1], out)


def _fused_error_ratio(y0, y1, ks: Sequence, coeffs: Sequence[float], scale: TimeLike, rtol, atol,
                       norm: Callable) -> Optional[Tensor]:
    """The error ratio from one read-only fused pass per component (the error is never
    materialised): each pass gives the RMS of ``scale * sum_j coeffs[j] ks[j] / (atol + rtol
    max(|y0|, |y1|))`` over its component and the norm combines them. None to use the code above
    (a norm not built from RMS values, per-element tolerances, more terms than the kernels take, a small state,
    or only the reference backend fits)."""
    combine = component_rms_combiner(norm)
    if _fused is None or combine is None or any_carries_tangent([*components(y0), *components(y1)]):
        return None
    y0s, y1s = components(y0), components(y1)
    tols = [(component(rtol, i), component(atol, i)) for i in range(len(y0s))]
    if any(isinstance(v, Tensor) and v.numel() != 1 for pair in tols for v in pair):
        return None
    h = float(scale)
    kept = [(components(k), h * float(c)) for c, k in zip(coeffs, ks) if c != 0.0]
    weights = [c for _, c in kept]
    per_component = [(a, b, [k[i] for k, _ in kept]) for i, (a, b) in enumerate(zip(y0s, y1s))]
    # Decide for every component before any pass, so a state that cannot fuse costs nothing.
    if any(a.numel() and not _fused.can_error_ratio(a, k_i) for a, _, k_i in per_component):
        return None
    rms = [_fused.try_error_ratio(a, b, k_i, weights, float(rt), float(at)) if a.numel()
           else torch.zeros((), dtype=torch.float64, device=a.device)  # skipped by the norm (count 0)
           for (a, b, k_i), (rt, at) in zip(per_component, tols)]
    with torch.no_grad():
        ratio = combine(rms, [a.numel() for a in y0s])
    return ratio.to(y0s[0].dtype)
