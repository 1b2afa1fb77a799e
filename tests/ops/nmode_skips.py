"""Shared skip rule of the nmode_solve backend tests (imported by the test modules here)."""


import pytest
import torch

from odekern.ops.nmode_solve.config import NmodeConfig

from odekern import dispatch as backends


def require_backend(backend: str, y0: torch.Tensor, g: torch.Tensor, **kw) -> None:
    """Skip (with the reasons) if this backend refuses these inputs. Interpreted Triton takes
    about a minute per case at these sizes; it is held to the same reference, torchdiffeq and
    gradient checks in test_nmode_solve_triton.py at interpreter-friendly sizes."""
    if backend == "triton":
        pytest.skip("triton (interpreted) is tested in tests/ops/test_nmode_solve_triton.py")
    cfg = NmodeConfig(**{k: v for k, v in kw.items() if k in NmodeConfig.__dataclass_fields__})
    reasons = backends.refusals("nmode_solve", backend, y0.device, y0=y0.reshape(-1), g=g.reshape(-1), cfg=cfg)
    if reasons:
        pytest.skip(f"backend {backend} refuses nmode_solve here: {'; '.join(reasons)}")
