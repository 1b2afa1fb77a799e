"""networks.corruptions against independent references: Python's colorsys for the HSV
corruptions, the ImageNet-C formulas written out in numpy, and statistical checks for noise."""

import colorsys

import numpy as np
import pytest
import torch

from networks.corruptions import CORRUPTIONS, add_gaussian_noise, corrupt, disk_kernel
from odekern.testing import SAME_FORMULA_ATOL_FP64

IMAGENET_C = {
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "saturate": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "shot_noise": (60, 25, 12, 5, 3),
}


def _image(seed=0, shape=(3, 6, 7)):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _hsv_reference(image, fn):
    out = np.empty_like(image.numpy())
    for y in range(image.shape[1]):
        for x in range(image.shape[2]):
            h, s, v = colorsys.rgb_to_hsv(*image[:, y, x].tolist())
            h, s, v = fn(h, s, v)
            out[:, y, x] = colorsys.hsv_to_rgb(h, s, v)
    return torch.from_numpy(out)


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_brightness_matches_colorsys(severity):
    c = IMAGENET_C["brightness"][severity - 1]
    image = _image(severity)
    expected = _hsv_reference(image, lambda h, s, v: (h, s, min(max(v + c, 0), 1)))
    torch.testing.assert_close(corrupt(image, "brightness", severity), expected, rtol=0, atol=SAME_FORMULA_ATOL_FP64)


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_saturate_matches_colorsys(severity):
    scale, shift = IMAGENET_C["saturate"][severity - 1]
    image = _image(10 + severity)
    expected = _hsv_reference(image, lambda h, s, v: (h, min(max(s * scale + shift, 0), 1), v))
    torch.testing.assert_close(corrupt(image, "saturate", severity), expected, rtol=0, atol=SAME_FORMULA_ATOL_FP64)


@pytest.mark.parametrize("severity", [1, 5])
def test_contrast_matches_formula(severity):
    c = IMAGENET_C["contrast"][severity - 1]
    image = _image(20, (2, 3, 5, 4))
    arr = image.numpy()
    means = arr.mean(axis=(2, 3), keepdims=True)
    expected = np.clip((arr - means) * c + means, 0, 1)
    torch.testing.assert_close(corrupt(image, "contrast", severity), torch.from_numpy(expected))


def test_gaussian_noise_statistics_and_reproducibility():
    grey = torch.full((3, 128, 128), 0.5)
    out = corrupt(grey, "gaussian_noise", 2, generator=torch.Generator().manual_seed(0))
    assert abs(float((out - 0.5).std()) - IMAGENET_C["gaussian_noise"][1]) < 0.005  # no clipping at 0.5 +- 3 sd
    again = corrupt(grey, "gaussian_noise", 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_shot_noise_is_poisson():
    photons = IMAGENET_C["shot_noise"][0]
    x = torch.full((3, 200, 200), 0.4)
    out = corrupt(x, "shot_noise", 1, generator=torch.Generator().manual_seed(0))
    counts = out * photons
    assert torch.allclose(counts, counts.round(), atol=1e-4)  # integer photon counts
    assert abs(float(counts.mean()) - 0.4 * photons) < 0.1
    assert abs(float(counts.var()) - 0.4 * photons) < 0.5  # Poisson: variance = mean


def test_defocus_kernel_is_a_normalised_symmetric_disk():
    k = disk_kernel(3.0, 0.1)
    assert abs(float(k.sum()) - 1) < 1e-12
    torch.testing.assert_close(k, k.flip(0))
    torch.testing.assert_close(k, k.t())
    centre = k.shape[0] // 2
    assert k[centre, centre] > 0 and k[centre, centre + 3] > 0 and k[centre, centre + 4] < 1e-6


def test_defocus_blur_keeps_constants_and_blurs_more_with_severity():
    const = torch.full((3, 32, 32), 0.3)
    torch.testing.assert_close(corrupt(const, "defocus_blur", 5), const)
    edges = torch.zeros(1, 64, 64)
    edges[:, :, 32:] = 1.0
    sharpness = [float(corrupt(edges, "defocus_blur", s).diff(dim=-1).abs().max()) for s in (1, 3, 5)]
    assert sharpness[0] > sharpness[1] > sharpness[2]


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_every_corruption_keeps_shape_dtype_range_and_accepts_grey(name):
    batch = _image(3, (2, 3, 16, 16)).float()
    out = corrupt(batch, name, 5, generator=torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    grey = corrupt(batch[:, :1], name, 5, generator=torch.Generator().manual_seed(0))
    assert grey.shape == (2, 1, 16, 16)


def test_bad_arguments_are_named():
    x = torch.rand(3, 8, 8)
    with pytest.raises(ValueError, match="severity"):
        corrupt(x, "contrast", 6)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "fog", 1)
    with pytest.raises(TypeError, match="float"):
        corrupt((x * 255).to(torch.uint8), "contrast", 1)
    with pytest.raises(ValueError, match="shape"):
        corrupt(torch.rand(4, 8, 8), "contrast", 1)
    for sigma in (-0.1, float("nan"), float("inf")):  # NaN passed "sigma < 0" and made every pixel NaN
        with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
            add_gaussian_noise(x, sigma)


def test_additive_noise_sweep_is_unclipped_and_seeded():
    x = torch.full((1, 3, 64, 64), 0.5)
    noisy = add_gaussian_noise(x, 0.5, generator=torch.Generator().manual_seed(1))
    assert float(noisy.max()) > 1.0 and float(noisy.min()) < 0.0
    assert abs(float((noisy - x).std()) - 0.5) < 0.02
