"""Train a segmentation network: ``odekern-train`` / ``python -m networks.train``.

Single process or data-parallel (``torchrun --nproc_per_node=N -m networks.train ...``).
Writes into ``--out``: ``last.pt`` (every epoch and on Ctrl-C), ``best.pt`` (best validation
Dice) and ``history.json`` — all atomically. ``--resume`` continues from ``last.pt``
(or a given file) bit-exactly: same batches, same augmentations, same dropout, same
losses as a run that was never interrupted, even when stopped mid-epoch.

``--preset NAME`` sets one of the papers' experiments (``networks.presets``, listed in
docs/reproducing.md); flags given explicitly win over it. ``--data`` takes a dataset folder as
its public release lays it out (``networks.layouts``, docs/datasets.md).

Paper defaults (used unless overridden on the command line; ``networks.presets.PAPER_TRAINING``):

* CNM-UNet / vanilla U-Net (cnm-unet.txt, Implementation Details): AdamW,
  CosineAnnealingLR(T_max=50, eta_min=1e-5) stepped per epoch, batch size 8, flips and
  rotation. The paper gives no learning rate or loss; we use AdamW's default 1e-3 and
  BCE + Dice (the usual choice of the DiODE-UNet code base the paper compares with).
* Continuous U-Net and the block baselines (continuous-unet.txt, Sec. 4.1 and Table 10):
  Adam, lr 1e-3 (Sec. 4.1; Table 10 says 1e-4), learning rate x0.999 every epoch
  (StepLR step 1, gamma 0.999), batch size 16, BCE loss.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from networks import atomic_files
from networks import checkpoint as ckpt
from networks import cli, ddp
from networks.arguments import check_finite_number, check_positive_int
from networks.models import MODEL_NAMES
from networks.data import (
    FolderSegmentation,
    SyntheticLesions,
    augment_batch,
    augment_generator,
    epoch_order,
    split_indices,
)
from networks.layouts import LAYOUT_NAMES
from networks.metrics import binarize, dice_per_image
from networks.presets import PAPER_TRAINING, PRESET_NAMES
from networks.presets import get as get_preset

# One source for the papers' optimisation settings: networks.presets.
PAPER_DEFAULTS: dict[str, dict[str, Any]] = PAPER_TRAINING
FALLBACK_DEFAULTS = PAPER_DEFAULTS["cnm-unet"]
SCHEDULE_DEFAULTS = dict(t_max=50, eta_min=1e-5, step_size=1, gamma=0.999)

# Command-line flag -> build_model option (the models call the solver ``method``, as
# torchdiffeq does).
OPTION_NAMES = {"solver": "method", "gradient": "gradient", "block": "block"}

# Settings that may change on resume; everything else comes from the checkpoint so the
# continued run is the same run.
RESUME_OVERRIDABLE = ("epochs", "out", "resume", "progress", "workers", "device", "threads")


@dataclass
class TrainConfig:
    model: str = "cnm-unet"
    data: str = "synthetic"
    layout: str = "auto"
    preset: str | None = None
    size: int = 64
    channels: int = 3
    num_train: int = 256
    num_val: int = 64
    val_fraction: float = 0.2
    epochs: int = 10
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    t_max: int | None = None
    eta_min: float | None = None
    step_size: int | None = None
    gamma: float | None = None
    loss: str | None = None
    augment: bool = True
    hflip: bool = True
    vflip: bool = True
    rotation: float = 30.0
    solver: str | None = None
    gradient: str | None = None
    block: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    out: str = "runs/train"
    resume: str | None = None
    workers: int = 0
    device: str = "auto"
    threads: int | None = None
    progress: bool = True
    max_steps_per_epoch: int | None = None

    def resolved(self) -> TrainConfig:
        """Fill every ``None`` hyper-parameter from the paper defaults of this model."""
        defaults = {**SCHEDULE_DEFAULTS, **PAPER_DEFAULTS.get(self.model, FALLBACK_DEFAULTS)}
        updates = {k: v for k, v in defaults.items() if getattr(self, k, None) is None}
        return dataclasses.replace(self, **updates)

    def network_options(self) -> dict[str, Any]:
        """Keyword options for ``build_model`` (flags only when given)."""
        options = dict(self.model_options)
        for flag, option in OPTION_NAMES.items():
            if getattr(self, flag) is not None:
                options[option] = getattr(self, flag)
        return options


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after Ctrl-C once the checkpoint of the last finished step is written."""

    def __init__(self, checkpoint_path: Path | None):
        super().__init__(f"training interrupted; resume with --resume {checkpoint_path}")
        self.checkpoint_path = checkpoint_path


