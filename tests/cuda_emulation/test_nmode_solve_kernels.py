"""Every CUDA kernel of nmode_solve, executed on CPU by the emulation over its real launch
configuration, against reference.py: fixed grids (list_fwd_kernel per method), dopri5 under
global control (global_init/d2/attempt kernels and their host controller) and per-element
control (pe_fwd_kernel), exact and adjoint backward (bwd_kernel per method), float32 and
float64, sizes that do not fill a block and a g broadcast over repeats."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import DTYPES, GRADIENTS, NMODE_CASES, NMODE_SIZES, nmode_check


@pytest.mark.parametrize("size", NMODE_SIZES, ids=lambda s: f"N{s[0]}-G{s[1]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp64", "fp32"])
@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("case", list(NMODE_CASES))
def test_nmode_cuda_kernels_match_reference(emu, case, gradient, dtype, size):
    nmode_check(emu, case, gradient, dtype, *size)


def test_empty_input_launches_nothing(emu):
    y0 = torch.empty(0, dtype=torch.float64)
    y1, _, _, _ = emu.nmode_solve_fwd(y0, y0, 0.0, 1.0, "rk4", 0.1, 1e-7, 1e-9, "global", 1000, True)
    assert y1.numel() == 0


def test_step_budget_error_is_raised_not_returned(emu):
    y0 = torch.ones(130, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="max_num_steps"):
        emu.nmode_solve_fwd(y0, y0, 0.0, 1.0, "dopri5", -1.0, 1e-12, 1e-12, "per_element", 3, False)
    with pytest.raises(RuntimeError, match="max_num_steps"):
        emu.nmode_solve_fwd(y0, y0, 0.0, 1.0, "dopri5", -1.0, 1e-12, 1e-12, "global", 3, False)
