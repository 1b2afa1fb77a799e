"""torch.library.opcheck on every op odekern registers, the C++ extension's internal ones
included (schema, fake/meta kernel, autograd registration, AOT dispatch), and a guard that
fails when an op is added without joining this list. The Python custom ops are opchecked per
backend in test_rk_stage.py and test_nmode_solve.py; they are listed here for the guard."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import odekern  # noqa: F401 - registers every op
from odekern.testing import randn

# Take no tensor (the built extension's constant kMaxK; the generated failure messages, which
# test_nmode_failure_messages.py compares with failures.py): nothing for opcheck to trace.
NO_TENSORS = {"odekern_C::rk_stage_max_k", "odekern_testing::nmode_failure_text",
              "odekern_testing::nmode_status_message"}
CHECKED_ELSEWHERE = {"odekern::nmode_solve", "odekern::nmode_solve_backward", "odekern::rk_combine",
                     "odekern::rk_combine_out", "odekern::rk_error_ratio"}


def _cases():
    y, ks = randn(10, dtype=torch.float64), [randn(10, dtype=torch.float64, seed=s) for s in (1, 2)]
    stats = torch.tensor([2.0, 0.0, 1.0, 0.1, 0.1], dtype=torch.float64)  # two rk4 steps of 0.1
    return {
        "odekern_C::rk_combine_out": (y, ks, [0.1, 0.2], torch.empty_like(y)),
        "odekern_C::rk_error_ratio": (y, y + 1, ks, [0.01, -0.01], 1e-3, 1e-5),
        "odekern_C::nmode_solve_fwd": (y, y[:5], 0.0, 0.2, "rk4", 0.1, 1e-7, 1e-9, "global", 100, True),
        "odekern_C::nmode_solve_bwd": (y, None, y, y, y[:5], None, stats, 0.0, 0.2, "rk4", 0.1, 1e-7, 1e-9,
                                       "global", "checkpoint", 100),
        "odekern_testing::nmode_pe_scalar_reference": (y, y[:5], 0.0, 0.05, 1e-7, 1e-9, 1000, y, None, y),
        "odekern_testing::nmode_sin_sq_floor": (y, 3),
        "odekern_testing::nmode_sincos_floor": (y, 3),
        "odekern_testing::nmode_adjoint_attempt_floor": (y, 1.5, False),
        "odekern_testing::nmode_inv_fifth_root": (y.abs() + 0.1,),
    }


def _registered(namespaces=("odekern", "odekern_C", "odekern_testing")) -> set[str]:
    return {name for name in torch._C._dispatch_get_all_op_names() if name.split("::")[0] in namespaces}


pytestmark = pytest.mark.skipif(odekern.backends()["cpu"] is not True, reason="needs the C++ extension")


def test_every_registered_op_is_opchecked(testing_ops):
    assert _registered() == set(_cases()) | CHECKED_ELSEWHERE | NO_TENSORS


def test_the_runtime_extension_ships_no_test_only_op():
    import_alone = "import odekern, torch; print(sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith('odekern')))"
    out = subprocess.run([sys.executable, "-c", import_alone], capture_output=True, text=True, check=True).stdout
    assert "odekern_testing" not in out and "nmode_pe_scalar_reference" not in out and "floor" not in out
    assert "odekern_C::nmode_solve_fwd" in out  # the check sees the extension's ops


@pytest.mark.parametrize("name", sorted(_cases()))
def test_opcheck(name, testing_ops):
    namespace, op = name.split("::")
    torch.library.opcheck(getattr(getattr(torch.ops, namespace), op), _cases()[name])


def test_meta_tensors_give_shapes():
    y0, g = torch.empty(2, 3, 4, device="meta"), torch.empty(1, 3, 4, device="meta")
    y1, f0, f1 = odekern.nmode_solve(y0, g, 0.0, 0.05, return_f=True)
    assert all(x.is_meta and x.shape == y0.shape for x in (y1, f0, f1))
    ys = odekern.odeint(lambda t, y: -y, y0, [0.0, 0.5, 1.0], method="rk4", options={"step_size": 0.25})
    assert ys.is_meta and ys.shape == (3, 2, 3, 4)
    block = odekern.ODEBlock(_Conv(), method="rk4", step_size=0.5).to("meta")
    out = block(torch.empty(2, 3, 4, 4, device="meta"))
    assert out.is_meta and out.shape == (2, 3, 4, 4)


class _Conv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, t, x):
        return self.conv(x)