class TrainingDiverged(ValueError):
    """The run diverged: a step's gradient became NaN or inf (that step is not applied), or, once
    the weights had changed, a forward or backward pass met NaN or inf. The run stops: every later
    step would train NaN weights, and their NaN outputs thresholded would still read as scores."""


@contextlib.contextmanager
def _diverged_if_updated(where: str, updates: int, optimizer: torch.optim.Optimizer):
    """Once this run has changed the weights, a non-finite value met in a forward or backward pass
    (odekern's solvers and ``check_finite_logits`` refuse them) is almost always the run
    diverging, not a bad input (the inputs passed before): say so, keeping the original message."""
    try:
        yield
    except (ValueError, FloatingPointError) as exc:
        if updates == 0 or isinstance(exc, TrainingDiverged):
            raise
        raise TrainingDiverged(
            f"{where}, after {updates} weight update(s) at learning rate {optimizer.param_groups[0]['lr']:g}: "
            f"{exc}. The run has probably diverged: train again with a smaller --lr") from exc


def gradients_are_finite(model: nn.Module) -> bool:
    """Whether every gradient of ``model`` is finite.

    A NaN or inf anywhere makes its tensor's sum NaN or inf, so the common case costs one sum per
    tensor and one host read (a maximum of magnitudes, or an element-wise isfinite, reads the same
    memory about 10x slower on CPU). Only a sum that overflowed can be non-finite while every
    element is finite; that case is decided exactly, element by element."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return True
    device = grads[0].device
    sums = torch.stack([g.sum().abs().to(device=device, dtype=torch.float64) for g in grads])
    if bool(torch.isfinite(sums).all()):
        return True
    return all(bool(torch.isfinite(g).all()) for g in grads)


def _check_gradients(model: nn.Module, loss: torch.Tensor, where: str, updates: int,
                     optimizer: torch.optim.Optimizer, out: Path) -> None:
    """Refuse a step whose gradient is NaN or inf before it reaches the weights. Under DDP the
    gradients are already averaged over the ranks, so every rank reaches the same answer and they
    stop together (a NaN on one rank's data included)."""
    if gradients_are_finite(model):
        return
    loss_value = float(loss.detach())
    if updates == 0:
        raise ValueError(f"{where}: the gradient is NaN or inf (loss {loss_value:.6g}) before any weight update: "
                         "the data or the model's initial weights give no finite gradient")
    raise TrainingDiverged(
        f"training diverged at {where}: the gradient is NaN or inf (loss {loss_value:.6g}, learning rate "
        f"{optimizer.param_groups[0]['lr']:g}); the step was not applied. Train again with a smaller --lr; "
        f"{out / 'last.pt'} holds the last finished epoch, if any")


class StopOnInterrupt:
    """First Ctrl-C: finish the current step, save, stop. Second Ctrl-C: abort at once.

    Only the main thread can own a signal handler; elsewhere this is a no-op and the loop
    relies on ``KeyboardInterrupt`` alone.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\n[odekern-train] Ctrl-C: finishing this step and saving a checkpoint "
              "(press Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# ---------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------

def build_datasets(cfg: TrainConfig) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset | None]:
    if cfg.data == "synthetic":
        train = SyntheticLesions(cfg.num_train, cfg.size, seed=cfg.seed, start=0, channels=cfg.channels)
        val = SyntheticLesions(cfg.num_val, cfg.size, seed=cfg.seed, start=cfg.num_train, channels=cfg.channels) \
            if cfg.num_val > 0 else None
        return train, val
    full = FolderSegmentation(cfg.data, cfg.size, channels=cfg.channels, layout=cfg.layout)
    train_idx, val_idx = split_indices(len(full), cfg.val_fraction, cfg.seed)
    train = torch.utils.data.Subset(full, train_idx)
    val = torch.utils.data.Subset(full, val_idx) if val_idx else None
    return train, val


class SegmentationLoss(nn.Module):
    """``bce`` or ``bce+dice`` (MONAI's soft Dice on sigmoid probabilities, per image)."""

    def __init__(self, kind: str):
        super().__init__()
        if kind not in ("bce", "bce+dice"):
            raise ValueError(f"loss must be 'bce' or 'bce+dice', got {kind!r}")
        self.bce = nn.BCEWithLogitsLoss()
        self.dice = None
        if kind == "bce+dice":
            from monai.losses import DiceLoss

            self.dice = DiceLoss(sigmoid=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.bce(logits, target)
        return loss + self.dice(logits, target) if self.dice is not None else loss


def _fused_update(params: list) -> bool:
    """Adam(W)'s fused kernel takes every parameter in one pass (on CPU about 5x faster than the
    per-tensor loop, which is a quarter of a CNM-UNet train step there); it needs floating-point
    parameters on a device it has a kernel for."""
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def build_optimizer(cfg: TrainConfig, params) -> tuple[torch.optim.Optimizer, Any]:
    params = list(params)
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=_fused_update(params))
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=_fused_update(params))
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"optimizer must be adam, adamw or sgd, got {cfg.optimizer!r}")
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.t_max, eta_min=cfg.eta_min)
    elif cfg.schedule == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    elif cfg.schedule == "none":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    else:
        raise ValueError(f"schedule must be cosine, step or none, got {cfg.schedule!r}")
    return opt, sched


