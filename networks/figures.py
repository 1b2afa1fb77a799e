"""Figures as PNG (matplotlib, Agg backend; no display needed), written atomically.

* :func:`prediction_overlays` — rows of image / ground truth / prediction, the masks drawn
  in yellow over the image as in continuous-unet Figure 2, with each row's Dice.
* :func:`training_curves` — loss and Dice per epoch for one or more runs, as the
  convergence plots of continuous-unet Figure 3.
* :func:`robustness_bars` — Dice under each corruption, source only vs DUSE (cnm-unet
  Table 4 as a chart), and beside it the Gaussian-noise sweep by sigma.

``python -m networks.figures curves RUN_DIR [RUN_DIR ...] --out curves.png`` plots training
histories; ``python -m networks.figures overlays CHECKPOINT --out overlays.png`` plots
predictions on the evaluation images.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless servers and CI have no display
import matplotlib.pyplot as plt
import numpy as np
import torch

from networks import atomic_files
from networks import checkpoint as ckpt
from networks import cli
from networks.arguments import check_positive_int
from networks.evaluate import EvalConfig, evaluation_dataset, predict_logits
from networks.metrics import binarize, dice_per_image

PROG = "python -m networks.figures"
OVERLAY_COLOUR = np.array([1.0, 0.9, 0.0])  # yellow, as the paper's Figure 2


def _save(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    with atomic_files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)


def _to_rgb(image: torch.Tensor) -> np.ndarray:
    arr = image.detach().float().cpu().clamp(0, 1).numpy()
    arr = np.repeat(arr, 3, axis=0) if arr.shape[0] == 1 else arr[:3]
    return arr.transpose(1, 2, 0)


def overlay(image: torch.Tensor, mask: torch.Tensor, alpha: float = 0.45) -> np.ndarray:
    """RGB array of ``image`` [C, H, W] with ``mask`` [1, H, W] tinted yellow."""
    rgb = _to_rgb(image)
    m = mask.detach().float().cpu().numpy()[0][..., None] > 0.5
    return np.clip(np.where(m, (1 - alpha) * rgb + alpha * OVERLAY_COLOUR, rgb), 0.0, 1.0)


def prediction_overlays(images: torch.Tensor, masks: torch.Tensor, logits: torch.Tensor,
                        path: str | os.PathLike, threshold: float = 0.5, title: str | None = None) -> Path:
    """Grid: one row per image; columns image, ground truth overlay, prediction overlay."""

    if not (images.shape[0] == masks.shape[0] == logits.shape[0]) or images.shape[0] == 0:
        raise ValueError(f"images, masks and logits need the same non-zero batch size, got "
                         f"{images.shape[0]}, {masks.shape[0]}, {logits.shape[0]}")
    preds = binarize(logits, threshold)
    dice = dice_per_image(preds, masks.float())
    n = images.shape[0]
    fig, axes = plt.subplots(n, 3, figsize=(6.6, 2.2 * n), squeeze=False)
    for i in range(n):
        panels = [(_to_rgb(images[i]), "image"), (overlay(images[i], masks[i]), "ground truth"),
                  (overlay(images[i], preds[i]), f"prediction (Dice {float(dice[i]):.3f})")]
        for ax, (arr, label) in zip(axes[i], panels):
            ax.imshow(arr, interpolation="nearest")
            ax.set_title(label, fontsize=8)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def training_curves(histories: Mapping[str, Mapping[str, Any]], path: str | os.PathLike,
                    title: str | None = None) -> Path:
    """Loss (train, dashed val) and Dice (train, dashed val) per epoch for each named run."""
    if not histories:
        raise ValueError("training_curves needs at least one history")
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 3.8))
    for colour, (name, hist) in zip(plt.cm.tab10.colors, histories.items()):
        epochs = hist.get("epochs", [])
        if not epochs:
            raise ValueError(f"history {name!r} has no finished epoch")
        x = [e["epoch"] for e in epochs]
        ax_loss.plot(x, [e["train_loss"] for e in epochs], color=colour, label=f"{name} train")
        ax_dice.plot(x, [e["train_dice"] for e in epochs], color=colour, label=f"{name} train")
        if "val_loss" in epochs[0]:
            ax_loss.plot(x, [e["val_loss"] for e in epochs], color=colour, linestyle="--", label=f"{name} val")
            ax_dice.plot(x, [e["val_dice"] for e in epochs], color=colour, linestyle="--", label=f"{name} val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_dice.set(xlabel="epoch", ylabel="Dice", title="Dice", ylim=(0, 1))
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


SOURCE_COLOUR, DUSE_COLOUR = "tab:blue", "tab:orange"


def _bars(ax, x: np.ndarray, values: Sequence[float | None], width: float, colour: str, label: str) -> None:
    """Bars with their value written above each; a Dice of 0 still shows (a thick stub at the
    axis and "0.00"), and a missing value says "n/a" instead of leaving a gap."""
    heights = [np.nan if v is None else float(v) for v in values]
    ax.bar(x, np.nan_to_num(heights, nan=0.0), width, color=colour, label=label)
    for xi, h in zip(x, heights):
        if np.isnan(h):
            ax.text(xi, 0.01, "n/a", ha="center", va="bottom", fontsize=6, color="grey")
            continue
        if h == 0.0:
            ax.plot([xi - width / 2, xi + width / 2], [0.0, 0.0], color=colour, linewidth=3,
                    solid_capstyle="butt", clip_on=False)
        ax.text(xi, h + 0.01, f"{h:.2f}", ha="center", va="bottom", fontsize=6)


def _grouped(ax, labels: Sequence[str], source: Sequence[float | None], adapted: Sequence[float | None]) -> None:
    x = np.arange(len(labels), dtype=float)
    has_duse = any(v is not None for v in adapted)
    width = 0.4 if has_duse else 0.6
    _bars(ax, x - (width / 2 if has_duse else 0.0), source, width, SOURCE_COLOUR, "source only")
    if has_duse:
        _bars(ax, x + width / 2, adapted, width, DUSE_COLOUR, "DUSE")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("Dice (0 to 1)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")


def robustness_figure(results: Mapping[str, Any]):
    """Two panels from ``networks.evaluate`` results: the corruptions at their severity (clean
    first; source only and, when evaluated, DUSE) and the Gaussian-noise sweep by sigma."""
    severity = results["corruptions"]["severity"]
    labels, source, adapted = ["clean"], [results["clean"]["source_only"]["dice"]], \
        [results["clean"].get("duse", {}).get("dice")]
    for name, entry in results["corruptions"]["results"].items():
        labels.append(name.replace("_", "\n"))
        source.append(entry["source_only"]["dice"])
        adapted.append(entry.get("duse", {}).get("dice"))
    noise = results["noise"]
    panels = 2 if noise else 1
    fig, axes = plt.subplots(1, panels, figsize=(max(6.0, 0.9 * len(labels)) + 3.2 * (panels - 1), 3.6),
                             squeeze=False, gridspec_kw={"width_ratios": [len(labels), max(2, len(noise))][:panels]})
    ax = axes[0][0]
    _grouped(ax, labels, source, adapted)
    ax.set_title(f"corruptions at severity {severity} (of 5)", fontsize=9)
    if noise:
        ax = axes[0][1]
        sigmas = list(noise)
        _grouped(ax, [f"\u03c3 = {s}" for s in sigmas], [noise[s]["dice"] for s in sigmas],
                 [noise[s].get("duse", {}).get("dice") for s in sigmas])
        ax.set_title("Gaussian noise, source only", fontsize=9)
        ax.set_xlabel("noise standard deviation \u03c3 (intensities in [0, 1])", fontsize=7)
    if "model" in results and "num_images" in results:
        fig.suptitle(f"{results['model']['name']}: Dice on {results['num_images']} images", fontsize=10)
    fig.tight_layout()
    return fig


def robustness_bars(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """:func:`robustness_figure` written to ``path`` (PNG)."""
    return _save(robustness_figure(results), path)


def checkpoint_title(state: Mapping[str, Any]) -> str:
    """``"<model>, best epoch 10 of 12"``: which epoch a checkpoint holds, of how many the run
    was set to train, and whether it is the best one (``best.pt``) by validation Dice."""
    epoch, planned = state["epoch"], state.get("config", {}).get("epochs", state["epoch"])
    records = [r for r in state.get("history", {}).get("epochs", []) if r["epoch"] <= epoch]

    def dice(record: Mapping[str, Any]) -> float:
        return record.get("val_dice", record["train_dice"])

    best = bool(records) and records[-1]["epoch"] == epoch and dice(records[-1]) >= max(map(dice, records))
    return f"{state['model']['name']}, {'best ' if best else ''}epoch {epoch} of {planned}"


def overlays_for_checkpoint(checkpoint: str, path: str | os.PathLike, num_images: int = 6, duse: bool = False,
                            data: str | None = None) -> Path:
    """Prediction overlays of a checkpoint on the first images of its evaluation set."""
    num_images = check_positive_int(num_images, "num_images")
    model, state = ckpt.load_model(checkpoint)
    dataset, _ = evaluation_dataset(EvalConfig(checkpoint=checkpoint, data=data, max_images=num_images),
                                       state["config"])
    pairs = [dataset[i] for i in range(len(dataset))]
    images, masks = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    logits = predict_logits(model, images, duse=duse)
    return prediction_overlays(images, masks, logits, path,
                               title=f"{checkpoint_title(state)}{' + DUSE' if duse else ''}")


def _history_of(path: Path) -> dict[str, Any]:
    file = path / "history.json" if path.is_dir() else path
    return json.loads(file.read_text())


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("curves", help="training curves from run folders or history.json files")
    c.add_argument("runs", nargs="+", help="run folder (with history.json) or a history JSON file")
    c.add_argument("--label", action="append", default=None, help="legend label per run (default: folder name)")
    c.add_argument("--out", required=True)
    o = sub.add_parser("overlays", help="prediction overlays of a checkpoint")
    o.add_argument("checkpoint")
    o.add_argument("--num-images", type=cli.integer(1), default=6)
    o.add_argument("--duse", action="store_true")
    o.add_argument("--data", default=None)
    o.add_argument("--out", required=True)
    return p


@cli.tool(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "curves":
        paths = [Path(r) for r in args.runs]
        labels = args.label or [p.name if p.is_dir() else p.parent.name for p in paths]
        if len(labels) != len(paths):
            raise cli.UsageError(f"--label must be given once per run: {len(paths)} run(s), {len(labels)} label(s)")
        out = training_curves({lab: _history_of(p) for lab, p in zip(labels, paths)}, args.out)
    else:
        out = overlays_for_checkpoint(args.checkpoint, args.out, args.num_images, args.duse, args.data)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
