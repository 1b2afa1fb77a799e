"""The emulation catches what a GPU run would turn into corrupted memory or a hang, and names
the kernel: a planted out-of-bounds write, a planted missing __syncthreads (a shared-memory
race), a planted early return before a barrier (a divergent-barrier deadlock). The planted
kernels live only in src/planted_kernels.cpp; block_sum is their correct counterpart, so the
checks are also shown to stay silent on correct code (dynamic shared memory, warp shuffles).
"""

from __future__ import annotations

import pytest
import torch


def _raises(emu, fn, *args, match: str) -> str:
    with pytest.raises(RuntimeError, match=match) as info:
        fn(*args)
    emu.emu_take_errors()  # the raised error is also in the log; it has been handled here
    return str(info.value)


def test_out_of_bounds_write_is_caught_with_kernel_and_index(emu):
    out = torch.zeros(100)
    msg = _raises(emu, emu.planted_oob_write, out, match="out-of-bounds write")
    assert "planted_oob_write_kernel" in msg and "index 100" in msg and "100 elements" in msg
    assert "thread (100,0,0)" in msg


def test_missing_syncthreads_race_is_caught(emu):
    msg = _raises(emu, emu.planted_race, torch.randn(256), torch.zeros(2), match="shared-memory race")
    assert "planted_race_kernel" in msg and "buf[" in msg and "no __syncthreads" in msg


def test_divergent_barrier_deadlock_is_reported_not_hung(emu):
    msg = _raises(emu, emu.planted_divergent_barrier, torch.randn(100), torch.zeros(1),
                  match="deadlock: divergent barrier")
    assert "planted_divergent_barrier_kernel" in msg
    assert "28 thread(s) exited" in msg and "100 thread(s) wait at __syncthreads" in msg


@pytest.mark.parametrize("n", [1, 100, 128, 300])
def test_correct_block_sum_passes_every_check(emu, n):
    x = torch.randn(n)
    blocks = (n + 127) // 128
    out = torch.full((blocks,), float("nan"))
    emu.block_sum(x, out)
    want = torch.nn.functional.pad(x, (0, blocks * 128 - n)).view(blocks, 128).sum(1)
    torch.testing.assert_close(out, want)


def test_a_host_buffer_is_not_device_memory(emu):
    # Allocated while the tracking allocator is off: to the kernel it is a stray pointer.
    emu.emu_track_allocations(False)
    out = torch.zeros(10)
    emu.emu_track_allocations(True)
    _raises(emu, emu.planted_oob_write, out, match="pointer into no device allocation")


def test_a_failed_launch_poisons_later_launches_until_reported(emu):
    with pytest.raises(RuntimeError):
        emu.planted_oob_write(torch.zeros(10))
    out = torch.full((1,), float("nan"))
    emu.block_sum(torch.ones(5), out)  # skipped: the fault is still unreported
    assert torch.isnan(out).all()
    assert "out-of-bounds write" in emu.emu_take_errors()
    emu.block_sum(torch.ones(5), out)
    assert out.item() == 5.0
