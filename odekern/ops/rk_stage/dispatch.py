"""The solvers' hot-loop route into rk_stage: cheap per call, and only where fusing pays.

A solver forms several linear combinations per step. Going through the public functions costs a
backend selection (``odekern.dispatch.select``: availability, override, ``supports``) and a
``torch.library`` custom-op call per combination, ~0.2-0.3 ms of Python: more than the
arithmetic on a small state. So, for the solvers only (``odekern/solvers/stages.py``):

- the backend decision comes from ``odekern.dispatch.select_cached`` (per op, device, dtype,
  forced backend, Triton interpreter flag and, for the error pass, the number of stages:
  everything ``supports`` looks at); operands of mixed dtypes/devices take the full selection;
- without autograd recording, the chosen backend's kernel is called directly (the function
  registered with ``backends``, i.e. for ``cpu`` the extension op plus contiguity handling),
  skipping the custom-op wrapper. Under ``torch.compile`` tracing the custom op stays, so
  graphs see ``odekern::rk_combine_out`` as before;
- in automatic selection, states smaller than ``MIN_NUMEL`` keep the plain PyTorch path.
  A forced backend (``backend=``, ``use_backend``, ``ODEKERN_BACKEND``) is always honoured.

The public ``rk_combine`` / ``rk_error_ratio`` keep their full checks; this module assumes the
solver's operands (same shape as the state, float coefficients).
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import torch

from odekern.dispatch import OpBackend, requested_backend, select_cached, select_or_none
from odekern.ops.rk_stage import op
from odekern.solvers import stages

# Smallest state (elements) for which automatic selection uses the fused kernels, per route.
# Measured with ``bench/bench_stages.py::test_dispatch_crossover`` (stages.linear_combination,
# base + 3 k tensors, float32, 1 thread, minima over rounds, fused forced vs reference forced,
# on a 2-core x86 machine): with the direct call above the fused out= route beats
# torch's mul/add_ chain at every size from 2^6 elements on (one kernel against four ops:
# 2^6: 41 vs 57 us, 2^20: 0.79 vs 1.6 ms), so it gets no threshold. The autograd route pays
# the custom op's Python wrapper and autograd node (~0.35 ms) against four small autograd ops
# (~0.12 ms): 2^16: 447 vs 214 us, 2^18: 473 vs 546 us, so it starts at 2^17 elements.
# Override by assigning to this dict (tests do); 0 disables the threshold.
MIN_NUMEL = {"no_grad": 0, "grad": 1 << 17}

# A combination of one term (``base + c k`` or ``c k``) is a single ``torch.add`` / ``torch.mul``,
# which beats a kernel call at every size (float32, 1 thread: 2^10 elements 1.5 against 3.2 us,
# 2^15 5.0 against 7.1 us, 2^20 157 against 179 us), so automatic selection leaves it to PyTorch.
MIN_TERMS = 2


def backend_for(which: str, like: torch.Tensor, ks: Sequence[torch.Tensor],
                forced: Optional[str] = None) -> Optional[OpBackend]:
    """The non-reference backend that runs ``which`` (op.COMBINE / op.ERROR_RATIO) on these
    operands, or None (then the solver's PyTorch code runs). ``forced``: the backend override in
    effect (``requested_backend()``). Cached; see module docstring."""
    if not all(k.dtype == like.dtype and k.device == like.device for k in ks):
        # Mixed operands are rare and are not what the cache key describes: select afresh.
        chosen = select_or_none(which, like.device, forced, y=like, ks=list(ks))
    else:
        # The error pass's stage capacity differs per backend, so its decision depends on len(ks).
        key = (like.dtype, len(ks) if which == op.ERROR_RATIO else None)
        chosen = select_cached(which, like.device, forced, key, y=like, ks=list(ks))
    return None if chosen is None or chosen.name == "reference" else chosen


def _worth_fusing(numel: int, recording: bool, forced: Optional[str], n_terms: int = MIN_TERMS) -> bool:
    return forced is not None or (n_terms >= MIN_TERMS and numel >= MIN_NUMEL["grad" if recording else "no_grad"])


def try_combine(base: Optional[torch.Tensor], ks: Sequence[torch.Tensor], coeffs: Sequence[float],
                out: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``base + sum_j coeffs[j] ks[j]`` fused (``out`` written when nothing records a gradient),
    or None when the solver should use its PyTorch code."""
    like = base if base is not None else ks[0]
    recording = torch.is_grad_enabled() and (like.requires_grad or any(k.requires_grad for k in ks))
    forced = requested_backend(None)
    if not _worth_fusing(like.numel(), recording, forced, len(ks)):
        return None
    chosen = backend_for(op.COMBINE, like, ks, forced)
    if chosen is None:
        return None
    coeffs = [float(c) for c in coeffs]
    if recording:
        return op.rk_combine(like, list(ks), coeffs, base is not None, chosen.name)
    if out is None:
        out = torch.empty_like(like, memory_format=torch.contiguous_format)
    if torch.compiler.is_compiling():
        op.rk_combine_out(base, list(ks), coeffs, out, chosen.name)
    else:
        chosen.fn(base, list(ks), coeffs, out)
    return out


def bind_combine(like: torch.Tensor):
    """For a solve on operands like ``like`` (same dtype, device and size): the kernel that
    ``try_combine`` would run on unrecorded operands, as ``kernel(base, ks, coeffs, out)`` (None:
    the PyTorch code), whether recorded operands may be fused, and whether the kernel also takes
    single-term combinations (only for a forced backend: ``MIN_TERMS``). The solvers bind this
    once per solve (``stages.SolveStages``), so the backend in force when the solve starts is
    used."""
    forced = requested_backend(None)
    fuse_recorded = _worth_fusing(like.numel(), True, forced)
    fuse_single = _worth_fusing(like.numel(), False, forced, n_terms=1)
    if not _worth_fusing(like.numel(), False, forced):
        return None, fuse_recorded, fuse_single
    chosen = backend_for(op.COMBINE, like, [like], forced)
    return (None if chosen is None else chosen.fn), fuse_recorded, fuse_single


def _error_ratio_backend(y0: torch.Tensor, ks: Sequence[torch.Tensor]) -> Optional[OpBackend]:
    forced = requested_backend(None)
    if not _worth_fusing(y0.numel(), False, forced) or not ks:
        return None
    return backend_for(op.ERROR_RATIO, y0, ks, forced)


def can_error_ratio(y0: torch.Tensor, ks: Sequence[torch.Tensor]) -> bool:
    """Whether ``try_error_ratio`` would run a fused pass on these operands."""
    return _error_ratio_backend(y0, ks) is not None


def try_error_ratio(y0: torch.Tensor, y1: torch.Tensor, ks: Sequence[torch.Tensor], coeffs: Sequence[float],
                    rtol: float, atol: float) -> Optional[torch.Tensor]:
    """The fused RMS error ratio (0-dim float64, no gradient) or None; operands are detached."""
    chosen = _error_ratio_backend(y0, ks)
    if chosen is None:
        return None
    with torch.no_grad():
        args = (y0.detach(), y1.detach(), [k.detach() for k in ks], [float(c) for c in coeffs],
                float(rtol), float(atol))
        if torch.compiler.is_compiling():
            return op.rk_error_ratio(*args, chosen.name)
        ratio = chosen.fn(*args)
        return ratio.to(device=y0.device, dtype=torch.float64).reshape(())


# This module is the solvers' FusedStages provider (try_combine, bind_combine, can_error_ratio,
# try_error_ratio).
stages.register_fused_stages(sys.modules[__name__])
