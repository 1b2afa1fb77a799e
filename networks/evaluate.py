"""Evaluate a trained checkpoint: ``odekern-evaluate`` / ``python -m networks.evaluate``.

Reports Dice, IoU, pixel accuracy and average Hausdorff distance (``networks.metrics``) on

* the clean images (optionally also with DUSE test-time adaptation, ``--duse``);
* a Gaussian-noise sweep, sigma 0.2 / 0.4 / 0.5 by default (continuous-unet Table 4);
* a corruption sweep: brightness, contrast, defocus blur, Gaussian noise, shot noise and
  saturate at severity 5 (cnm-unet Table 4), "source only" and, with ``--duse``, adapted;
* a solver ablation (``--solvers euler rk4 ...``): the same weights rebuilt with another ODE
  solver (continuous-unet Table 5); models without that option are reported as skipped.

Results go to a JSON file (atomic write) and a table on stdout. Noise and corruptions are
drawn from generators seeded by ``--seed``, so two evaluations give identical numbers.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from networks import checkpoint as ckpt
from networks import cli
from networks.arguments import check_finite_number, check_positive_int
from networks.corruptions import CORRUPTIONS, SEVERITIES, add_gaussian_noise, corrupt
from networks.data import FolderSegmentation, SyntheticLesions, split_indices
from networks.metrics import MetricAccumulator, per_image_metrics

DEFAULT_NOISE = (0.2, 0.4, 0.5)
Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class EvalConfig:
    checkpoint: str
    data: str | None = None
    split: str = "auto"
    num_images: int = 64
    batch_size: int = 8
    noise: tuple[float, ...] = DEFAULT_NOISE
    corruptions: tuple[str, ...] = tuple(CORRUPTIONS)
    severity: int = 5
    duse: bool = False
    solvers: tuple[str, ...] = ()
    out: str | None = None
    seed: int = 0
    max_images: int | None = None
    threads: int | None = None
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------

def evaluation_dataset(cfg: EvalConfig, train_cfg: dict[str, Any]) -> tuple[torch.utils.data.Dataset, str]:
    """The images to score and a description of them.

    ``split="auto"``: synthetic data -> fresh images never seen in training or validation;
    the training folder -> its validation split; any other folder -> all of it.
    """
    data = cfg.data or train_cfg["data"]
    size, channels = train_cfg["size"], train_cfg.get("channels", 3)
    if data == "synthetic":
        if cfg.split not in ("auto", "test", "val"):
            raise ValueError(f"split for synthetic data must be auto, test or val, got {cfg.split!r}")
        if cfg.split == "val":
            start, count = train_cfg["num_train"], train_cfg["num_val"]
        else:
            start, count = train_cfg["num_train"] + train_cfg["num_val"], cfg.num_images
        dataset = SyntheticLesions(count, size, seed=train_cfg["seed"], start=start, channels=channels)
        desc = f"synthetic seed {train_cfg['seed']} images {start}..{start + count - 1}"
    else:
        same_folder = train_cfg["data"] != "synthetic" and Path(data).resolve() == Path(train_cfg["data"]).resolve()
        # Another folder is detected afresh (e.g. a DUSE target domain), except OD/OC: disc or cup.
        layout = train_cfg.get("layout", "auto")
        full = FolderSegmentation(data, size, channels=channels,
                                  layout=layout if same_folder or layout.startswith("odoc-") else "auto")
        split = cfg.split if cfg.split != "auto" else ("val" if same_folder else "all")
        if split == "val":
            _, val_idx = split_indices(len(full), train_cfg["val_fraction"], train_cfg["seed"])
            if not val_idx:
                raise ValueError("the training run had no validation split (val_fraction 0); use --split all")
            dataset = torch.utils.data.Subset(full, val_idx)
        elif split == "all":
            dataset = full
        else:
            raise ValueError(f"split for folder data must be auto, val or all, got {cfg.split!r}")
        desc = f"{data} ({split}, {len(dataset)} images)"
    if cfg.max_images is not None and cfg.max_images < len(dataset):
        dataset = torch.utils.data.Subset(dataset, list(range(cfg.max_images)))
        desc += f", first {cfg.max_images}"
    return dataset, desc


def _batches(dataset, batch_size: int):
    for start in range(0, len(dataset), batch_size):
        pairs = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        yield torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


# ---------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------

def supports_duse(model: nn.Module) -> bool:
    return callable(getattr(model, "adapt", None))


def predict_logits(model: nn.Module, images: torch.Tensor, duse: bool = False) -> torch.Tensor:
    """Logits of ``model`` (eval mode); with ``duse`` through ``model.adapt`` (CNM-UNet's DUSE,
    which restores the trained weights after every image itself)."""
    if duse:
        if not supports_duse(model):
            raise ValueError(f"{type(model).__name__} has no test-time adaptation (DUSE belongs to CNM-UNet)")
        return model.adapt(images).detach()
    with torch.no_grad():
        return model(images)


def score(model: nn.Module, dataset, transform: Transform | None = None, duse: bool = False,
          batch_size: int = 8, seed: int = 0, desc: str = "", progress: bool = False) -> dict[str, Any]:
    """Mean metrics of ``model`` over ``dataset``, images passed through ``transform`` first."""
    batch_size = check_positive_int(batch_size, "batch_size")
    from tqdm.auto import tqdm

    model.eval()
    if duse and hasattr(model, "reset_adaptation"):
        model.reset_adaptation()  # each setting starts from an empty DUSE memory
    generator = torch.Generator().manual_seed(seed)
    acc = MetricAccumulator()
    device = next(model.parameters()).device
    started = time.perf_counter()
    total = math.ceil(len(dataset) / batch_size)
    for images, masks in tqdm(_batches(dataset, batch_size), total=total, desc=desc, leave=False,
                              disable=not progress):
        if transform is not None:
            images = transform(images, generator)
        logits = predict_logits(model, images.to(device), duse=duse)
        acc.update(per_image_metrics(logits.cpu(), masks))
    out = acc.summary()
    if not math.isfinite(out["ahd"]):
        # JSON has no NaN: the value is null and the reason is written beside it.
        out["ahd"] = None
        out["ahd_note"] = (f"undefined: in all {out['num_images']} images exactly one of prediction and "
                           "ground truth is empty")
    out["seconds"] = time.perf_counter() - started
    return out


def _noise_transform(sigma: float) -> Transform:
    return lambda images, gen: add_gaussian_noise(images, sigma, generator=gen)


def _corruption_transform(name: str, severity: int) -> Transform:
    return lambda images, gen: corrupt(images, name, severity, generator=gen)


def _seed_for(base: int, tag: str) -> int:
    # Stable per-setting seed (Python's hash() is salted per process).
    return base * 1_000_003 + sum((i + 1) * ord(c) for i, c in enumerate(tag))


def check_config(cfg: EvalConfig) -> None:
    """Every setting refused by name when out of range, before the checkpoint is read."""
    for name, minimum in (("num_images", 1), ("batch_size", 1), ("seed", 0)):
        check_positive_int(getattr(cfg, name), f"EvalConfig: {name}", minimum)
    for name in ("max_images", "threads"):
        if getattr(cfg, name) is not None:
            check_positive_int(getattr(cfg, name), f"EvalConfig: {name}")
    if cfg.severity not in SEVERITIES or isinstance(cfg.severity, bool):
        raise ValueError(f"EvalConfig: severity must be one of {SEVERITIES}, got {cfg.severity!r}")
    unknown = [c for c in cfg.corruptions if c not in CORRUPTIONS]
    if unknown:
        raise ValueError(f"unknown corruption(s) {unknown}; choose from {', '.join(CORRUPTIONS)}")
    for sigma in cfg.noise:
        check_finite_number(sigma, "EvalConfig: noise sigma", minimum=0.0)


def run(cfg: EvalConfig) -> dict[str, Any]:
    """All requested evaluations of ``cfg.checkpoint``; writes and returns the results dict."""
    check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, state = ckpt.load_model(cfg.checkpoint)
    dataset, desc = evaluation_dataset(cfg, state["config"])
    use_duse = cfg.duse and supports_duse(model)
    started = time.perf_counter()
    kw = dict(batch_size=cfg.batch_size, progress=cfg.progress)

    def both(tag: str, transform: Transform | None) -> dict[str, Any]:
        seed = _seed_for(cfg.seed, tag)
        entry = {"source_only": score(model, dataset, transform, seed=seed, desc=tag, **kw)}
        if use_duse:
            entry["duse"] = score(model, dataset, transform, duse=True, seed=seed, desc=f"{tag} +DUSE", **kw)
        return entry

    results: dict[str, Any] = {
        "checkpoint": str(cfg.checkpoint), "model": state["model"], "data": desc,
        "num_images": len(dataset), "trained_epochs": state["epoch"], "config": asdict(cfg),
        "duse": ("on" if use_duse else
                 "off" if not cfg.duse else f"unsupported: {type(model).__name__} has no adapt()"),
        "clean": both("clean", None),
        "noise": {f"{s:g}": score(model, dataset, _noise_transform(s), seed=_seed_for(cfg.seed, f"noise{s:g}"),
                                  desc=f"noise {s:g}", **kw) for s in cfg.noise},
        "corruptions": {"severity": cfg.severity,
                        "results": {c: both(c, _corruption_transform(c, cfg.severity)) for c in cfg.corruptions}},
        "solvers": {},
    }
    for solver in cfg.solvers:
        try:
            variant, _ = ckpt.load_model(cfg.checkpoint, {"method": solver})
        except (TypeError, ValueError, RuntimeError, NotImplementedError) as exc:
            results["solvers"][solver] = {"skipped": f"{type(exc).__name__}: {exc}"}
            continue
        results["solvers"][solver] = score(variant, dataset, seed=_seed_for(cfg.seed, "clean"),
                                           desc=f"solver {solver}", **kw)
    results["seconds"] = time.perf_counter() - started
    out = Path(cfg.out) if cfg.out else Path(cfg.checkpoint).with_name("evaluation.json")
    ckpt.atomic_write_json(out, results)
    results["written_to"] = str(out)
    return results


# ---------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------

def _row(label: str, m: dict[str, Any]) -> str:
    if "skipped" in m:
        return f"{label:<34} skipped: {m['skipped']}"
    ahd = "n/a" if m["ahd"] is None or not math.isfinite(m["ahd"]) else f"{m['ahd']:.2f}"
    return f"{label:<34} {m['dice']:>7.4f} {m['iou']:>7.4f} {m['accuracy']:>8.4f} {ahd:>7}"


def format_table(results: dict[str, Any]) -> str:
    lines = [f"model {results['model']['name']}  data {results['data']}  images {results['num_images']}",
             f"{'setting':<34} {'Dice':>7} {'IoU':>7} {'Acc':>8} {'AHD':>7}", "-" * 67]
    for variant, m in results["clean"].items():
        lines.append(_row("clean" + (" + DUSE" if variant == "duse" else ""), m))
    for sigma, m in results["noise"].items():
        lines.append(_row(f"gaussian noise sigma={sigma}", m))
    sev = results["corruptions"]["severity"]
    for name, entry in results["corruptions"]["results"].items():
        for variant, m in entry.items():
            lines.append(_row(f"{name} s{sev}" + (" + DUSE" if variant == "duse" else ""), m))
    for solver, m in results["solvers"].items():
        lines.append(_row(f"solver {solver}", m))
    lines.append("AHD: average Hausdorff distance in pixels; n/a if no image had both masks non-empty")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------

EPILOG = """\
examples:
  odekern-evaluate runs/try/best.pt                          clean, noise sweep, six corruptions
  odekern-evaluate runs/try/best.pt --duse --out runs/try/eval-duse.json
  odekern-evaluate runs/kvasir/best.pt --data datasets/cvc-clinicdb --split all
  odekern-evaluate runs/try/best.pt --noise --corruptions --solvers euler rk4   solvers only
