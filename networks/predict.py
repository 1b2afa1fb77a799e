"""Segment a folder of images: ``odekern-predict`` / ``python -m networks.predict``.

For every readable image in ``--input`` writes ``<stem>.png`` into ``--output``: a binary
mask (0 / 255), by default at the image's original size (the model's logits are resized
bilinearly, then thresholded). Unreadable images are reported by name and skipped. Each mask
is written atomically, so an interrupted run never leaves a truncated PNG.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from networks import checkpoint as ckpt
from networks.data import read_image_folder
from networks.evaluate import predict_logits, supports_duse


def save_mask(mask: torch.Tensor, path: Path) -> Path:
    """Write a ``[H, W]`` {0, 1} mask as an 8-bit PNG (0 / 255), atomically."""
    arr = (mask.to(torch.uint8) * 255).cpu().numpy().astype(np.uint8)
    with ckpt.atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return path


def predict_folder(checkpoint: str, input_dir: str, output_dir: str, threshold: float = 0.5,
                   duse: bool = False, original_size: bool = True, batch_size: int = 8) -> list[Path]:
    """Masks for every image of ``input_dir``; returns the written paths."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    model, state = ckpt.load_model(checkpoint)
    if duse and not supports_duse(model):
        raise ValueError(f"--duse: {type(model).__name__} has no test-time adaptation (DUSE belongs to CNM-UNet)")
    size, channels = state["config"]["size"], state["config"].get("channels", 3)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    pending: list[tuple] = []

    def flush() -> None:
        images = torch.stack([img for _, img in pending])
        probs = torch.sigmoid(predict_logits(model, images, duse=duse)).cpu()
        for (record, _), prob in zip(pending, probs):
            if original_size and tuple(prob.shape[-2:]) != record.original_size:
                prob = F.interpolate(prob[None], size=record.original_size, mode="bilinear", align_corners=False)[0]
            written.append(save_mask(prob[0] > threshold, out_dir / f"{record.name}.png"))
        pending.clear()

    for record, image in read_image_folder(input_dir, size, channels):
        pending.append((record, image))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    if not written:
        warnings.warn(f"no readable images in {input_dir}", stacklevel=2)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="odekern-predict", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint written by odekern-train")
    p.add_argument("input", help="folder of images")
    p.add_argument("output", help="folder for the masks (<stem>.png)")
    p.add_argument("--threshold", type=float, default=0.5, help="foreground probability threshold")
    p.add_argument("--duse", action="store_true", help="DUSE test-time adaptation per image (CNM-UNet)")
    p.add_argument("--model-size", dest="original_size", action="store_false",
                   help="write masks at the model's input size instead of each image's own size")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1:
        raise SystemExit("odekern-predict: --batch-size must be >= 1")
    try:
        written = predict_folder(args.checkpoint, args.input, args.output, args.threshold, args.duse,
                                 args.original_size, args.batch_size)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"odekern-predict: {exc}") from None
    print(f"wrote {len(written)} mask(s) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
