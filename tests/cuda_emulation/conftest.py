"""Fixtures of the CUDA emulation tests: the built extension (``emu``), and around every test
the tracking allocator (so kernels' pointers are checked against the tensors they came from)
plus a check that no emulation error went unreported (an error the host code ignored)."""

from __future__ import annotations

import pytest

import emu_build


@pytest.fixture(scope="session")
def emu():
    """``torch.ops.odekern_cuda_emu``: the real CUDA kernels and bindings, run on CPU."""
    return emu_build.load()


@pytest.fixture(autouse=True)
def _tracked(emu):
    emu.emu_take_errors()  # nothing left over from a test that expected a failure
    emu.emu_track_allocations(True)
    try:
        yield
        leftover = emu.emu_take_errors()
        assert not leftover, ("emulated kernels logged errors (host code that ignored them, or a test "
                              "expecting one without emu_take_errors()):\n" + leftover.replace("\x1e", "\n"))
    finally:
        emu.emu_track_allocations(False)
