"""CNM-UNet and the continuous U-Net with ``backend="triton"`` (Triton's interpreter on CPU,
TRITON_INTERPRET=1 from tests/conftest.py): one forward + backward each at a tiny size, equal
to the same network (same weights) on the ``cpu`` backend, and Triton kernels really ran."""

from __future__ import annotations

import pytest
import torch
from netutil import TINY_CNM, TINY_CONTINUOUS, images, require_nmode

from networks import build_model
from odekern import dispatch
from odekern.testing import SAME_STEPS_REL_FP64, assert_close, peak_relative_tol

if dispatch.availability().get("triton") is not True:
    pytest.skip(f"triton backend unavailable: {dispatch.availability().get('triton')}", allow_module_level=True)

pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|divide by zero) encountered:RuntimeWarning")

# (model name, tiny config, input side): each at its smallest legal size (the interpreter runs
# every lane of every step in Python); batch 2 so batch norm has more than one value.
CONFIGS = {
    "cnm-unet": (dict(TINY_CNM, image_size=16, rtol=1e-3, atol=1e-5), 16),
    "continuous-unet": (dict(TINY_CONTINUOUS, levels=1, method="rk4", step_size=1.0), 4),
}


def _fwd_bwd(name, cfg, size, backend):
    torch.manual_seed(0)
    model = build_model(name, backend=backend, **cfg).double()
    x = images(2, size=size, dtype=torch.float64).requires_grad_(True)
    y = model(x)
    weights = torch.linspace(-1.0, 1.0, y.numel(), dtype=y.dtype).view_as(y)
    (y * weights).sum().backward()
    return [y.detach(), x.grad] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_network_forward_backward_triton_matches_cpu(name, triton_launches):
    if name == "cnm-unet":
        require_nmode()
    cfg, size = CONFIGS[name]
    got = _fwd_bwd(name, cfg, size, "triton")
    assert triton_launches, f"{name} with backend='triton' launched no Triton kernel"
    want = _fwd_bwd(name, cfg, size, "cpu")
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert b is not None and a is not None, f"tensor {i}: missing gradient"
        assert_close(a, b, msg=f"{name}: tensor {i}", **peak_relative_tol(b, SAME_STEPS_REL_FP64, floor=SAME_STEPS_REL_FP64))
