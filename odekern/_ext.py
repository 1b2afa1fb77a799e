"""Tolerant loader for the compiled extension ``odekern._C``.

odekern always works without it (the pure-PyTorch reference backend); a failed or skipped
build only warns, once, at first use of a backend that needs it.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch  # noqa: F401 - loads libc10/libtorch, which odekern._C links against

from odekern._warnings import warn_caller

# What to run when the extension is missing or stale (docs/install.md).
REBUILD = "bash scripts/install.sh, or pip install --no-build-isolation -e . where torch is installed"


def _load():
    # find_spec first: `from odekern import _C` on a tree without the compiled file reports
    # "cannot import name '_C' from partially initialized module 'odekern' (most likely due
    # to a circular import)", which reads as a bug in odekern rather than a missing build.
    if importlib.util.find_spec("odekern._C") is None:
        raise ImportError(f"no compiled extension odekern/_C*.so: it was not built (an install with "
                          f"ODEKERN_SKIP_EXT=1, without a C++ compiler, or a source checkout); build it with "
                          f"{REBUILD}")
    return importlib.import_module("odekern._C")


try:
    _C = _load()

    HAS_EXT: bool = True
    HAS_CUDA_EXT: bool = bool(_C.with_cuda())
    LOAD_ERROR: str | None = None
except Exception as exc:  # noqa: BLE001 - ImportError, or an undefined symbol in a stale build
    _C = None
    HAS_EXT = False
    HAS_CUDA_EXT = False
    LOAD_ERROR = f"odekern._C not loaded ({type(exc).__name__}: {exc})"

_warned = False


def warn_if_missing() -> None:
    """Warn once per process that the C++ kernels are unavailable."""
    global _warned
    if not HAS_EXT and not _warned:
        _warned = True
        warn_caller(f"{LOAD_ERROR}; odekern falls back to its pure-PyTorch reference backend. "
                    f"For the fused kernels run {REBUILD}.", RuntimeWarning)


def build_info() -> dict:
    if not HAS_EXT:
        return {"extension": False, "reason": LOAD_ERROR}
    return {
        "extension": True,
        "with_cuda": HAS_CUDA_EXT,
        "cpu_isa": _C.cpu_isa(),
        "built_against_torch": _C.torch_version,
    }
