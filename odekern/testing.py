"""Tolerances, assertion helpers and input factories shared by tests/ and bench/.

Tolerances live here and nowhere else: every comparison of one implementation with another
(a backend with the reference, odekern with torchdiffeq, a network with its official code) takes
a named one below, with its reason. A test of a solve against an exact solution states its
accuracy requirement beside the solve, as the multiple of the rtol/atol it sets itself. Rule for low precision (flash-attention's): a kernel's
error against the float64 reference must be at most ``LOW_PRECISION_FACTOR`` times the error
of the reference itself computed in that low precision.
"""

from __future__ import annotations

import collections
import ctypes
import gc

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from odekern.ops.nmode_solve import reference as nmode_reference

# (rtol, atol) for "same algorithm, different implementation" comparisons: rounding only.
ROUNDING_TOL: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 2e-6),
    torch.float16: (5e-3, 5e-3),
    torch.bfloat16: (3e-2, 3e-2),
}

# (rtol, atol) for comparisons against a *different* library or algorithm (e.g. torchdiffeq,
# continuous adjoint vs discrete backprop) where step sequences or quadrature differ slightly.
CROSS_LIBRARY_TOL: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-6, 1e-8),
    torch.float32: (1e-4, 1e-5),
}

# (rtol, atol) for a whole adaptive solve held in float16/bfloat16 against float64: rounding
# accumulates over the steps (a few times one rounding's tolerance).
LOW_PRECISION_SOLVE_TOL: dict[torch.dtype, tuple[float, float]] = {
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (1e-1, 1e-1),
}

LOW_PRECISION_FACTOR = 2.0

# Comparisons of whole nmODE solves (tests/ops), each with the reason for its size:
# - step sizes of two implementations of one adaptive solve: they come from the error estimate,
#   a difference of nearly equal stage sums (~rtol of the state), so last-bit differences in f
#   grow by ~1/rtol (1e-7) there;
STEP_SIZE_RTOL = 1e-6
# - gradients of a solve against autograd through the same steps (many steps, a reduction over
#   the state for g): rounding accumulated over the solve;
SOLVE_GRADIENT_ATOL: dict[torch.dtype, float] = {torch.float64: 1e-10, torch.float32: 2e-5}
# - a continuous adjoint against a discrete gradient at rtol 1e-7 (different step sequences):
#   both within the solver's accuracy of the true gradient; per-element control's last step
#   ends in a dense output that is not error-controlled, ~50x looser;
ADJOINT_VS_DISCRETE_ATOL = {"global": 1e-6, "per_element": 5e-5}
# - gradcheck of a solve against finite differences: the checkpoint (exact) gradient is that of
#   the discrete solve, so only the differences' rounding and the moving step sizes (of the order
#   of the local error) remain; the adjoint is the ODE's gradient, off by the discretisation;
SOLVE_GRADCHECK_TOL = {"checkpoint": {"atol": 1e-5, "rtol": 1e-3}, "adjoint": {"atol": 5e-4, "rtol": 5e-3}}
# - a kernel backend's solve and its gradients against the reference's, per dtype: the kernels'
#   polynomial sin^2 against torch.sin, accumulated over the steps (float64: 1.8e-12 measured on
#   the CNM-length solves of the shape tests);
BACKEND_SOLVE_ATOL = {torch.float32: 1e-5, torch.float64: 1e-10}
# - the same comparison for outputs and gradients of one loss, relative to the expected tensor's
#   largest entry (grad_g sums the contributions of every repeat of g over the batch): see
#   backend_peak_atol;
BACKEND_PEAK_ATOL = {torch.float32: 5e-6, torch.float64: 1e-10}
# - the same on a GPU, where float32 kernels contract multiply-adds into FMAs that the reference's
#   torch ops round twice: ten times the CPU's float32 bound;
BACKEND_PEAK_ATOL_GPU = {torch.float32: 5e-5, torch.float64: 1e-10}
# - odekern's nmODE module against torchdiffeq's continuous adjoint at rtol 1e-7 on states up to
#   |y0| ~ 4: the exact gradient carries the forward solve's own error (measured 2.6e-6 off the
#   true gradient), the continuous adjoint lands closer (1.7e-8, like torchdiffeq's);
GRADIENT_VS_ODEINT_ADJOINT_ATOL = {"checkpoint": 1e-5, "adjoint": 1e-6}
# - the vectorised CPU lane paths against the scalar per-element solver (float64), absolute and
#   relative to max(largest value, 1): gradients of long solves are exponentially small (e^-t)
#   while their rounding stays at the cotangent's scale (1);
VECTORISED_VS_SCALAR_REL_FP64 = 1e-12
# - the exact gradient against backprop through torchdiffeq on the same steps (float64): the
#   same arithmetic in another order.
EXACT_GRADIENT_TOL_FP64 = {"rtol": 1e-9, "atol": 1e-11}


