"""The one place that decides which backend runs an op.

Backends: ``reference`` (pure PyTorch, always), ``cpu`` (C++ extension), ``cuda`` (CUDA
extension), ``triton`` (Triton kernels; on CPU tensors only under ``TRITON_INTERPRET=1``).

Choice, first match wins:
1. an explicit ``backend=`` argument other than ``"auto"``;
2. the innermost ``odekern.use_backend(name)`` context;
3. the ``ODEKERN_BACKEND`` environment variable;
4. the per-device priority: CPU tensors ``cpu -> reference``; CUDA tensors
   ``cuda -> triton -> reference``.

Each op registers, per backend, an implementation plus ``supports(**inputs) -> list[str]``
giving the reasons it refuses those inputs (empty list = accepts). A forced backend that
refuses raises; ``auto`` moves down the priority list. When nothing fits, the error lists
every backend and why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import threading
from typing import Callable, Iterator

import torch

from odekern import _ext
from odekern._choices import is_choice

BACKEND_NAMES = ("reference", "cpu", "cuda", "triton")
PRIORITY = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}

_local = threading.local()


def _triton_unavailable_reason() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"triton not importable ({type(exc).__name__}: {exc})"
    return None


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def availability() -> dict[str, bool | str]:
    """Library-level availability: ``True`` or the reason a backend cannot run at all."""
    out: dict[str, bool | str] = {"reference": True}
    out["cpu"] = True if _ext.HAS_EXT else (_ext.LOAD_ERROR or "extension not built")
    if torch.version.cuda is None:
        out["cuda"] = "torch built without CUDA"
    elif not _ext.HAS_CUDA_EXT:
        out["cuda"] = "odekern was built without its CUDA kernels"
    elif not torch.cuda.is_available():
        out["cuda"] = "no CUDA device visible"
    else:
        out["cuda"] = True
    reason = _triton_unavailable_reason()
    if reason is not None:
        out["triton"] = reason
    elif not torch.cuda.is_available() and not triton_interpret():
        out["triton"] = "no CUDA device (set TRITON_INTERPRET=1 to run on CPU tensors)"
    else:
        out["triton"] = True
    return out


def _device_reason(name: str, device: torch.device) -> str | None:
    """Why backend ``name`` cannot run on tensors of ``device`` (None = it can)."""
    kind = device.type
    if name == "reference":
        return None
    if name == "cpu":
        return None if kind == "cpu" else f"the cpu backend needs CPU tensors, got {kind}"
    if name == "cuda":
        return None if kind == "cuda" else f"the cuda backend needs CUDA tensors, got {kind}"
    if name == "triton":
        if kind == "cuda" or (kind == "cpu" and triton_interpret()):
            return None
        return f"triton needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {kind}"
    return f"unknown backend {name!r}"


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """Why backend ``name`` cannot run anything on tensors of ``device`` here (None = it can).
    A forced backend that fails this is an error, never a silent fallback."""
    avail = availability().get(name, f"unknown backend {name!r}")
    return str(avail) if avail is not True else _device_reason(name, device)


@dataclasses.dataclass(frozen=True)
class OpBackend:
    op: str
    name: str
    fn: Callable
    supports: Callable[..., list[str]]


_REGISTRY: dict[str, dict[str, OpBackend]] = {}
# select_cached's decisions; emptied whenever the registry changes.
_SELECTION_CACHE: dict[tuple, OpBackend | None] = {}
# optional_module's results: the module, or why it cannot be imported.
_OPTIONAL_MODULES: dict[str, object] = {}


def register(op: str, name: str, fn: Callable, supports: Callable[..., list[str]] | None = None) -> None:
    """Register ``fn`` as backend ``name`` of ``op``; ``supports(**inputs)`` lists refusals."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {name!r}")
    _REGISTRY.setdefault(op, {})[name] = OpBackend(op, name, fn, supports or (lambda **_: []))
    _SELECTION_CACHE.clear()


def registered(op: str) -> dict[str, OpBackend]:
    """A copy of ``op``'s backends by name (changing it changes nothing; see ``replaced``)."""
    return dict(_REGISTRY.get(op, {}))


@contextlib.contextmanager
def replaced(op: str, name: str, fn: Callable) -> Iterator[OpBackend]:
    """Run ``fn`` instead of backend ``name``'s implementation of ``op`` inside the block (its
    ``supports`` stays). For tests that count or inspect kernel calls; yields the original entry."""
    original = _REGISTRY[op][name]
    _REGISTRY[op][name] = dataclasses.replace(original, fn=fn)
    _SELECTION_CACHE.clear()
    try:
        yield original
    finally:
        _REGISTRY[op][name] = original
        _SELECTION_CACHE.clear()


def optional_module(name: str) -> object:
    """Module ``name``, imported on first use, or the reason (a string) it cannot be imported.
    Backends needing an optional dependency (Triton) live in such modules, so that a missing or
    broken dependency makes that backend refuse with the reason instead of breaking
    ``import odekern``."""
    if name not in _OPTIONAL_MODULES:
        try:
            _OPTIONAL_MODULES[name] = importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any import failure becomes a refusal reason
            _OPTIONAL_MODULES[name] = f"{name} not importable ({type(exc).__name__}: {exc})"
    return _OPTIONAL_MODULES[name]


