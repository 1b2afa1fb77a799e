"""networks.figures: PNGs are produced (valid images) and overlays tint exactly the mask."""

import numpy as np
import pytest
import torch
from PIL import Image

from networks import figures


def _valid_png(path):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 100 and im.height > 100


def test_overlay_tints_exactly_the_mask():
    image = torch.full((3, 6, 6), 0.2)
    mask = torch.zeros(1, 6, 6)
    mask[:, 1:3, 2:5] = 1
    out = figures.overlay(image, mask, alpha=0.5)
    inside = out[mask[0].bool().numpy()]
    outside = out[~mask[0].bool().numpy()]
    np.testing.assert_allclose(outside, 0.2)
    np.testing.assert_allclose(inside, 0.5 * 0.2 + 0.5 * figures.OVERLAY_COLOUR[None].repeat(6, 0))


def test_prediction_overlays_and_curves(tmp_path):
    images, masks = torch.rand(3, 3, 16, 16), (torch.rand(3, 1, 16, 16) > 0.5).float()
    figures.prediction_overlays(images, masks, masks * 8 - 4, tmp_path / "o.png", title="t")
    _valid_png(tmp_path / "o.png")
    epochs = [{"epoch": i + 1, "train_loss": 1 / (i + 1), "train_dice": i / 5, "val_loss": 1.1 / (i + 1),
               "val_dice": i / 6} for i in range(4)]
    figures.training_curves({"a": {"epochs": epochs}, "b": {"epochs": epochs[:2]}}, tmp_path / "c.png")
    _valid_png(tmp_path / "c.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "o.png"]  # nothing temporary left
    with pytest.raises(ValueError, match="no finished epoch"):
        figures.training_curves({"empty": {"epochs": []}}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="batch size"):
        figures.prediction_overlays(images, masks[:2], masks, tmp_path / "y.png")


def test_robustness_bars(tmp_path):
    m = {"dice": 0.5}
    results = {"clean": {"source_only": m, "duse": {"dice": 0.6}}, "noise": {"0.2": m},
               "corruptions": {"severity": 5, "results": {"contrast": {"source_only": m, "duse": m}}}}
    figures.robustness_bars(results, tmp_path / "r.png")
    _valid_png(tmp_path / "r.png")


def test_cli_curves(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.json").write_text(
        '{"epochs": [{"epoch": 1, "train_loss": 1.0, "train_dice": 0.1}, {"epoch": 2, "train_loss": 0.5, "train_dice": 0.4}]}')
    assert figures.main(["curves", str(run), "--out", str(tmp_path / "curves.png")]) == 0
    _valid_png(tmp_path / "curves.png")