def backend_peak_atol(expected: torch.Tensor) -> float:
    """BACKEND_PEAK_ATOL (BACKEND_PEAK_ATOL_GPU for a CUDA tensor) of ``expected``'s dtype times
    its largest ``|entry|`` (at least 1)."""
    rel = (BACKEND_PEAK_ATOL_GPU if expected.is_cuda else BACKEND_PEAK_ATOL)[expected.dtype]
    return peak_relative_tol(expected, rel, floor=rel)["atol"]


# gradcheck (float64, finite differences with eps 1e-6) of a whole odeint solve: the
# differences' own rounding (~1e-10 / eps) and, for an adaptive method, step sizes that move
# with the inputs by the order of the local error.
ODEINT_GRADCHECK_TOL = {"eps": 1e-6, "atol": 1e-5, "rtol": 1e-4}
# gradcheck of a whole network (float64): many more operations between input and output.
NETWORK_GRADCHECK_TOL = {"eps": 1e-6, "atol": 1e-6}
# Two float64 evaluations of one formula whose operations run in another order (a module's
# returned f against its right-hand side evaluated again, a closed-form corruption): a few ulps.
SAME_FORMULA_ATOL_FP64 = 1e-12
# A fused RMS error ratio against the reference's: float64 partial sums in another order.
ERROR_RATIO_RTOL = 1e-5
# Tableau coefficients given as decimals in a reference against exact fractions: the decimals'
# own rounding.
DECIMAL_COEFFICIENT_TOL = {"rtol": 1e-13, "atol": 1e-13}

# Networks against their official (torchdiffeq-built) code in float64, relative to each tensor's
# largest entry (``peak_relative_tol``): the same solver steps, so rounding only;
SAME_STEPS_REL_FP64 = 1e-9
# and gradients from continuous adjoints, whose backward steps differ between the libraries:
# within the solve tolerance of the tensor's scale.
ADJOINT_GRADIENT_REL = 1e-5


def peak_relative_tol(expected: torch.Tensor, rel: float, floor: float = 1e-9) -> dict[str, float]:
    """rtol ``rel`` and atol ``rel`` times the largest ``|expected|`` (at least ``floor``): for
    tensors whose entries span many scales (gradients), where an entry near zero carries the
    rounding of the large ones (a conv bias before a train-mode norm has a true gradient of 0)."""
    return {"rtol": rel, "atol": max(rel * expected.abs().max().item(), floor)}


def peak_relative_error(actual: torch.Tensor, expected: torch.Tensor, floor: float = 1e-3) -> float:
    """The largest ``|actual - expected|`` over the largest ``|expected|`` (plus ``floor``, so a
    value near zero everywhere is judged absolutely): one number per compared tensor, what the
    property tests hold to a bound."""
    return ((actual - expected).abs().max() / (expected.abs().max() + floor)).item()


# A solve against an independent hand-written low-order integration of the same equations on a
# fine grid (Heun, 100 steps): that integrator's own error, O(1e-4).
INDEPENDENT_INTEGRATOR_TOL = {"rtol": 1e-3, "atol": 1e-3}

# Order conditions of a tableau published as decimals or as rational approximations (tsit5,
# dopri8): they hold to the digits given, not exactly. (Exact-fraction tableaus must give 0.)
ORDER_CONDITION_TOL = 1e-13