"""


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="odekern-evaluate", description=__doc__.split("\n\n")[0], epilog=EPILOG)
    p.add_argument("checkpoint", help="a checkpoint written by odekern-train (last.pt / best.pt)")
    p.add_argument("--data", default=None, help="'synthetic' or a dataset folder in a public release's layout "
                                                "(docs/datasets.md; default: the training data)")
    p.add_argument("--split", default="auto", choices=("auto", "val", "all", "test"),
                   help="auto: unseen synthetic images, the training folder's val split, or all of another folder")
    p.add_argument("--num-images", type=cli.integer(1), default=64, help="synthetic test images")
    p.add_argument("--max-images", type=cli.integer(1), default=None, help="score only the first N images")
    p.add_argument("--batch-size", type=cli.integer(1), default=8, help="images per forward pass")
    p.add_argument("--noise", type=cli.real(0.0), nargs="*", default=list(DEFAULT_NOISE),
                   help="Gaussian noise sigmas (none: skip the sweep)")
    p.add_argument("--corruptions", nargs="*", default=list(CORRUPTIONS), choices=CORRUPTIONS, metavar="NAME",
                   help=f"corruptions to apply, from {', '.join(CORRUPTIONS)} (default: all; none: skip)")
    p.add_argument("--severity", type=int, default=5, choices=(1, 2, 3, 4, 5))
    p.add_argument("--duse", action="store_true", help="also score with DUSE test-time adaptation (CNM-UNet)")
    p.add_argument("--solvers", nargs="*", default=[], help="solver ablation: re-score with these ODE solvers")
    p.add_argument("--out", default=None, help="results JSON (default: evaluation.json next to the checkpoint)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=cli.integer(1), default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


@cli.tool("odekern-evaluate")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
    cfg = EvalConfig(checkpoint=args.checkpoint, data=args.data, split=args.split, num_images=args.num_images,
                     batch_size=args.batch_size, noise=tuple(args.noise), corruptions=tuple(args.corruptions),
                     severity=args.severity, duse=args.duse, solvers=tuple(args.solvers), out=args.out,
                     seed=args.seed, max_images=args.max_images, threads=args.threads, progress=args.progress)
    results = run(cfg)
    print(format_table(results))
    print(f"results written to {results['written_to']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
