"""Small shared pieces of the networks tests: tiny model configurations and the NmODE check."""

from __future__ import annotations

import pytest
import torch

# CNM-UNet small enough for CPU tests: narrow encoder, 32x32 images, looser solver tolerance.
TINY_CNM = {"image_size": 32, "encoder_widths": (4, 8, 8, 8, 8), "rtol": 1e-5, "atol": 1e-7}
# The second-order variant: the tests comparing dynamic blocks with torchdiffeq need them; the
# official variant has its own tests (test_official_networks.py).
TINY_CONTINUOUS = {"base_filters": 2, "variant": "second-order"}


def require_nmode() -> None:
    """Skip (with the reason) while ``odekern.NmODE`` is still the placeholder of the nmODE issue."""
    import odekern

    try:
        odekern.NmODE(channels=1, height=2, width=2)
    except NotImplementedError as err:
        pytest.skip(f"odekern.NmODE not implemented yet ({err}); CNM-UNet needs the fused nmODE block")


def images(batch: int, channels: int = 3, size: int = 32, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, size, size, generator=g, dtype=torch.float64).to(dtype)