def _collate(dataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [dataset[i] for i in indices]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


@torch.no_grad()
def validate(model: nn.Module, dataset, loss_fn: nn.Module, batch_size: int, ctx: ddp.DistContext
             ) -> dict[str, float]:
    """Mean loss and Dice over ``dataset``; each rank takes a disjoint shard, then sums."""
    model.eval()
    indices = list(range(ctx.rank, len(dataset), ctx.world_size))
    loss_sum = dice_sum = 0.0
    for start in range(0, len(indices), batch_size):
        images, masks = _collate(dataset, indices[start:start + batch_size])
        images, masks = images.to(ctx.device), masks.to(ctx.device)
        logits = model(images)
        loss_sum += float(loss_fn(logits, masks)) * images.shape[0]
        dice_sum += float(dice_per_image(binarize(logits), masks).sum())
    loss_sum, dice_sum, count = ddp.all_reduce_sum([loss_sum, dice_sum, float(len(indices))], ctx)
    model.train()
    return {"val_loss": loss_sum / count, "val_dice": dice_sum / count}


def model_metadata(cfg: TrainConfig) -> dict[str, Any]:
    return {"name": cfg.model, "in_channels": cfg.channels, "num_classes": 1, "options": cfg.network_options(),
            "image_size": cfg.size}


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------

def check_config(cfg: TrainConfig) -> None:
    """The numeric settings of a resolved config, each refused by name when out of range: what the
    command line checks as it reads its flags, for a config built in Python."""
    for name, minimum in (("size", 1), ("num_train", 1), ("num_val", 0), ("epochs", 1), ("batch_size", 1),
                          ("t_max", 1), ("step_size", 1), ("seed", 0), ("workers", 0)):
        check_positive_int(getattr(cfg, name), f"TrainConfig: {name}", minimum)
    for name in ("threads", "max_steps_per_epoch"):
        if getattr(cfg, name) is not None:
            check_positive_int(getattr(cfg, name), f"TrainConfig: {name}")
    for name, bounds in (("lr", {"above": 0.0}), ("weight_decay", {"minimum": 0.0}), ("eta_min", {"minimum": 0.0}),
                         ("gamma", {"above": 0.0}), ("rotation", {"minimum": 0.0}),
                         ("val_fraction", {"minimum": 0.0, "below": 1.0})):
        check_finite_number(getattr(cfg, name), f"TrainConfig: {name}", **bounds)


def _load_resume(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any]]:
    path = Path(cfg.out) / "last.pt" if cfg.resume in ("auto", "") else Path(cfg.resume)
    state = ckpt.load_checkpoint(path)
    stored = dict(state["config"])
    _refuse_changed_settings(cfg, stored, path)
    for key in RESUME_OVERRIDABLE:
        stored[key] = getattr(cfg, key)
    return TrainConfig(**stored), state


