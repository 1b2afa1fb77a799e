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


def _bar_heights(ax):
    return [round(float(b.get_height()), 6) for b in ax.patches]


def _texts(ax):
    return [t.get_text() for t in ax.texts]


def test_robustness_figure_separates_corruptions_from_noise_and_shows_zero():
    clean, zero = {"dice": 0.8}, {"dice": 0.0}
    results = {"model": {"name": "cnm-unet"}, "num_images": 4,
               "clean": {"source_only": clean, "duse": {"dice": 0.82}},
               "noise": {"0.2": {"dice": 0.7}, "0.5": zero},
               "corruptions": {"severity": 5, "results": {"contrast": {"source_only": zero, "duse": {"dice": 0.3}},
                                                          "saturate": {"source_only": {"dice": 0.6}}}}}
    fig = figures.robustness_figure(results)
    corruptions, noise = fig.axes
    assert "severity 5" in corruptions.get_title() and "noise" not in corruptions.get_title()
    assert "noise" in noise.get_title().lower()
    assert [t.get_text() for t in noise.get_xticklabels()] == ["\u03c3 = 0.2", "\u03c3 = 0.5"]
    assert "\u03c3" in noise.get_xlabel()
    assert "Dice" in corruptions.get_ylabel() and "Dice" in noise.get_ylabel()
    # Panel 1: clean, contrast, saturate; source bars then DUSE bars (saturate had no DUSE run).
    assert _bar_heights(corruptions) == [0.8, 0.0, 0.6, 0.82, 0.3, 0.0]
    assert _texts(corruptions) == ["0.80", "0.00", "0.60", "0.82", "0.30", "n/a"]
    assert _bar_heights(noise) == [0.7, 0.0] and _texts(noise) == ["0.70", "0.00"]
    # A zero Dice is drawn: a stub on the axis as wide as the bar, in the bar's colour.
    stubs = [line for line in noise.lines if list(line.get_ydata()) == [0.0, 0.0]]
    assert len(stubs) == 1 and stubs[0].get_linewidth() >= 2
    assert [len(ax.lines) for ax in (corruptions, noise)] == [1, 1]
    figures.plt.close(fig)


def test_robustness_figure_without_noise_sweep_has_one_panel():
    results = {"clean": {"source_only": {"dice": 0.5}}, "noise": {},
               "corruptions": {"severity": 3, "results": {}}}
    fig = figures.robustness_figure(results)
    assert len(fig.axes) == 1 and "severity 3" in fig.axes[0].get_title()
    figures.plt.close(fig)


def _state(epoch, planned, val_dice):
    return {"epoch": epoch, "model": {"name": "cnm-unet"}, "config": {"epochs": planned},
            "history": {"epochs": [{"epoch": i + 1, "train_dice": 0.1, "val_dice": d}
                                   for i, d in enumerate(val_dice)]}}


def test_checkpoint_title_says_which_epoch_of_how_many():
    # best.pt of a 12-epoch run whose best validation Dice came at epoch 10
    assert figures.checkpoint_title(_state(10, 12, [0.1] * 9 + [0.9])) == "cnm-unet, best epoch 10 of 12"
    # last.pt of the same run: epoch 12 is not the best one
    assert figures.checkpoint_title(_state(12, 12, [0.1] * 9 + [0.9, 0.5, 0.6])) == "cnm-unet, epoch 12 of 12"
