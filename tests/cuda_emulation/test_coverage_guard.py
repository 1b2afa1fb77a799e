"""Coverage guard: every ``__global__`` kernel in csrc/ is executed by the emulation tests, and
every rk_stage NK instantiation, in both dtypes. The guard runs one small instance of every
parameter combination that selects a kernel (the same lists the kernel tests sweep, see
kernel_checks.py) and compares the launched kernels with the csrc/ sources, so a new kernel
without a test fails here."""

from __future__ import annotations

import glob
import itertools
import os
import re

import emu_build
import torch
from kernel_checks import DTYPES, GRADIENTS, NMODE_CASES, RK_KINDS, RK_NKS, nmode_check, rk_check

_GLOBAL = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)")


def kernels_in_sources() -> set[str]:
    names = set()
    for path in glob.glob(os.path.join(emu_build.CSRC, "**", "*.cu"), recursive=True):
        with open(path) as f:
            names |= set(_GLOBAL.findall(f.read()))
    return names


def launched(emu) -> dict[str, int]:
    out = {}
    for line in emu.emu_launches().splitlines():
        name, count = line.rsplit("\t", 1)
        out[name] = int(count)
    return out


def _base(name: str) -> str:
    return name.split("<", 1)[0].rsplit("::", 1)[-1]


def test_every_cuda_kernel_and_instantiation_is_exercised(emu):
    for case, gradient, dtype in itertools.product(NMODE_CASES, GRADIENTS, DTYPES):
        nmode_check(emu, case, gradient, dtype, 130, 65)
    for kind, nk, dtype in itertools.product(RK_KINDS, RK_NKS, DTYPES):
        rk_check(emu, kind, nk, dtype, 300)
    ran = launched(emu)
    in_sources = kernels_in_sources()
    assert {"list_fwd_kernel", "bwd_kernel", "combine_kernel", "finalize_kernel"} <= in_sources
    missing = in_sources - {_base(n) for n in ran}
    assert not missing, f"CUDA kernels in csrc/ that no emulation test runs: {sorted(missing)}"
    # Every template instantiation the launchers can pick: NK 1..13 per rk kernel and dtype,
    # every method of the nmode kernels templated on it.
    for dtype in ("float", "double"):
        for nk in RK_NKS:
            for name in (f"combine_kernel<{dtype}, {nk}, true>", f"combine_kernel<{dtype}, {nk}, false>",
                         f"error_ratio_kernel<{dtype}, {nk}>"):
                assert any(n.endswith(name) for n in ran), f"{name} never launched"
        for method in range(5):  # odekern::nmode::Method: euler .. dopri5
            assert any(n.endswith(f"bwd_kernel<{dtype}, {method}>") for n in ran), f"bwd_kernel<{dtype}, {method}>"
        for method in range(4):  # fixed-step methods
            assert any(n.endswith(f"list_fwd_kernel<{dtype}, {method}>") for n in ran), method
    assert torch.ops.odekern_cuda_emu is emu
