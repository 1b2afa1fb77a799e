"""networks.metrics against brute-force numpy references of the same definitions."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from networks.metrics import MetricAccumulator, ahd_per_image, per_image_metrics


def _random_masks(seed, n=6, size=20):
    g = np.random.default_rng(seed)
    masks = []
    for _ in range(n):
        field = ndimage.gaussian_filter(g.standard_normal((size, size)), 2.0)
        masks.append(field > g.uniform(0.0, 0.2))
    return torch.from_numpy(np.stack(masks)[:, None].astype(np.float32))


def _edges(mask):
    return mask & ~ndimage.binary_erosion(mask)


def _directed_mean(a, b):
    pa, pb = np.argwhere(_edges(a)), np.argwhere(_edges(b))
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return d.min(1).mean()


def test_metrics_match_bruteforce_reference():
    pred, target = _random_masks(0), _random_masks(1)
    logits = torch.where(pred > 0, 3.0, -3.0)  # sigmoid > 0.5 exactly where pred is set
    got = per_image_metrics(logits, target)
    for i in range(pred.shape[0]):
        p, t = pred[i, 0].numpy() > 0, target[i, 0].numpy() > 0
        inter, union = (p & t).sum(), (p | t).sum()
        assert got["dice"][i].item() == pytest.approx(2 * inter / (p.sum() + t.sum()), rel=1e-6)
        assert got["iou"][i].item() == pytest.approx(inter / union, rel=1e-6)
        assert got["accuracy"][i].item() == pytest.approx((p == t).mean(), rel=1e-6)
        ahd = 0.5 * (_directed_mean(p, t) + _directed_mean(t, p))
        assert got["ahd"][i].item() == pytest.approx(ahd, rel=1e-5)


def test_empty_mask_conventions():
    empty, blob = torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)
    blob[..., 2:5, 2:5] = 1
    both_empty = per_image_metrics(torch.full_like(empty, -5.0), empty)
    assert both_empty["dice"].item() == 1.0 and both_empty["iou"].item() == 1.0 and both_empty["ahd"].item() == 0.0
    missed = per_image_metrics(torch.full_like(empty, -5.0), blob)
    assert missed["dice"].item() == 0.0 and math.isnan(missed["ahd"].item())
    assert math.isnan(ahd_per_image(blob, empty).item())


def test_accumulator_means_and_counts_undefined_ahd():
    acc = MetricAccumulator()
    acc.update({"dice": torch.tensor([1.0, 0.5]), "iou": torch.tensor([1.0, 0.25]),
                "accuracy": torch.tensor([1.0, 0.75]), "ahd": torch.tensor([2.0, math.nan])})
    acc.update({"dice": torch.tensor([0.0]), "iou": torch.tensor([0.0]), "accuracy": torch.tensor([0.5]),
                "ahd": torch.tensor([4.0])})
    s = acc.summary()
    assert s["dice"] == pytest.approx(0.5) and s["iou"] == pytest.approx(1.25 / 3)
    assert s["ahd"] == pytest.approx(3.0) and s["ahd_undefined"] == 1 and s["num_images"] == 3
    with pytest.raises(ValueError, match="no images"):
        MetricAccumulator().summary()


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        per_image_metrics(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_logits_are_no_prediction(bad):
    logits = torch.zeros(2, 1, 4, 4)
    logits[1, 0, 2, 3] = bad
    with pytest.raises(ValueError, match=r"the model's output \(logits\) contains NaN or inf"):
        per_image_metrics(logits, torch.zeros(2, 1, 4, 4))


@pytest.mark.parametrize("threshold", [math.nan, 0.0, 1.0, -0.5, "0.5"])
def test_threshold_is_a_number_strictly_between_0_and_1(threshold):
    # A NaN threshold compared false everywhere: every prediction came out empty.
    with pytest.raises(ValueError, match="threshold must be a finite number > 0 and < 1"):
        per_image_metrics(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), threshold=threshold)
