"""Image corruptions for the robustness sweep (cnm-unet Table 4), severities 1-5.

Definitions and severity constants follow ImageNet-C (Hendrycks & Dietterich, 2019), the
benchmark the CNM-UNet paper's corruption study (Zhang et al., 2022) builds on; written here
for float tensors in ``[0, 1]``, shape ``[C, H, W]`` or ``[B, C, H, W]``, ``C`` = 1 or 3.

One deliberate change: ImageNet-C's defocus-blur radii are pixels at 224x224. Applied as is
to a 64x64 image a 10-pixel disk erases everything, so the radius is scaled by
``min(H, W) / 224`` (at least 1 pixel): a severity means the same *relative* blur at every
input size. Pass ``reference_size=None`` to use the raw pixel radii.

Random corruptions (noise) draw from an explicit ``torch.Generator`` so sweeps repeat exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

from networks.arguments import check_finite_number

SEVERITIES = (1, 2, 3, 4, 5)

# Severity 1..5 constants (ImageNet-C).
_GAUSSIAN_NOISE_STD = (0.08, 0.12, 0.18, 0.26, 0.38)
_SHOT_NOISE_PHOTONS = (60.0, 25.0, 12.0, 5.0, 3.0)
_BRIGHTNESS_SHIFT = (0.1, 0.2, 0.3, 0.4, 0.5)
_CONTRAST_FACTOR = (0.4, 0.3, 0.2, 0.1, 0.05)
_SATURATE = ((0.3, 0.0), (0.1, 0.0), (2.0, 0.0), (5.0, 0.1), (20.0, 0.2))  # (scale, shift) of S
_DEFOCUS = ((3.0, 0.1), (4.0, 0.5), (6.0, 0.5), (8.0, 0.5), (10.0, 0.5))  # (disk radius, alias sigma)


def _check(image: torch.Tensor, severity: int) -> None:
    if not isinstance(image, torch.Tensor) or not image.is_floating_point():
        raise TypeError(f"image must be a float tensor in [0, 1], got "
                        f"{type(image).__name__ if not isinstance(image, torch.Tensor) else image.dtype}")
    if image.dim() not in (3, 4) or image.shape[-3] not in (1, 3):
        raise ValueError(f"image must have shape [C, H, W] or [B, C, H, W] with C in (1, 3), got {tuple(image.shape)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")


def gaussian_noise(image: torch.Tensor, severity: int, generator: torch.Generator | None = None, **_) -> torch.Tensor:
    _check(image, severity)
    std = _GAUSSIAN_NOISE_STD[severity - 1]
    noise = torch.randn(image.shape, generator=generator, dtype=image.dtype)
    return (image + std * noise.to(image.device)).clamp(0, 1)


def shot_noise(image: torch.Tensor, severity: int, generator: torch.Generator | None = None, **_) -> torch.Tensor:
    _check(image, severity)
    photons = _SHOT_NOISE_PHOTONS[severity - 1]
    counts = torch.poisson((image.detach().cpu().double() * photons).clamp_min(0), generator=generator)
    return (counts / photons).to(image).clamp(0, 1)


def _hsv_map(image: torch.Tensor, fn: Callable[[np.ndarray], None]) -> torch.Tensor:
    """Apply ``fn`` in place to the HSV array ``[..., H, W, 3]`` of an RGB image."""
    arr = image.detach().cpu().double().movedim(-3, -1).clamp(0, 1).numpy()
    hsv = rgb_to_hsv(arr)
    fn(hsv)
    rgb = hsv_to_rgb(np.clip(hsv, 0, 1))
    return torch.from_numpy(rgb).movedim(-1, -3).to(image)


def brightness(image: torch.Tensor, severity: int, **_) -> torch.Tensor:
    _check(image, severity)
    shift = _BRIGHTNESS_SHIFT[severity - 1]
    if image.shape[-3] == 1:  # grey: V is the intensity itself
        return (image + shift).clamp(0, 1)

    def raise_value(hsv: np.ndarray) -> None:
        hsv[..., 2] = np.clip(hsv[..., 2] + shift, 0, 1)

    return _hsv_map(image, raise_value)


def saturate(image: torch.Tensor, severity: int, **_) -> torch.Tensor:
    _check(image, severity)
    if image.shape[-3] == 1:  # a grey image has no saturation to change
        return image.clone()
    scale, shift = _SATURATE[severity - 1]

    def rescale_saturation(hsv: np.ndarray) -> None:
        hsv[..., 1] = np.clip(hsv[..., 1] * scale + shift, 0, 1)

    return _hsv_map(image, rescale_saturation)


def contrast(image: torch.Tensor, severity: int, **_) -> torch.Tensor:
    _check(image, severity)
    factor = _CONTRAST_FACTOR[severity - 1]
    means = image.mean(dim=(-2, -1), keepdim=True)  # per image and channel, as ImageNet-C
    return ((image - means) * factor + means).clamp(0, 1)


def disk_kernel(radius: float, alias_sigma: float, dtype=torch.float64) -> torch.Tensor:
    """Normalised disk of ``radius`` pixels, softened by a 3x3 Gaussian of ``alias_sigma``."""
    ksize = 3 if radius <= 8 else 5
    half = int(np.ceil(radius)) + ksize // 2  # room for the anti-alias blur to spread
    coords = torch.arange(-half, half + 1, dtype=dtype)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    disk = ((xx**2 + yy**2) <= radius**2).to(dtype)
    disk = disk / disk.sum()
    g = torch.arange(ksize, dtype=dtype) - (ksize - 1) / 2
    g = torch.exp(-(g**2) / (2 * alias_sigma**2))
    g = g / g.sum()
    smoothed = F.conv2d(disk[None, None], (g[:, None] * g[None, :])[None, None], padding=ksize // 2)[0, 0]
    return smoothed / smoothed.sum()


def defocus_blur(image: torch.Tensor, severity: int, reference_size: int | None = 224, **_) -> torch.Tensor:
    _check(image, severity)
    radius, alias = _DEFOCUS[severity - 1]
    if reference_size is not None:
        radius = max(1.0, radius * min(image.shape[-2:]) / reference_size)
    kernel = disk_kernel(radius, alias).to(image)
    batch = image if image.dim() == 4 else image[None]
    c = batch.shape[1]
    pad = kernel.shape[-1] // 2
    h, w = batch.shape[-2:]
    mode = "reflect" if pad < min(h, w) else "replicate"  # reflect needs pad < size
    padded = F.pad(batch, [pad] * 4, mode=mode)
    out = F.conv2d(padded, kernel.expand(c, 1, *kernel.shape), groups=c).clamp(0, 1)
    return out if image.dim() == 4 else out[0]


CORRUPTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "brightness": brightness,
    "contrast": contrast,
    "defocus_blur": defocus_blur,
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "saturate": saturate,
}


def corrupt(image: torch.Tensor, name: str, severity: int = 5, generator: torch.Generator | None = None,
            **options) -> torch.Tensor:
    """Apply corruption ``name`` (one of :data:`CORRUPTIONS`) at ``severity`` 1-5."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    return CORRUPTIONS[name](image, severity, generator=generator, **options)


def add_gaussian_noise(image: torch.Tensor, sigma: float, generator: torch.Generator | None = None,
                       clip: bool = False) -> torch.Tensor:
    """Zero-mean Gaussian noise of standard deviation ``sigma`` (continuous-unet Table 4).

    The paper adds the noise to the input without saying it clips; ``clip=False`` keeps it
    purely additive.
    """
    sigma = check_finite_number(sigma, "sigma", minimum=0.0)
    noisy = image + sigma * torch.randn(image.shape, generator=generator, dtype=image.dtype).to(image.device)
    return noisy.clamp(0, 1) if clip else noisy
