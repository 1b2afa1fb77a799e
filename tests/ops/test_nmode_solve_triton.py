"""What only the Triton backend of nmode_solve has, run by Triton's interpreter on CPU tensors
(TRITON_INTERPRET=1, set in tests/conftest.py): its module-level forward/backward contract
(step statistics, optional f outputs and cotangents), the recomputation paths of its exact
backward (register checkpoints), and its refusals. Triton's results and gradients are tested
with every other backend's, against the reference, torchdiffeq and gradcheck, through the
shared ``backend`` fixture (test_nmode_solve.py, test_nmode_solve_adjoint.py, ...).

Oracle: the pure-PyTorch reference (same algorithm: rounding tolerances). Sizes are small and
odd (105 and 210 elements: partial and full-plus-partial 128-lane blocks).
"""

from __future__ import annotations

import pytest
import torch

from odekern.ops.nmode_solve import reference
from odekern.ops.nmode_solve.config import NmodeConfig
from odekern.testing import STEP_SIZE_RTOL, assert_close, randn

from odekern import dispatch as backends

if backends.availability().get("triton") is not True:
    pytest.skip(f"triton backend unavailable: {backends.availability().get('triton')}",
                allow_module_level=True)

from odekern.ops.nmode_solve import triton as tri
from odekern.ops.nmode_solve.triton import launch as tri_launch

# The interpreter also evaluates the masked-off lanes of a partial block (zeros), where the
# initial-step formula divides 0 by 0 and log2 sees 0; numpy warns, the lanes are discarded.
pytestmark = pytest.mark.filterwarnings(
    "ignore:(invalid value|divide by zero) encountered:RuntimeWarning")

# (method, solve kwargs, t1): CNM-UNet's dopri5 setting under both step controls and a short
# fixed grid (the interpreter's cost is per step).
CASES = {
    "rk4": ("rk4", {"step_size": 0.05}, 0.2),
    "dopri5_global": ("dopri5", {"control": "global", "rtol": 1e-7, "atol": 1e-9}, 0.05),
    "dopri5_per_element": ("dopri5", {"control": "per_element", "rtol": 1e-7, "atol": 1e-9}, 0.05),
}


@pytest.mark.parametrize("case", list(CASES))
def test_direct_forward_stats_match_reference(case):
    """The contract level: same step sequence (stats) as the reference, f outputs optional."""
    method, kw, t1 = CASES[case]
    cfg = NmodeConfig(method=method, **kw)
    y0, g = randn(210, dtype=torch.float64, seed=3), randn(105, dtype=torch.float64, seed=4)
    y1, f0, f1, stats = tri.forward(y0, g, 0.0, t1, cfg, True)
    r_y1, r_f0, r_f1, r_stats = reference.forward(y0, g, 0.0, t1, cfg, True)
    assert stats.dtype == torch.float64 and stats.device.type == "cpu"
    assert stats[:2].tolist() == r_stats[:2].tolist(), "accepted/rejected step counts differ"
    assert_close(stats, r_stats, rtol=STEP_SIZE_RTOL, atol=0.0)
    for a, b in zip((y1, f0, f1), (r_y1, r_f0, r_f1)):
        assert_close(a, b)
    y1_nof, e0, e1, _ = tri.forward(y0, g, 0.0, t1, cfg, False)
    assert e0.numel() == 0 and e1.numel() == 0
    torch.testing.assert_close(y1_nof, y1, rtol=0, atol=0)


# --------------------------------------------------------------------------------- backward

@pytest.mark.parametrize("checkpoints", [2, 4])
def test_exact_backward_recomputation_paths(monkeypatch, checkpoints):
    """Few register checkpoints force every recomputation path of the exact backward: with
    C = 2, euler's 7 steps make segments longer than C (each state recomputed from its
    checkpoint); with C = 4, several short segments; per-element dopri5 replays its
    controller once per C accepted steps. Results must not depend on C."""
    monkeypatch.setattr(tri_launch, "REGISTER_CHECKPOINTS", checkpoints)
    y0, g = randn(70, dtype=torch.float64, seed=15), randn(70, dtype=torch.float64, seed=16)
    gy1, gf1 = randn(70, dtype=torch.float64, seed=17), randn(70, dtype=torch.float64, seed=18)
    for cfg, t1 in ((NmodeConfig(method="euler", step_size=0.05), 0.35),
                    (NmodeConfig(method="dopri5", control="per_element", rtol=1e-9, atol=1e-11), 0.1)):
        stats = tri.forward(y0, g, 0.0, t1, cfg, False)[3]
        got = tri.backward(gy1, None, gf1, y0, g, None, stats, 0.0, t1, cfg)
        want = reference.backward(gy1, None, gf1, y0, g, None, stats, 0.0, t1, cfg)
        for a, b in zip(got, want):
            assert_close(a, b, msg=f"{cfg.method} C={checkpoints}")


def test_direct_backward_without_f_cotangents():
    """grad_f0/grad_f1 may be None; the checkpointed gradient's saved state is y0, g and the
    stats only (y1 None)."""
    cfg = NmodeConfig(method="dopri5", control="per_element")
    y0, g = randn(70, dtype=torch.float64, seed=10), randn(35, dtype=torch.float64, seed=11)
    gy1 = randn(70, dtype=torch.float64, seed=12)
    _, _, _, stats = tri.forward(y0, g, 0.0, 0.05, cfg, False)
    got = tri.backward(gy1, None, None, y0, g, None, stats, 0.0, 0.05, cfg)
    want = reference.backward(gy1, None, None, y0, g, None, stats, 0.0, 0.05, cfg)
    assert got[0].shape == (70,) and got[1].shape == (35,)
    for a, b in zip(got, want):
        assert_close(a, b)


# ------------------------------------------------------------------------- refusals, errors

def test_supports_refuses_with_reasons():
    y0 = torch.zeros(4, dtype=torch.float16)
    reasons = tri.supports(y0=y0, g=y0, cfg=NmodeConfig(method="rk4", step_size=0.1))
    assert reasons and "float16" in reasons[0]
    y64 = torch.zeros(4, dtype=torch.float64)
    assert any("dtype" in r for r in tri.supports(y0=y64, g=torch.zeros(4, dtype=torch.float32)))
    assert any("meta" in r for r in tri.supports(y0=y64, g=torch.zeros(4, dtype=torch.float64,
                                                                      device="meta")))
    assert tri.supports(y0=y64, g=y64, cfg=NmodeConfig()) == []
    listed = backends.refusals("nmode_solve", "triton", y0.device, y0=y0, g=y0, cfg=NmodeConfig())
    assert listed == reasons


def test_forced_triton_backend_refusal_is_an_error():
    # nmode_solve itself solves float16 in float32; the kernels' own refusal, forced, raises.
    from odekern.ops.nmode_solve.op import select_backend

    y0 = torch.zeros(6, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="backend 'triton' was requested.*float16"):
        select_backend(y0, y0, NmodeConfig(), "triton")

