"""Figures as PNG (matplotlib, Agg backend; no display needed), written atomically.

* :func:`prediction_overlays` — rows of image / ground truth / prediction, the masks drawn
  in yellow over the image as in continuous-unet Figure 2, with each row's Dice.
* :func:`training_curves` — loss and Dice per epoch for one or more runs, as the
  convergence plots of continuous-unet Figure 3.
* :func:`robustness_bars` — Dice under each corruption, source only vs DUSE (cnm-unet
  Table 4 as a chart).

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

from networks import checkpoint as ckpt

OVERLAY_COLOUR = np.array([1.0, 0.9, 0.0])  # yellow, as the paper's Figure 2


def _save(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    with ckpt.atomic_path(path) as tmp:
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
    from networks.metrics import binarize, dice_per_image

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


def robustness_bars(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Dice per corruption (and noise level) from ``networks.evaluate`` results."""
    labels, source, adapted = ["clean"], [results["clean"]["source_only"]["dice"]], \
        [results["clean"].get("duse", {}).get("dice", np.nan)]
    for name, entry in results["corruptions"]["results"].items():
        labels.append(name.replace("_", "\n"))
        source.append(entry["source_only"]["dice"])
        adapted.append(entry.get("duse", {}).get("dice", np.nan))
    for sigma, m in results["noise"].items():
        labels.append(f"noise\n{sigma}")
        source.append(m["dice"])
        adapted.append(np.nan)
    x = np.arange(len(labels))
    has_duse = not np.all(np.isnan(adapted))
    width = 0.4 if has_duse else 0.7
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(labels)), 3.5))
    ax.bar(x - (width / 2 if has_duse else 0), source, width, label="source only")
    if has_duse:
        ax.bar(x + width / 2, adapted, width, label="DUSE")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set(ylabel="Dice", ylim=(0, 1), title=f"robustness (corruptions at severity {results['corruptions']['severity']})")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def overlays_for_checkpoint(checkpoint: str, path: str | os.PathLike, num_images: int = 6, duse: bool = False,
                            data: str | None = None) -> Path:
    """Prediction overlays of a checkpoint on the first images of its evaluation set."""
    from networks.evaluate import EvalConfig, evaluation_dataset, predict_logits

    model, state = ckpt.load_model(checkpoint)
    dataset, _ = evaluation_dataset(EvalConfig(checkpoint=checkpoint, data=data, max_images=num_images),
                                       state["config"])
    pairs = [dataset[i] for i in range(len(dataset))]
    images, masks = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    logits = predict_logits(model, images, duse=duse)
    return prediction_overlays(images, masks, logits, path,
                               title=f"{state['model']['name']} after {state['epoch']} epochs{' + DUSE' if duse else ''}")


def _history_of(path: Path) -> dict[str, Any]:
    file = path / "history.json" if path.is_dir() else path
    return json.loads(file.read_text())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m networks.figures", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("curves", help="training curves from run folders or history.json files")
    c.add_argument("runs", nargs="+", help="run folder (with history.json) or a history JSON file")
    c.add_argument("--label", action="append", default=None, help="legend label per run (default: folder name)")
    c.add_argument("--out", required=True)
    o = sub.add_parser("overlays", help="prediction overlays of a checkpoint")
    o.add_argument("checkpoint")
    o.add_argument("--num-images", type=int, default=6)
    o.add_argument("--duse", action="store_true")
    o.add_argument("--data", default=None)
    o.add_argument("--out", required=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "curves":
        paths = [Path(r) for r in args.runs]
        labels = args.label or [p.name if p.is_dir() else p.parent.name for p in paths]
        if len(labels) != len(paths):
            raise SystemExit("--label must be given once per run")
        out = training_curves({lab: _history_of(p) for lab, p in zip(labels, paths)}, args.out)
    else:
        out = overlays_for_checkpoint(args.checkpoint, args.out, args.num_images, args.duse, args.data)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
