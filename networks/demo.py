"""The README's main job: ``python -m networks.demo``.

Trains CNM-UNet on the built-in synthetic lesion data with odekern's fused kernels (the
default backend choice), evaluates it (clean, Gaussian-noise sweep, the six corruptions at
severity 5 with and without DUSE), and writes into ``--out`` (default ``runs/demo``):

    train/last.pt, train/best.pt, train/history.json   checkpoints and per-epoch history
    evaluation.json                                    every metric of the evaluation
    curves.png, overlays.png, robustness.png           figures
    summary.json                                       timings, backend, final Dice

Sized for a 2-core CPU in a few minutes: 64x64 images and the CNM-UNet encoder at a
quarter of the paper's width (16-32-64-128-128 instead of 64-128-256-512-512); the paper's
full configuration is ``--width 64 --size 256``. Everything else (CNM-Block, dopri5 with
delta_t 0.05, AdamW + cosine schedule, BCE + Dice, flips + rotation) is the paper's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from networks import checkpoint as ckpt
from networks import cli
from networks import evaluate as evaluation
from networks import figures
from networks import train as training
from networks.models import MODEL_NAMES
from odekern import dispatch

def fused_backend_report() -> dict[str, Any]:
    """Which backend runs nmode_solve on CPU tensors here, and what exists."""

    report: dict[str, Any] = {"available": {k: (v if v is True else str(v)) for k, v in dispatch.backends().items()}}
    try:
        report["nmode_solve_cpu"] = dispatch.select("nmode_solve", torch.device("cpu")).name
    except Exception as exc:  # noqa: BLE001 - report, never fail the demo over a diagnostic
        report["nmode_solve_cpu"] = f"unknown ({type(exc).__name__}: {exc})"
    return report


def model_options(model: str, width: int) -> dict[str, Any]:
    if model == "cnm-unet":
        return {"encoder_widths": tuple(width * m for m in (1, 2, 4, 8, 8))}
    if model == "continuous-unet":
        return {"base_filters": max(1, width // 4)}
    return {"block": "pln", "base_filters": max(1, width // 2)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    model = args.model
    backend = fused_backend_report()
    print(f"[demo] training {model} on synthetic {args.size}x{args.size} lesions "
          f"({args.num_train} train / {args.num_val} val), {args.epochs} epochs; "
          f"nmode_solve backend on CPU: {backend['nmode_solve_cpu']}", flush=True)

    train_cfg = training.TrainConfig(
        model=model, data="synthetic", size=args.size, num_train=args.num_train, num_val=args.num_val,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, model_options=model_options(model, args.width),
        seed=args.seed, out=str(out / "train"), progress=args.progress, threads=args.threads,
        max_steps_per_epoch=args.max_steps_per_epoch)
    history = training.run(train_cfg)
    trained = time.perf_counter()

    eval_cfg = evaluation.EvalConfig(
        checkpoint=str(out / "train" / "best.pt"), num_images=args.num_test, batch_size=args.batch_size,
        corruptions=tuple(args.corruptions), duse=args.duse, out=str(out / "evaluation.json"), seed=args.seed,
        progress=args.progress)
    results = evaluation.run(eval_cfg)
    print(evaluation.format_table(results), flush=True)
    evaluated = time.perf_counter()

    figures.training_curves({model: history}, out / "curves.png", title=f"{model} on synthetic lesions")
    figures.overlays_for_checkpoint(eval_cfg.checkpoint, out / "overlays.png", num_images=args.num_overlays)
    figures.robustness_bars(results, out / "robustness.png")

    clean = results["clean"]["source_only"]
    summary = {
        "model": model, "model_options": model_options(model, args.width),
        "image_size": args.size, "epochs": args.epochs, "num_train": args.num_train, "num_val": args.num_val,
        "num_test": results["num_images"], "backend": backend, "torch_threads": torch.get_num_threads(),
        "best_val_dice": max(e.get("val_dice", float("nan")) for e in history["epochs"]),
        "test_dice": clean["dice"], "test_iou": clean["iou"], "test_accuracy": clean["accuracy"],
        "test_ahd": clean["ahd"], "test_dice_duse": results["clean"].get("duse", {}).get("dice"),
        "seconds_train": trained - started, "seconds_evaluate": evaluated - trained,
        "seconds_total": time.perf_counter() - started,
    }
    ckpt.atomic_write_json(out / "summary.json", summary)
    print(f"[demo] {model}: test Dice {clean['dice']:.4f} (IoU {clean['iou']:.4f}) on {results['num_images']} "
          f"unseen synthetic images after {args.epochs} epochs; total {summary['seconds_total']:.0f} s "
          f"(train {summary['seconds_train']:.0f} s); outputs in {out}/", flush=True)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m networks.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--model", default="cnm-unet", choices=MODEL_NAMES)
    p.add_argument("--size", type=cli.integer(1), default=64)
    p.add_argument("--width", type=cli.integer(1), default=16, help="first encoder width (paper: 64)")
    p.add_argument("--epochs", type=cli.integer(1), default=12)
    p.add_argument("--num-train", type=cli.integer(1), default=320)
    p.add_argument("--num-val", type=cli.integer(0), default=64)
    p.add_argument("--num-test", type=cli.integer(1), default=24)
    p.add_argument("--num-overlays", type=cli.integer(0), default=6)
    p.add_argument("--batch-size", type=cli.integer(1), default=8)
    p.add_argument("--lr", type=cli.real(0.0, above=True), default=None)
    p.add_argument("--corruptions", nargs="*", default=list(evaluation.CORRUPTIONS),
                   choices=evaluation.CORRUPTIONS, metavar="NAME",
                   help="corruptions to evaluate: " + ", ".join(evaluation.CORRUPTIONS))
    p.add_argument("--no-duse", dest="duse", action="store_false", help="skip the DUSE evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=cli.integer(1), default=None)
    p.add_argument("--max-steps-per-epoch", type=cli.integer(1), default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


@cli.tool("python -m networks.demo")
def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