def _refuse_changed_settings(cfg: TrainConfig, stored: dict[str, Any], path: Path) -> None:
    """A setting given on the command line that the resumed run would not use (it keeps the
    checkpoint's, so the continued run is the same run) is a usage error, not silently dropped."""
    defaults = TrainConfig()
    changed = [f"{_flag(name)} {getattr(cfg, name)!r} (stored: {stored[name]!r})"
               for name in (f.name for f in dataclasses.fields(TrainConfig))
               if name not in RESUME_OVERRIDABLE and name in stored
               and getattr(cfg, name) != getattr(defaults, name) and getattr(cfg, name) != stored[name]]
    if changed:
        allowed = ", ".join(_flag(name) for name in RESUME_OVERRIDABLE if name not in ("resume", "progress"))
        raise cli.UsageError(f"--resume continues the run in {path} with its own settings, so "
                             f"{'; '.join(changed)} would not apply; only {allowed} and --no-progress "
                             "may change on resume (train a new run into another --out to change the rest)")


def _flag(name: str) -> str:
    """The command-line flag of a TrainConfig field (``model_options`` is given by --option)."""
    return "--option" if name == "model_options" else f"--{name.replace('_', '-')}"


def run(cfg: TrainConfig, step_callback: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train according to ``cfg``; returns the history (also written to ``out/history.json``).

    ``step_callback(info)`` runs after every optimiser step (used by tests and the demo).
    Raises :class:`TrainingInterrupted` (a ``KeyboardInterrupt``) after Ctrl-C, once the
    checkpoint is saved.
    """
    return train(cfg, step_callback)[0]


def train(cfg: TrainConfig, step_callback: Callable[[dict[str, Any]], None] | None = None
          ) -> tuple[dict[str, Any], nn.Module]:
    """:func:`run`, also returning this process's trained model (unwrapped from DDP)."""
    ctx = ddp.setup(cfg.device)
    try:
        result = _run(cfg, ctx, step_callback)
        # Every rank leaves together: one tearing its process group down while another is still
        # in its last collectives (or writing the checkpoint) can abort in gloo's teardown. Not
        # on the failure path, where a barrier would wait for a rank that has stopped.
        ddp.barrier(ctx)
        return result
    finally:
        ddp.cleanup(ctx)


def _run(cfg: TrainConfig, ctx: ddp.DistContext, step_callback) -> tuple[dict[str, Any], nn.Module]:
    resume_state = None
    if cfg.resume:
        cfg, resume_state = _load_resume(cfg)
    cfg = cfg.resolved()
    check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    train_set, val_set = build_datasets(cfg)
    model = ckpt.build_network(cfg.model, cfg.channels, 1, cfg.network_options(), cfg.size).to(ctx.device)
    optimizer, scheduler = build_optimizer(cfg, model.parameters())
    loss_fn = SegmentationLoss(cfg.loss)

    history: dict[str, Any] = {"config": dataclasses.asdict(cfg), "model": model_metadata(cfg), "epochs": [],
                               "step_losses": [], "status": "running", "world_size": ctx.world_size}
    start_epoch, start_step, accum, aug_state, best = 0, 0, [0.0, 0.0, 0.0], None, -math.inf
    if resume_state is not None:
        model.load_state_dict(resume_state["model_state"])
        optimizer.load_state_dict(resume_state["optimizer_state"])
        scheduler.load_state_dict(resume_state["scheduler_state"])
        history = resume_state["history"]
        history["config"]["epochs"] = cfg.epochs
        start_epoch, start_step = resume_state["epoch"], resume_state["step_in_epoch"]
        accum, best = list(resume_state["epoch_accumulators"]), resume_state["best_val_dice"]
        rng_states = resume_state["rng_states"]
        if len(rng_states) != ctx.world_size:
            raise ValueError(f"checkpoint was written by {len(rng_states)} process(es) but this run has "
                             f"{ctx.world_size}; resume with the same --nproc_per_node")
        ckpt.restore_rng_state(rng_states[ctx.rank]["global"])
        aug_state = rng_states[ctx.rank]["augment"]
    else:
        torch.manual_seed(cfg.seed + 7919 * ctx.rank)  # per-rank dropout streams

    net = ddp.wrap(model, ctx)
    net.train()

    def save(epoch: int, step: int, accumulators: list[float], aug_gen: torch.Generator | None,
             status: str) -> Path | None:
        states = ddp.gather_objects({"global": ckpt.capture_rng_state(),
                                     "augment": None if aug_gen is None else aug_gen.get_state()}, ctx)
        if not ctx.is_main:
            return None
        history["status"] = status
        payload = {
            "format": ckpt.TRAIN_FORMAT, "config": dataclasses.asdict(cfg), "model": model_metadata(cfg),
            "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
            "scheduler_state": scheduler.state_dict(), "epoch": epoch, "step_in_epoch": step,
            "epoch_accumulators": list(accumulators), "rng_states": states, "best_val_dice": best,
            "history": history,
        }
        path = ckpt.atomic_torch_save(payload, out / "last.pt")
        ckpt.atomic_write_json(out / "history.json", history)
        return path

    from tqdm.auto import tqdm

    # Weight updates the weights have had, a resumed run's earlier ones included (one loss is
    # recorded per update): a NaN met after any of them is reported as divergence.
    updates = len(history["step_losses"])
    with StopOnInterrupt() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            order = epoch_order(len(train_set), epoch, cfg.seed, ctx.rank, ctx.world_size)
            batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
            if cfg.max_steps_per_epoch:
                batches = batches[:cfg.max_steps_per_epoch]
            aug_gen = augment_generator(cfg.seed, epoch, ctx.rank)
            if aug_state is not None:
                aug_gen.set_state(aug_state)
                aug_state = None
            if start_step == 0:
                accum = [0.0, 0.0, 0.0]
            started = time.perf_counter()
            bar = tqdm(total=len(batches), initial=start_step, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not (ctx.is_main and cfg.progress), leave=False, dynamic_ncols=True)
            # Its own generator: creating a loader iterator draws a seed, which must not
            # consume the global RNG (dropout's) or a resumed run would drift.
            loader = torch.utils.data.DataLoader(train_set, batch_sampler=batches[start_step:],
                                                 num_workers=cfg.workers, generator=torch.Generator())
            step = start_step
            in_update = False
            try:
                for images, masks in loader:
                    images, masks = images.to(ctx.device), masks.to(ctx.device)
                    if cfg.augment:
                        images, masks = augment_batch(images, masks, aug_gen, cfg.hflip, cfg.vflip, cfg.rotation)
                    where = f"epoch {epoch + 1} step {step + 1}"
                    with _diverged_if_updated(where, updates, optimizer):
                        logits = net(images)
                        loss = loss_fn(logits, masks)
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                    _check_gradients(model, loss, where, updates, optimizer, out)
                    in_update = True
                    optimizer.step()
                    in_update = False
                    step += 1
                    updates += 1
                    loss_value = float(loss.detach())
                    with _diverged_if_updated(where, updates, optimizer):
                        dice = float(dice_per_image(binarize(logits), masks).mean())
                    n = images.shape[0]
                    accum = [accum[0] + loss_value * n, accum[1] + dice * n, accum[2] + n]
                    history["step_losses"].append(loss_value)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4f}", dice=f"{dice:.3f}")
                    if step_callback is not None:
                        step_callback({"epoch": epoch, "step": step, "loss": loss_value, "dice": dice})
                    if ddp.any_rank(stop.requested, ctx):
                        raise KeyboardInterrupt
            except KeyboardInterrupt:
                bar.close()
                if in_update:  # weights half-updated: keep the last epoch's checkpoint instead
                    raise
                path = save(epoch, step, accum, aug_gen, "interrupted")
                if ctx.is_main:
                    print(f"[odekern-train] saved {path} at epoch {epoch + 1} step {step}; "
                          f"continue with --resume {path}", file=sys.stderr, flush=True)
                raise TrainingInterrupted(path) from None
            bar.close()
            start_step = 0
            scheduler.step()

            loss_sum, dice_sum, count = ddp.all_reduce_sum(accum, ctx)
            record = {"epoch": epoch + 1, "train_loss": loss_sum / count, "train_dice": dice_sum / count,
                      "lr": optimizer.param_groups[0]["lr"]}
            if val_set is not None and len(val_set) > 0:
                with _diverged_if_updated(f"validation after epoch {epoch + 1}", updates, optimizer):
                    record.update(validate(model, val_set, loss_fn, cfg.batch_size, ctx))
            record["seconds"] = time.perf_counter() - started
            history["epochs"].append(record)
            improved = record.get("val_dice", record["train_dice"]) > best
            if improved:
                best = record.get("val_dice", record["train_dice"])
            status = "complete" if epoch + 1 == cfg.epochs else "running"
            path = save(epoch + 1, 0, [0.0, 0.0, 0.0], None, status)
            if ctx.is_main:
                if improved:
                    atomic_files.atomic_write_bytes(out / "best.pt", Path(path).read_bytes())
                msg = (f"epoch {epoch + 1}/{cfg.epochs}  loss {record['train_loss']:.4f}  "
                       f"dice {record['train_dice']:.4f}")
                if "val_dice" in record:
                    msg += f"  val_loss {record['val_loss']:.4f}  val_dice {record['val_dice']:.4f}"
                msg += f"  ({record['seconds']:.1f} s)"
                print(msg, flush=True)
    if cfg.epochs <= start_epoch and ctx.is_main:
        print(f"nothing to do: checkpoint already at epoch {start_epoch} >= --epochs {cfg.epochs}", flush=True)
    return history, model


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------