def tol(dtype: torch.dtype, kind: str = "rounding") -> dict[str, float]:
    table = {"rounding": ROUNDING_TOL, "cross": CROSS_LIBRARY_TOL, "solve": LOW_PRECISION_SOLVE_TOL}[kind]
    rtol, atol = table[dtype]
    return {"rtol": rtol, "atol": atol}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, kind: str = "rounding", msg: str = "", **over) -> None:
    """``torch.testing.assert_close`` with odekern's per-dtype tolerances (overridable)."""
    kw = tol(expected.dtype if expected.dtype in ROUNDING_TOL else torch.float32, kind)
    kw.update(over)
    torch.testing.assert_close(actual, expected, msg=(lambda m: f"{msg}\n{m}") if msg else None, **kw)


def make_generator(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0, scale: float = 1.0,
          requires_grad: bool = False) -> torch.Tensor:
    """Deterministic normal tensor (independent of the global RNG state)."""
    x = torch.randn(*shape, generator=make_generator(seed), dtype=torch.float64) * scale
    return x.to(dtype).requires_grad_(requires_grad)


class NmodeRHS(torch.nn.Module):
    """The nmODE right-hand side -y + sin^2(y + g) as a plain user module (g a parameter), for
    comparing the fused nmode_solve with generic solvers; counts its calls in ``nfe``."""

    def __init__(self, g: torch.Tensor):
        super().__init__()
        self.g = torch.nn.Parameter(g.clone())
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return nmode_reference.rhs(y, self.g)


def non_contiguous(x: torch.Tensor) -> torch.Tensor:
    """Same values as ``x`` but laid out non-contiguously (a strided view of a bigger tensor)."""
    if x.dim() == 0:
        return x
    big = torch.empty(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device)
    view = big[..., ::2]
    view.copy_(x.detach())
    assert not view.is_contiguous() or x.numel() <= 1
    return view.requires_grad_(x.requires_grad)


# --- Peak memory on CPU (used by the gradient-mode memory tests and bench/bench_stages.py) ---
# glibc's mallinfo2 counts every byte malloc has handed out and not taken back (torch's CPU
# allocator is plain malloc/posix_memalign), so differences of it are deterministic for a
# deterministic program: a memory measure that needs no wall clock and no GPU.


def malloc_in_use_bytes() -> int | None:
    """Bytes currently allocated through malloc in this process, or None off glibc."""
    class _MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


class PeakMemory:
    """Peak of ``malloc_in_use_bytes`` above its value at ``__enter__``, sampled before and after
    every forward call of the watched modules (e.g. an ODE's RHS, which runs throughout forward,
    backward recomputation and adjoint solves) and at ``__exit__``::

        with PeakMemory() as mem:
            mem.watch(rhs_module)
            loss = odeint(rhs_module, y0, t).sum(); loss.backward()
        mem.peak_bytes
    """

    def __init__(self):
        self.baseline = 0
        self.peak_bytes = 0
        self._handles = []

    @staticmethod
    def available() -> bool:
        return malloc_in_use_bytes() is not None

    def sample(self, *_unused) -> None:
        now = malloc_in_use_bytes()
        if now is not None:
            self.peak_bytes = max(self.peak_bytes, now - self.baseline)

    def watch(self, module: torch.nn.Module) -> None:
        self._handles.append(module.register_forward_pre_hook(lambda *a: self.sample()))
        self._handles.append(module.register_forward_hook(lambda *a: self.sample()))

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        self.baseline = malloc_in_use_bytes() or 0
        self.peak_bytes = 0
        return self

    def __exit__(self, *exc) -> None:
        self.sample()
        for h in self._handles:
            h.remove()
        self._handles.clear()


