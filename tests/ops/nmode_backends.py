"""Shared backend rules of the nmode_solve tests (imported by the test modules here)."""

import os

import pytest
import torch

from odekern.ops.nmode_solve.config import NmodeConfig

from odekern import dispatch as backends


def require_backend(backend: str, y0: torch.Tensor, g: torch.Tensor, **kw) -> None:
    """Skip (with the reasons) if this backend refuses these inputs."""
    cfg = NmodeConfig(**{k: v for k, v in kw.items() if k in NmodeConfig.__dataclass_fields__})
    reasons = backends.refusals("nmode_solve", backend, y0.device, y0=y0.reshape(-1), g=g.reshape(-1), cfg=cfg)
    if reasons:
        pytest.skip(f"backend {backend} refuses nmode_solve here: {'; '.join(reasons)}")


def interpreted(backend: str) -> bool:
    """True for Triton run by its interpreter (the CPU test runs), which executes every lane
    of every step in Python: a solve of a few hundred elements takes ~0.1-1 s, so the few
    cases that make hundreds of solves (gradcheck, step-count sweeps) take a cheaper form of
    the same check for it; every other case runs unchanged."""
    return backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1"


def require_available(backend: str) -> None:
    """Skip, with the reason, unless this backend can run here (for tests of one backend's
    own behaviour; tests of every backend take the ``backend`` fixture instead)."""
    available = backends.availability().get(backend)
    if available is not True:
        pytest.skip(f"backend {backend} unavailable: {available}")