def _parse_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--option expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value  # a bare word is a string
    return key.strip(), parsed


EPILOG = """\
model size: the default CNM-UNet is the paper's full width (encoder 64-128-256-512-512,
about 9.5M parameters), so last.pt and best.pt are about 114 MB each (weights and Adam's
state). For a quick try use a quarter of the width: --option "encoder_widths=(16,32,64,128,128)"
(about 8 MB per checkpoint), as python -m networks.demo does.

examples:
  odekern-train --option "encoder_widths=(16,32,64,128,128)" --epochs 2 --out runs/try
  odekern-train --data datasets/kvasir-seg --size 256 --epochs 50 --out runs/kvasir
  odekern-train --resume --epochs 80 --out runs/kvasir        continue runs/kvasir/last.pt
  torchrun --nproc_per_node=2 -m networks.train --out runs/ddp  data-parallel
"""


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="odekern-train", description=__doc__.split("\n\n")[0], epilog=EPILOG)
    d = TrainConfig()
    g = p.add_argument_group("model")
    g.add_argument("--preset", default=None, choices=PRESET_NAMES, metavar="NAME",
                   help="a paper's experiment (docs/reproducing.md): sets model, options, size, epochs and "
                        "optimisation; flags given explicitly win. One of: " + ", ".join(PRESET_NAMES))
    g.add_argument("--model", default=d.model, help="cnm-unet, continuous-unet, unet, vanilla-unet")
    g.add_argument("--block", default=None, help="block type for --model unet: pln, rse, dse, inc, psp, fo")
    g.add_argument("--solver", default=None, help="ODE solver of the model (e.g. rk4, dopri5, euler)")
    g.add_argument("--gradient", default=None, help="gradient mode of the ODE blocks (e.g. adjoint, backprop)")
    g.add_argument("--option", action="append", default=[], type=_parse_option, metavar="KEY=VALUE",
                   help="any other build_model option (repeatable); VALUE is a Python literal or a word")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=d.data,
                   help="'synthetic' or a dataset folder as its public release lays it out (ISIC 2018/2016, "
                        "Kvasir-SEG, CVC-ClinicDB, BKAI-IGH, GlaS, STARE, DSB2018, BUSI, OD/OC) or images/ + "
                        "masks/; see docs/datasets.md")
    g.add_argument("--layout", default=d.layout, choices=("auto", *LAYOUT_NAMES),
                   help="folder layout of --data (auto: detected; OD/OC needs odoc-disc or odoc-cup)")
    g.add_argument("--size", type=cli.integer(1), default=d.size, help="input size (images are resized to size x size)")
    g.add_argument("--channels", type=int, choices=(1, 3), default=d.channels)
    g.add_argument("--num-train", type=cli.integer(1), default=d.num_train, help="synthetic training images")
    g.add_argument("--num-val", type=cli.integer(0), default=d.num_val, help="synthetic validation images")
    g.add_argument("--val-fraction", type=cli.real(0.0, below=1.0), default=d.val_fraction, help="folder data: validation share")
    g.add_argument("--no-augment", dest="augment", action="store_false", help="disable flips and rotation")
    g.add_argument("--no-hflip", dest="hflip", action="store_false")
    g.add_argument("--no-vflip", dest="vflip", action="store_false")
    g.add_argument("--rotation", type=cli.real(0.0), default=d.rotation, help="max random rotation in degrees (0: off)")
    g.add_argument("--workers", type=cli.integer(0), default=d.workers, help="DataLoader worker processes")
    g = p.add_argument_group("optimisation (unset = the paper's default for --model)")
    g.add_argument("--epochs", type=cli.integer(1), default=d.epochs, help="epochs to train (with --resume: the new total)")
    g.add_argument("--batch-size", type=cli.integer(1), default=None)
    g.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default=None)
    g.add_argument("--lr", type=cli.real(0.0, above=True), default=None)
    g.add_argument("--weight-decay", type=cli.real(0.0), default=None)
    g.add_argument("--schedule", choices=("cosine", "step", "none"), default=None)
    g.add_argument("--t-max", type=cli.integer(1), default=None, help="cosine schedule period (epochs)")
    g.add_argument("--eta-min", type=cli.real(0.0), default=None, help="cosine schedule floor")
    g.add_argument("--step-size", type=cli.integer(1), default=None, help="step schedule period (epochs)")
    g.add_argument("--gamma", type=cli.real(0.0, above=True), default=None, help="step schedule factor")
    g.add_argument("--loss", choices=("bce", "bce+dice"), default=None)
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=cli.integer(0), default=d.seed, help="seed of data, initialisation and augmentation")
    g.add_argument("--out", default=d.out, help="output folder (checkpoints, history.json)")
    g.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue from CHECKPOINT (default: OUT/last.pt)")
    g.add_argument("--device", type=cli.device, default=d.device, help="auto, cpu or cuda")
    g.add_argument("--threads", type=cli.integer(1), default=None, help="torch CPU threads")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g.add_argument("--max-steps-per-epoch", type=cli.integer(1), default=None, help="cap steps per epoch (smoke tests)")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = vars(args).copy()
    values["model_options"] = dict(values.pop("option"))
    values.pop("debug", None)
    return TrainConfig(**values)


