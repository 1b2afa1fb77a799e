"""Build and load the test extension: ops only tests and benchmarks call (tests/native/*.cpp),
registered as ``torch.ops.odekern_testing``. Compiled on first use with the flags of the runtime
extension (csrc/build_flags.json) and cached in build/native_tests (ninja rebuilds what changed),
so installed wheels never carry them."""

from __future__ import annotations

import glob
import json
import os

import torch
from torch.utils import cpp_extension

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CSRC = os.path.join(ROOT, "csrc")
BUILD = os.path.join(ROOT, "build", "native_tests")
LIBRARY = "odekern_testing"

_loaded = False


def load():
    """``torch.ops.odekern_testing`` (built first if needed)."""
    global _loaded
    if not _loaded:
        with open(os.path.join(CSRC, "build_flags.json")) as f:
            flags = json.load(f)
        os.makedirs(BUILD, exist_ok=True)
        cpp_extension.load(name=LIBRARY, sources=sorted(glob.glob(os.path.join(HERE, "*.cpp"))),
                           extra_cflags=flags["cxx"] + ["-g0"], extra_ldflags=flags["link"],
                           extra_include_paths=[os.path.join(CSRC, "include"), CSRC],
                           build_directory=BUILD, is_python_module=False, verbose=False)
        _register_fakes()
        _loaded = True
    return getattr(torch.ops, LIBRARY)


def _register_fakes() -> None:
    """Shapes for torch.compile / opcheck, as the runtime ops have theirs (odekern/ops/*/cpp.py)."""

    @torch.library.register_fake(f"{LIBRARY}::nmode_pe_scalar_reference")
    def _(y0, g, t0, t1, rtol, atol, max_num_steps, grad_y1, grad_f0, grad_f1):
        return torch.empty_like(y0), torch.empty_like(y0), torch.empty_like(y0)

    for floor in ("nmode_sin_sq_floor", "nmode_sincos_floor"):
        @torch.library.register_fake(f"{LIBRARY}::{floor}")
        def _(x, reps):
            return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake(f"{LIBRARY}::nmode_adjoint_attempt_floor")
    def _(x, attempts, control):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake(f"{LIBRARY}::nmode_inv_fifth_root")
    def _(x):
        return torch.empty_like(x, memory_format=torch.contiguous_format)
