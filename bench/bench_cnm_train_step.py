"""CNM-UNet train step: ours against a torchdiffeq-built model of the authors' code, and where
our step spends its time.

    python bench/bench_cnm_train_step.py [--size 64] [--batch 2] [--rounds 5]    # table + split
    pytest bench/bench_cnm_train_step.py --benchmark-only                         # ratio only

Both models have the paper's widths (64-128-256-512-512), dopri5 at rtol 1e-7 / atol 1e-9 over
[0, 0.05], GELU, BCE-with-logits on random images and masks, AdamW with the CNM-UNet preset's
settings: ours built by the training command line (``networks.train.build_optimizer``, which
takes torch's fused kernel), theirs as torch builds it by default. The authors' model is the
independent torchdiffeq equivalent the network tests check ours against
(``tests/networks/official_references.py``: ``odeint_adjoint`` with the nmODE RHS as a module).
The two steps run interleaved; each ratio is the minimum over rounds (``--rounds``).

The split times our step part by part (the step is synchronous on CPU, so host time is the
work): forward and backward of the encoder, the fusion, the CNM block (softplus, BN, the fused
nmODE solve, BN, f-statistics) and the head, each on inputs cut from the graph so autograd
cannot overlap one part's backward with another's; then the loss, the check that every gradient
is finite (the training command's guard against divergence) and the optimizer step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "networks"))

from official_references import AuthorsCNMUNet  # noqa: E402

from networks.cnm_unet import CNMUNet  # noqa: E402
from networks.train import TrainConfig, build_optimizer, gradients_are_finite  # noqa: E402

WIDTHS = (64, 128, 256, 512, 512)
PARTS = ("encoder", "fusion", "cnm_block", "head")


def build(size: int, batch: int):
    torch.manual_seed(0)
    models = {"odekern": CNMUNet(image_size=size, encoder_widths=WIDTHS),
              "torchdiffeq": AuthorsCNMUNet(image_size=size, widths=WIDTHS)}
    cfg = TrainConfig(model="cnm-unet").resolved()
    optimizers = {"odekern": build_optimizer(cfg, models["odekern"].parameters())[0],
                  "torchdiffeq": torch.optim.AdamW(models["torchdiffeq"].parameters(), lr=cfg.lr,
                                                   weight_decay=cfg.weight_decay)}
    images = torch.randn(batch, 3, size, size)
    masks = (torch.rand(batch, 1, size, size) > 0.5).float()
    return models, optimizers, images, masks


def train_step(model, optimizer, images, masks) -> None:
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images), masks)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if isinstance(model, CNMUNet) and not gradients_are_finite(model):  # as the training command does
        raise FloatingPointError("non-finite gradient")
    optimizer.step()


def interleaved_minimum(models, optimizers, images, masks, rounds: int) -> dict[str, float]:
    best = {name: float("inf") for name in models}
    for name in models:  # warm-up: first-call allocations, lazy initialisation
        train_step(models[name], optimizers[name], images, masks)
    for _ in range(rounds):
        for name in models:
            start = time.perf_counter()
            train_step(models[name], optimizers[name], images, masks)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _leaves(value):
    """Detached copies that require grad: a part's inputs, cut from the parts before it."""
    if isinstance(value, (list, tuple)):
        return [v.detach().requires_grad_() for v in value]
    return value.detach().requires_grad_()


def part_times(model: CNMUNet, optimizer, images, masks) -> dict[str, float]:
    """One step, part by part: each part runs forward on its inputs cut from the graph, then
    backward from a gradient of its output's shape, so no part's time leaks into another's."""
    split, value = {}, images
    for part in PARTS:
        module = getattr(model, part)
        inputs = value if part == "encoder" else _leaves(value)
        box = {}
        split[f"{part} forward"] = _timed(lambda: box.setdefault("out", module(inputs)))
        out = box["out"]
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        grads = [torch.randn_like(o) for o in outs]
        split[f"{part} backward"] = _timed(lambda: torch.autograd.backward(outs, grads))
        value = [o.detach() for o in outs] if isinstance(out, (list, tuple)) else out.detach()
    logits = value.requires_grad_()
    split["loss (forward + backward)"] = _timed(
        lambda: torch.nn.functional.binary_cross_entropy_with_logits(logits, masks).backward())
    split["gradient check"] = _timed(lambda: gradients_are_finite(model))
    split["optimizer step"] = _timed(optimizer.step)
    optimizer.zero_grad(set_to_none=True)
    return split


def minimum_split(model, optimizer, images, masks, rounds: int) -> dict[str, float]:
    runs = [part_times(model, optimizer, images, masks) for _ in range(rounds + 1)][1:]
    return {key: min(run[key] for run in runs) for key in runs[0]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    models, optimizers, images, masks = build(args.size, args.batch)
    best = interleaved_minimum(models, optimizers, images, masks, args.rounds)
    ours, theirs = best["odekern"], best["torchdiffeq"]
    print(f"CNM-UNet train step, B={args.batch}, {args.size}x{args.size}, {torch.get_num_threads()} threads")
    print("| model | step | speed-up |\n|---|---|---|")
    print(f"| odekern | {ours * 1e3:.1f} ms | {theirs / ours:.2f}x |")
    print(f"| torchdiffeq (authors' model) | {theirs * 1e3:.1f} ms | 1.00x |")
    split = minimum_split(models["odekern"], optimizers["odekern"], images, masks, args.rounds)
    total = sum(split.values())
    print(f"\nodekern step by part (minimum of {args.rounds} each; the parts add up to "
          f"{total * 1e3:.1f} ms)\n| part | time | share |\n|---|---|---|")
    for key, value in split.items():
        print(f"| {key} | {value * 1e3:.1f} ms | {100 * value / total:.0f}% |")


def test_cnm_train_step_vs_torchdiffeq(benchmark):
    models, optimizers, images, masks = build(64, 2)
    best = interleaved_minimum(models, optimizers, images, masks, rounds=3)
    benchmark.extra_info.update(odekern_s=best["odekern"], torchdiffeq_s=best["torchdiffeq"],
                                speedup_vs_torchdiffeq=best["torchdiffeq"] / best["odekern"])
    benchmark.pedantic(train_step, args=(models["odekern"], optimizers["odekern"], images, masks),
                       rounds=3, iterations=1)


if __name__ == "__main__":
    main()
