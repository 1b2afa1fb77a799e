"""Every CUDA kernel of nmode_solve, executed on CPU by the emulation over its real launch
configuration, against reference.py: fixed grids (list_fwd_kernel per method), dopri5 under
global control (global_init/d2/attempt kernels and their host controller) and per-element
control (pe_fwd_kernel), exact and adjoint backward (bwd_kernel per method), float32 and
float64, sizes that do not fill a block and a g broadcast over repeats."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import DTYPES, GRADIENTS, NMODE_CASES, NMODE_SIZES, nmode_check

from odekern.ops.nmode_solve import failures


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


BUDGET_FAILURES = {
    "per_element": ("dopri5", -1.0, failures.PER_ELEMENT_TOO_MANY_STEPS),
    "global": ("dopri5", -1.0, failures.GLOBAL_TOO_MANY_STEPS),
    "fixed grid": ("euler", 0.01, failures.FIXED_GRID_TOO_MANY_STEPS),
}


@pytest.mark.parametrize("control", BUDGET_FAILURES)
def test_step_budget_error_is_raised_not_returned(emu, control):
    """Raised in failures.py's words (the op recognises the kernels' RuntimeError by them)."""
    method, step_size, failure = BUDGET_FAILURES[control]
    y0 = torch.ones(130, dtype=torch.float64)
    with pytest.raises(RuntimeError) as info:
        emu.nmode_solve_fwd(y0, y0, 0.0, 1.0, method, step_size, 1e-12, 1e-12,
                            "global" if control == "fixed grid" else control, 3, False)
    assert failures.failure_of(str(info.value)) is failure, str(info.value)