def _validate(cfg: TrainConfig) -> None:
    """Mistakes found before any data is read or any model built, each as a UsageError (the
    numeric flags' ranges are checked as argparse reads them)."""
    if cfg.data != "synthetic" and not Path(cfg.data).is_dir():
        raise cli.UsageError(f"--data must be 'synthetic' or an existing folder, got {cfg.data!r}")
    if cfg.resume:
        return  # the model comes from the checkpoint
    if cfg.model not in MODEL_NAMES:
        raise cli.UsageError(f"--model {cfg.model!r} is not a model{cli.did_you_mean(cfg.model, MODEL_NAMES)}; "
                             f"choose from {', '.join(MODEL_NAMES)}")
    try:  # the model's own checks (e.g. CNM-UNet's size divisible by 16) before any data is read
        with torch.random.fork_rng(devices=[]):  # leaves the seeded run's random streams untouched
            ckpt.build_network(cfg.model, cfg.channels, 1, cfg.network_options(), cfg.size)
    except (ValueError, TypeError) as exc:
        raise cli.UsageError(f"--model {cfg.model} with --size {cfg.size}"
                             f"{' and the given --option values' if cfg.network_options() else ''}: {exc}") from exc


@cli.tool("odekern-train")
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.preset:  # the preset's values become the defaults: explicit flags still win
        parser.set_defaults(**get_preset(args.preset).train_arguments())
        args = parser.parse_args(argv)
    cfg = config_from_args(args)
    _validate(cfg)
    try:
        history = run(cfg)
    except TrainingInterrupted:
        return 130
    if history["epochs"]:
        last = history["epochs"][-1]
        print(ckpt.strict_json({k: round(v, 6) if isinstance(v, float) else v for k, v in last.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
