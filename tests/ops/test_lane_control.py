"""The CPU lane paths' fifth root (csrc/ops/nmode_solve/nmode_solve_cpu_lane_control.h).

Per-element control and the continuous adjoint take their step-size factor from
``inv_fifth_root(x)`` where the scalar header and CUDA call ``pow(x, 1/5)``: it vectorises where
libm's pow does not. Its contract, which the lane solvers' bit-for-bit float32 tests rely on, is
agreement with pow to 2 ulps of the double result on every positive finite input, subnormals
included (the initial-step selection feeds it unclamped values; the controller clamps to
[2^-20, 2^20]). The reference is torch.pow with the same double exponent, -0.2.
"""

from __future__ import annotations

import pytest
import torch

import odekern

pytestmark = pytest.mark.skipif(odekern.backends()["cpu"] is not True, reason="needs the C++ extension")

F64 = torch.float64
#: The contract: at most this many units in the last place of the double result.
MAX_ULPS = 2


def _ulps(actual: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    spacing = torch.nextafter(expected, torch.full_like(expected, float("inf"))) - expected
    return (actual - expected).abs() / spacing


def _inputs() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    log2 = torch.empty(200_000, dtype=F64).uniform_(-1074.0, 1024.0, generator=gen)
    swept = torch.exp2(log2)
    powers = torch.exp2(torch.arange(-1074, 1024, dtype=F64))
    eps = torch.finfo(F64).eps
    near_one = 1.0 + eps * torch.arange(-64, 65, dtype=F64)
    controller = torch.exp2(torch.linspace(-20.0, 20.0, 10_001, dtype=F64))
    extremes = torch.tensor([torch.finfo(F64).tiny, 2.0**-1074, torch.finfo(F64).max], dtype=F64)
    x = torch.cat([swept, powers, near_one, controller, extremes])
    return x[torch.isfinite(x) & (x > 0)]


def test_inv_fifth_root_is_within_two_ulps_of_pow(testing_ops):
    x = _inputs()
    got = testing_ops.nmode_inv_fifth_root(x)
    ulps = _ulps(got, torch.pow(x, -0.2))
    worst = int(ulps.argmax())
    assert ulps.max().item() <= MAX_ULPS, (
        f"inv_fifth_root({x[worst].item()!r}) = {got[worst].item()!r}, pow gives "
        f"{torch.pow(x[worst], -0.2).item()!r}: {ulps.max().item():.2f} ulps")


def test_inv_fifth_root_of_exact_fifth_powers(testing_ops):
    # (2^(5k))^(-1/5) = 2^-k up to the exponent's rounding (0.2 is not 1/5 in binary): the
    # range reduction by 5 in the exponent must not drift by a power of two.
    k = torch.arange(-200, 201, dtype=F64)
    got = testing_ops.nmode_inv_fifth_root(torch.exp2(5 * k))
    assert _ulps(got, torch.pow(torch.exp2(5 * k), -0.2)).max().item() <= MAX_ULPS
    assert torch.allclose(got, torch.exp2(-k), rtol=1e-14, atol=0.0)
