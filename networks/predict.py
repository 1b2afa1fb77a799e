"""Segment images: ``odekern-predict`` / ``python -m networks.predict``.

``INPUT`` is a folder of images, one image file, or a glob pattern (quoted, ``"scans/*.png"``).
For every readable image of it writes ``<stem>.png`` into ``--output``: a binary
mask (0 / 255), by default at the image's original size (the model's logits are resized
bilinearly, then thresholded). Unreadable images are reported by name and skipped. Each mask
is written atomically, so an interrupted run never leaves a truncated PNG.
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from networks import atomic_files
from networks import checkpoint as ckpt
from networks import cli
from networks.arguments import check_finite_number, check_positive_int
from networks.data import IMAGE_EXTENSIONS, read_image_folder
from networks.evaluate import predict_logits, supports_duse
from networks.layouts import image_files
from networks.metrics import check_finite_logits


def save_mask(mask: torch.Tensor, path: Path) -> Path:
    """Write a ``[H, W]`` {0, 1} mask as an 8-bit PNG (0 / 255), atomically."""
    arr = (mask.to(torch.uint8) * 255).cpu().numpy().astype(np.uint8)
    with atomic_files.atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return path


def resolve_input(source: str | Path) -> list[Path]:
    """The files ``source`` names: a folder's images, one image file or a glob pattern's files.
    Two files with one stem (``a.png`` beside ``a.jpg``) would write one mask: that raises."""
    text = str(source)
    path = Path(text)
    if path.is_dir():
        paths = image_files(path)
    elif path.is_file():
        return [path]
    elif not any(c in text for c in "*?["):
        raise FileNotFoundError(f"input not found: {text} (give a folder of images, one image file or a "
                                "quoted glob pattern such as 'scans/*.png')")
    else:
        paths = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not paths:
            raise FileNotFoundError(f"no file matches {text!r}")
    stems: dict[str, Path] = {}
    for p in paths:
        if p.stem in stems:
            raise ValueError(f"{stems[p.stem]} and {p} have the same name {p.stem!r}, so their masks would "
                             "overwrite each other; segment them in separate runs")
        stems[p.stem] = p
    return paths


def predict_folder(checkpoint: str, input_dir: str, output_dir: str, threshold: float = 0.5,
                   duse: bool = False, original_size: bool = True, batch_size: int = 8) -> list[Path]:
    """Masks for every image of ``input_dir`` (a folder, one image file or a glob pattern:
    :func:`resolve_input`); returns the written paths."""
    threshold = check_finite_number(threshold, "threshold", above=0.0, below=1.0)
    batch_size = check_positive_int(batch_size, "batch_size")
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
        logits = predict_logits(model, images, duse=duse)
        check_finite_logits(logits)  # thresholded below; NaN would read as background
        probs = torch.sigmoid(logits).cpu()
        for (record, _), prob in zip(pending, probs):
            if original_size and tuple(prob.shape[-2:]) != record.original_size:
                prob = F.interpolate(prob[None], size=record.original_size, mode="bilinear", align_corners=False)[0]
            written.append(save_mask(prob[0] > threshold, out_dir / f"{record.name}.png"))
        pending.clear()

    for record, image in read_image_folder(resolve_input(input_dir), size, channels):
        pending.append((record, image))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    if not written:
        raise ValueError(f"no readable image in {input_dir} (give a folder of images, one image file or a "
                         "quoted glob pattern; extensions: " + ", ".join(IMAGE_EXTENSIONS) + ")")
    return written


EPILOG = """\
examples:
  odekern-predict runs/try/best.pt photos/ masks/            every image of a folder
  odekern-predict runs/try/best.pt photos/case7.png masks/   one image
  odekern-predict runs/try/best.pt "photos/*.jpg" masks/ --duse
"""


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="odekern-predict", description=__doc__.split("\n\n")[0], epilog=EPILOG)
    p.add_argument("checkpoint", help="a checkpoint written by odekern-train")
    p.add_argument("input", help="a folder of images, one image file, or a quoted glob pattern")
    p.add_argument("output", help="folder for the masks (<stem>.png)")
    p.add_argument("--threshold", type=cli.real(0.0, above=True, below=1.0), default=0.5, help="foreground probability threshold")
    p.add_argument("--duse", action="store_true", help="DUSE test-time adaptation per image (CNM-UNet)")
    p.add_argument("--model-size", dest="original_size", action="store_false",
                   help="write masks at the model's input size (without it: at each image's own size)")
    p.add_argument("--batch-size", type=cli.integer(1), default=8)
    p.add_argument("--threads", type=cli.integer(1), default=None)
    return p


@cli.tool("odekern-predict")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    written = predict_folder(args.checkpoint, args.input, args.output, args.threshold, args.duse,
                             args.original_size, args.batch_size)
    print(f"wrote {len(written)} mask(s) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