def check_backend_name(backend: str | None, argname: str = "backend") -> None:
    if backend is None:
        return
    if not is_choice(backend, ("auto", *BACKEND_NAMES)):
        raise ValueError(f"{argname} must be 'auto' or one of {BACKEND_NAMES}, got {backend!r}")


def requested_backend(backend: str | None = None) -> str | None:
    """The forced backend name in effect (argument > context > env), or None for auto."""
    check_backend_name(backend)
    if backend not in (None, "auto"):
        return backend
    stack = getattr(_local, "stack", [])
    if stack:
        return stack[-1]
    env = os.environ.get("ODEKERN_BACKEND", "").strip()
    if env and env != "auto":
        check_backend_name(env, "ODEKERN_BACKEND")
        return env
    return None


def refusals(op: str, name: str, device: torch.device, **inputs) -> list[str]:
    """Every reason backend ``name`` cannot run ``op`` on these inputs (empty = it can)."""
    avail = availability().get(name, f"unknown backend {name!r}")
    if avail is not True:
        return [str(avail)]
    dev = _device_reason(name, device)
    if dev is not None:
        return [dev]
    impl = _REGISTRY.get(op, {}).get(name)
    if impl is None:
        return [f"op {op!r} has no {name} implementation"]
    return list(impl.supports(**inputs))


def select(op: str, device: torch.device, backend: str | None = None, **inputs) -> OpBackend:
    """Pick the backend that runs ``op`` for tensors on ``device``.

    ``inputs`` are passed to each candidate's ``supports``; raises RuntimeError listing every
    backend's reasons when none fits (or when a forced backend refuses).
    """
    forced = requested_backend(backend)
    if forced is not None:
        reasons = refusals(op, forced, device, **inputs)
        if reasons:
            raise RuntimeError(
                f"odekern: backend {forced!r} was requested for {op} but cannot run it: "
                + "; ".join(reasons)
            )
        if forced in ("cpu", "cuda"):
            _ext.warn_if_missing()
        return _REGISTRY[op][forced]
    tried: dict[str, list[str]] = {}
    for name in PRIORITY.get(device.type, ("reference",)):
        reasons = refusals(op, name, device, **inputs)
        if not reasons:
            if name == "reference" and device.type == "cpu":
                _ext.warn_if_missing()
            return _REGISTRY[op][name]
        tried[name] = reasons
    detail = "; ".join(f"{n}: {', '.join(r)}" for n, r in tried.items())
    raise RuntimeError(f"odekern: no backend can run {op} on {device.type} tensors ({detail})")


def select_or_none(op: str, device: torch.device, forced: str | None, **inputs) -> OpBackend | None:
    """``select``, but None when no backend fits these particular inputs (e.g. more operands than
    a kernel takes), so a caller with its own PyTorch path can use it. A forced backend that
    cannot run on ``device`` at all still raises: a request is never silently ignored."""
    if forced is not None:
        reason = unavailable_reason(forced, device)
        if reason is not None:
            raise RuntimeError(f"odekern: backend {forced!r} was requested but cannot run on "
                               f"{device} tensors here: {reason}")
    try:
        return select(op, device, forced, **inputs)
    except RuntimeError:
        return None


def clear_selection_cache() -> None:
    """Forget select_cached's decisions (done on every registration; tests that change what a
    backend's ``supports`` depends on call it too)."""
    _SELECTION_CACHE.clear()


def select_cached(op: str, device: torch.device, forced: str | None, key: tuple, **inputs) -> OpBackend | None:
    """``select_or_none`` for hot loops, memoised per (op, device, forced backend, Triton
    interpreter flag, ``key``): ``key`` must capture everything about ``inputs`` that the
    backends' ``supports`` look at (dtype, number of operands, ...)."""
    full_key = (op, device, forced, triton_interpret(), key)
    try:
        return _SELECTION_CACHE[full_key]
    except KeyError:
        chosen = _SELECTION_CACHE[full_key] = select_or_none(op, device, forced, **inputs)
        return chosen


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force backend ``name`` (or ``"auto"``) for every op inside the ``with`` block, and for the
    backward pass of every solve started inside it (which runs after the block has exited)."""
    check_backend_name(name, "name")
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(None if name == "auto" else name)
    try:
        yield
    finally:
        stack.pop()


def use_requested_backend(name: str | None) -> contextlib.AbstractContextManager:
    """``use_backend(name)``, or no change for None: how a backward pass re-enters the backend
    its forward pass was forced to (``requested_backend()`` then), because backward runs after
    the ``use_backend`` block has exited (and, for CUDA tensors, on autograd's own thread)."""
    return use_backend(name) if name is not None else contextlib.nullcontext()


def backends() -> dict[str, bool | str]:
    """Which backends can run here: ``True`` or the reason they cannot."""
    return availability()