# Adaptive solvers in low precision: float32 error estimates carry rounding noise, so two correct
# implementations pick slightly different step sizes and their solutions differ by up to the
# global error, not by rounding. They are compared by accuracy against a float64 solution instead:
# the candidate's error must be within LOW_PRECISION_FACTOR x the other implementation's error, or
# below ADAPTIVE_GLOBAL_ERROR_FACTOR x the requested per-step tolerance. A tolerance finer than
# the candidate's dtype resolves is held at RESOLVABLE_RTOL_EPS of its machine epsilon instead:
# there the steps are as small as rounding allows, and what is left is rounding accumulated over
# them (float32 at rtol 1e-7: gradients ~12 eps off the float64 answer).
ADAPTIVE_GLOBAL_ERROR_FACTOR = 10.0
RESOLVABLE_RTOL_EPS = 10.0


def assert_adaptive_accuracy_ok(candidate: torch.Tensor, other: torch.Tensor, exact_fp64: torch.Tensor,
                                rtol: float, atol: float) -> None:
    err = (candidate.double() - exact_fp64).abs().max().item()
    other_err = (other.double() - exact_fp64).abs().max().item()
    resolvable = max(rtol, RESOLVABLE_RTOL_EPS * torch.finfo(candidate.dtype).eps)
    budget = ADAPTIVE_GLOBAL_ERROR_FACTOR * (atol + resolvable * exact_fp64.abs().max().item())
    assert err <= max(LOW_PRECISION_FACTOR * other_err, budget), (
        f"error {err:.3e} vs float64 exceeds both {LOW_PRECISION_FACTOR}x the other implementation's "
        f"{other_err:.3e} and the tolerance budget {budget:.3e}"
    )


class SavedTensorBytes:
    """``with SavedTensorBytes() as saved: ...`` then ``saved.nbytes``: bytes of the distinct
    storages autograd saves for backward inside the block (views of one tensor count once).
    A deterministic memory measure shared by tests and benchmarks."""

    def __init__(self):
        self.nbytes = 0
        self._seen: set[int] = set()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self._seen:
            self._seen.add(storage.data_ptr())
            self.nbytes += storage.nbytes()
        return t

    def __enter__(self) -> "SavedTensorBytes":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


class OpObserver:
    """Base of the measures that watch every operator below autograd (a TorchDispatchMode, so
    autograd's backward ops are seen too): subclasses implement ``_observe(func, out)`` (``out``:
    the op's result, for an in-place op such as ``copy_`` its destination)."""

    def __init__(self):
        observer = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                observer._observe(func, out)
                return out

        self._mode = _Mode()

    def _observe(self, func, out) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)


class OpCounter(OpObserver):
    """``with OpCounter() as ops: ...`` then ``ops.counts["aten.cat"]`` (a Counter by op name,
    e.g. ``"odekern.rk_combine_out"``) and ``ops.largest["aten.cat"]``: the most elements one call
    of that op produced. Tells whether a solve concatenates its state, not just whether Python
    called torch.cat."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()
        self.largest: collections.Counter = collections.Counter()

    def _observe(self, func, out) -> None:
        name = str(func.overloadpacket)
        self.counts[name] += 1
        outs = out if isinstance(out, (tuple, list)) else (out,)
        size = max((o.numel() for o in outs if isinstance(o, torch.Tensor)), default=0)
        self.largest[name] = max(self.largest[name], size)


class LiveTensorBytes(OpObserver):
    """``with LiveTensorBytes() as live: ...`` then ``live.peak_bytes``: the most bytes of tensor
    storage created inside the block and alive at the same time, exact at operator granularity
    (every op is seen, and a weak reference tells when each storage is freed). Deterministic,
    unlike sampling malloc; it misses only scratch memory a kernel allocates and frees
    internally (e.g. a convolution's workspace)."""

    def __init__(self):
        super().__init__()
        self._live: dict[int, tuple] = {}
        self.now_bytes = 0
        self.peak_bytes = 0

    def _observe(self, func, out) -> None:
        for key in [k for k, (ref, _) in self._live.items() if ref.expired()]:
            self.now_bytes -= self._live.pop(key)[1]
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not t.is_meta:
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key not in self._live and storage.nbytes() > 0:
                    self._live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.now_bytes += storage.nbytes()
        self.peak_bytes = max(self.peak_bytes, self.now_bytes)
