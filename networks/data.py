"""Datasets for binary segmentation: a built-in synthetic one and image/mask folders.

Every dataset yields ``(image, mask)`` with ``image`` float32 ``[C, H, W]`` in ``[0, 1]`` and
``mask`` float32 ``[1, H, W]`` in ``{0, 1}``. Randomness never lives inside a dataset: the
samples are a pure function of (seed, index) / the files, and augmentation is applied to a
batch with an explicit ``torch.Generator`` (:func:`augment_batch`), so a run is reproducible
and resumable bit-exactly whatever the number of loader workers.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from scipy import ndimage
from torch.utils.data import Dataset

from networks.arguments import check_finite_number, check_positive_int, image_size_pair
from networks.layouts import IMAGE_EXTENSIONS, Sample, find_samples, image_files


# ---------------------------------------------------------------------------------------
# Synthetic lesions / polyps
# ---------------------------------------------------------------------------------------

class SyntheticLesions(Dataset):
    """Procedural polyp/lesion-like blobs on textured tissue, with exact masks.

    Sample ``i`` is generated from ``numpy.random.default_rng([seed, i])`` only, so any subset,
    order or worker split gives the same pixels. Each image has one or two irregular, smooth
    blobs (a radius function of the angle with a few random Fourier harmonics, stretched and
    rotated); the mask is exactly the set of pixel centres inside that curve. Appearance
    varies per image: tissue colour and texture, lesion contrast (sometimes faint), dome
    shading, specular highlights, uneven illumination, soft rendered edges and sensor noise,
    so the task is learnable but not trivial. ``start`` offsets the indices, which is how
    train / validation / test sets of one seed stay disjoint.
    """

    def __init__(self, num_samples: int, size: int | Sequence[int] = 64, seed: int = 0, start: int = 0,
                 channels: int = 3):
        self.num_samples = check_positive_int(num_samples, "num_samples", 1)
        if channels not in (1, 3) or isinstance(channels, bool):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        self.size = image_size_pair(size, "size")
        self.seed, self.start = check_positive_int(seed, "seed", 0), check_positive_int(start, "start", 0)
        self.channels = int(channels)
        # Generated once: cheap (~1 ms per 64x64 image) and then free for every epoch.
        pairs = [render_lesion(self.size, np.random.default_rng([self.seed, self.start + i]))
                 for i in range(self.num_samples)]
        images = torch.from_numpy(np.stack([p[0] for p in pairs]))
        if channels == 1:
            images = images.mean(dim=1, keepdim=True)
        self.images = images.contiguous()
        self.masks = torch.from_numpy(np.stack([p[1] for p in pairs]))

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.masks[index]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="wrap")
    return field / (field.std() + 1e-8)


def render_lesion(size: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image ``[3, H, W]`` float32 in [0, 1] and its exact mask ``[1, H, W]``."""
    h, w = size
    scale = min(h, w)
    yy, xx = np.meshgrid((np.arange(h) + 0.5) / scale, (np.arange(w) + 0.5) / scale, indexing="ij")

    polyp_style = rng.random() < 0.5  # pink mucosa with a dome polyp, else skin with a dark lesion
    if polyp_style:
        tissue = np.array([0.78, 0.42, 0.38]) + rng.normal(0, 0.05, 3)
        lesion_shift = np.array([0.12, -0.10, -0.08])
    else:
        tissue = np.array([0.85, 0.66, 0.55]) + rng.normal(0, 0.05, 3)
        lesion_shift = np.array([-0.35, -0.30, -0.25])
    contrast = rng.uniform(0.25, 1.0)  # faint lesions are part of the task
    lesion = tissue + contrast * (lesion_shift + rng.normal(0, 0.05, 3))

    coarse = _smooth_noise(rng, (h, w), sigma=scale / 10)
    fine = _smooth_noise(rng, (h, w), sigma=max(scale / 40, 0.7))
    light_y, light_x = rng.uniform(0.2, 0.8, 2) * np.array([h, w]) / scale
    illumination = 1.0 - rng.uniform(0.1, 0.4) * ((yy - light_y) ** 2 + (xx - light_x) ** 2)
    image = tissue[:, None, None] * (1 + 0.08 * coarse + 0.04 * fine)[None]

    mask = np.zeros((h, w), dtype=bool)
    for blob in range(1 if rng.random() < 0.7 else 2):
        radius = rng.uniform(0.10, 0.24) / (1.0 + 0.4 * blob)
        cy, cx = rng.uniform(radius + 0.05, np.array([h, w]) / scale - radius - 0.05)
        stretch, angle = rng.uniform(0.7, 1.3), rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (np.cos(angle) * dx + np.sin(angle) * dy) * stretch
        v = (-np.sin(angle) * dx + np.cos(angle) * dy) / stretch
        dist, theta = np.hypot(u, v), np.arctan2(v, u)
        boundary = np.ones_like(theta)
        for k in range(2, 6):  # smooth irregularity: a few low harmonics of the outline
            boundary += rng.uniform(0, 0.22 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        boundary *= radius
        inside = dist < boundary
        mask |= inside
        edge = max(0.6 / scale, 0.1 * radius * rng.uniform(0.2, 1.0))
        alpha = 1.0 / (1.0 + np.exp(np.clip((dist - boundary) / edge, -50, 50)))  # soft rendered edge
        rel = np.clip(dist / boundary, 0, 1)
        shading = 1.0 + (0.15 if polyp_style else -0.1) * (1 - rel**2)  # dome vs flat-dark
        texture = 1 + 0.08 * _smooth_noise(rng, (h, w), sigma=max(scale / 25, 0.7))
        lesion_rgb = lesion[:, None, None] * (shading * texture)[None]
        image = image * (1 - alpha[None]) + lesion_rgb * alpha[None]
        if polyp_style and rng.random() < 0.7:  # specular highlight on the dome
            sy, sx = cy + rng.normal(0, 0.3) * radius, cx + rng.normal(0, 0.3) * radius
            spot = np.exp(-((yy - sy) ** 2 + (xx - sx) ** 2) / (2 * (0.02 + 0.03 * rng.random()) ** 2))
            image = image + 0.5 * spot[None] * alpha[None]

    image = image * illumination[None] + rng.normal(0, rng.uniform(0.01, 0.06), (3, h, w))
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    return image, mask[None].astype(np.float32)


# ---------------------------------------------------------------------------------------
# Folder datasets (the public releases' layouts: networks.layouts)
# ---------------------------------------------------------------------------------------

def _open(path: Path) -> Image.Image:
    """``Image.open``, also for gzip-compressed files (STARE's ``.ppm.gz``)."""
    if str(path).lower().endswith(".gz"):
        with gzip.open(path, "rb") as fh:
            data = fh.read()
        return Image.open(io.BytesIO(data))
    return Image.open(path)


def load_image(path: Path, size: tuple[int, int] | None, channels: int = 3) -> torch.Tensor:
    """Decode ``path`` fully, convert to RGB / grey, resize (bilinear) -> uint8 ``[C, H, W]``."""
    with _open(path) as im:
        im.load()  # decode now so truncated files fail here, not halfway through training
        im = im.convert("RGB" if channels == 3 else "L")
        if size is not None and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def mask_foreground(im: Image.Image, rule: str = "binary") -> np.ndarray:
    """Foreground (bool ``[H, W]``) of a decoded mask by a layout's rule (``layouts.MASK_RULES``):

    - ``binary``: 0/1 or 0/255 masks (JPEG ringing tolerated): >= 1 for 0/1, > 127 otherwise.
    - ``nonzero``: any label > 0 (GlaS instance labels).
    - ``any-colour``: any channel > 127 (BKAI-IGH: red neoplastic, green non-neoplastic).
    - ``odoc-disc`` / ``odoc-cup``: grey 0 = cup, 128 = disc rim, 255 = background; the disc
      is everything below 192 (rim and cup), the cup everything below 64.
    """
    if rule == "any-colour":
        return np.asarray(im.convert("RGB"), dtype=np.uint8).max(axis=2) >= 128
    arr = np.asarray(im if im.mode in ("I", "I;16", "F") else im.convert("L"))
    if rule == "binary":
        return arr >= (1 if arr.max() <= 1 else 128)
    if rule == "nonzero":
        return arr > 0
    if rule == "odoc-disc":
        return arr < 192
    if rule == "odoc-cup":
        return arr < 64
    raise ValueError(f"unknown mask rule {rule!r}")


def load_mask(paths, size: tuple[int, int] | None, rule: str = "binary") -> torch.Tensor:
    """Binary mask ``[1, H, W]`` uint8 {0, 1}: the union of the foregrounds of ``paths`` (one
    path or several, e.g. DSB2018's one file per nucleus) by ``rule`` (see ``mask_foreground``),
    resized nearest-neighbour so it stays binary."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    union = None
    for path in paths:
        with _open(Path(path)) as im:
            im.load()
            fg = mask_foreground(im, rule)
        if union is not None and fg.shape != union.shape:
            raise ValueError(f"mask {path} is {fg.shape[1]}x{fg.shape[0]}, the other masks of its image are "
                             f"{union.shape[1]}x{union.shape[0]}")
        union = fg if union is None else union | fg
    im = Image.fromarray(union.astype(np.uint8) * 255)
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.NEAREST)
    return torch.from_numpy((np.asarray(im) > 127).astype(np.uint8)[None])


_UNREADABLE = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


class FolderSegmentation(Dataset):
    """A dataset folder in one of the public releases' layouts (``networks.layouts``: detected,
    or named by ``layout``), resized to ``size``.

    All pairs are decoded once at construction (and, with ``cache=True``, kept as uint8):
    a corrupt or unreadable file is reported by name in a ``UserWarning`` and its pair
    skipped, so a long run never dies on file 900. ``skipped`` lists what was dropped.
    """

    def __init__(self, root: str | os.PathLike, size: int | Sequence[int] = 256, channels: int = 3,
                 cache: bool = True, layout: str = "auto"):
        self.root = Path(root)
        self.size = image_size_pair(size, "size")
        self.channels, self.cache = channels, cache
        self.layout, found = find_samples(self.root, layout)
        self.samples: list[Sample] = []
        self.skipped: list[tuple[str, str]] = []
        images, masks = [], []
        for sample in found:
            try:
                image = load_image(sample.image, self.size, channels)
                mask = load_mask(sample.masks, self.size, sample.rule)
            except _UNREADABLE as exc:
                bad = next((p for p in (sample.image, *sample.masks) if _fails(p)), sample.image)
                self.skipped.append((str(bad), f"{type(exc).__name__}: {exc}"))
                warnings.warn(f"skipping unreadable file {bad} ({type(exc).__name__}: {exc})", stacklevel=2)
                continue
            self.samples.append(sample)
            if cache:
                images.append(image)
                masks.append(mask)
        if not self.samples:
            raise ValueError(f"no readable image/mask pairs in {self.root}")
        self._images = torch.stack(images) if cache else None
        self._masks = torch.stack(masks) if cache else None

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._images is not None:
            image, mask = self._images[index], self._masks[index]
        else:
            sample = self.samples[index]
            image = load_image(sample.image, self.size, self.channels)
            mask = load_mask(sample.masks, self.size, sample.rule)
        return image.float().div_(255.0), mask.float()


def _fails(path: Path) -> bool:
    try:
        with _open(path) as im:
            im.load()
        return False
    except _UNREADABLE:
        return True


@dataclass(frozen=True)
class ImageRecord:
    name: str
    path: Path
    original_size: tuple[int, int]  # (height, width)


def read_image_folder(source: str | os.PathLike | Sequence[str | os.PathLike], size: int | Sequence[int],
                      channels: int = 3) -> Iterable[tuple[ImageRecord, torch.Tensor]]:
    """Yield ``(record, image float [C, H, W])`` for every readable image of ``source``, a
    folder or a list of image files; unreadable files are reported by name (warning) and
    skipped."""
    if isinstance(source, (list, tuple)):
        paths = [Path(p) for p in source]
    elif Path(source).is_dir():
        paths = image_files(Path(source))
    else:
        raise FileNotFoundError(f"input folder not found: {source}")
    size = image_size_pair(size, "size")
    for path in paths:
        try:
            with _open(path) as im:
                original = (im.height, im.width)
            image = load_image(path, size, channels).float().div_(255.0)
        except _UNREADABLE as exc:
            warnings.warn(f"skipping unreadable file {path} ({type(exc).__name__}: {exc})", stacklevel=2)
            continue
        yield ImageRecord(path.stem, path, original), image


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded shuffle of ``range(n)`` cut into (train, val); at least one sample in each when
    ``0 < val_fraction < 1`` and ``n >= 2``."""
    val_fraction = check_finite_number(val_fraction, "val_fraction", minimum=0.0, below=1.0)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    return sorted(perm[n_val:]), sorted(perm[:n_val])


# ---------------------------------------------------------------------------------------
# Ordering and augmentation
# ---------------------------------------------------------------------------------------

def epoch_order(n: int, epoch: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True
                ) -> list[int]:
    """The sample indices rank ``rank`` visits in ``epoch``.

    A seeded permutation per epoch (same on every rank), padded by wrapping so it divides
    evenly, then dealt round-robin: every rank runs the same number of steps (DDP needs it)
    and the shards are disjoint apart from the padding.
    """
    if n < 1:
        raise ValueError("cannot iterate over an empty dataset")
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) * 100_003 + epoch)).tolist()
    else:
        order = list(range(n))
    total = math.ceil(n / world_size) * world_size
    order = (order * math.ceil(total / n))[:total]
    return order[rank::world_size]


def augment_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + epoch) * 64 + rank)


def augment_batch(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator,
                  hflip: bool = True, vflip: bool = True, rotation_degrees: float = 0.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal/vertical flips and rotation, identical for an image and its mask.

    The same number of random draws is taken whatever is enabled, so switching one
    augmentation off does not reshuffle the others. Rotation resamples the image
    bilinearly and the mask by nearest neighbour; corners outside the image become 0
    (background).
    """
    b = images.shape[0]
    draws = torch.rand(b, 3, generator=generator)
    if hflip:
        flip = (draws[:, 0] < 0.5).view(b, 1, 1, 1)
        images = torch.where(flip, images.flip(-1), images)
        masks = torch.where(flip, masks.flip(-1), masks)
    if vflip:
        flip = (draws[:, 1] < 0.5).view(b, 1, 1, 1)
        images = torch.where(flip, images.flip(-2), images)
        masks = torch.where(flip, masks.flip(-2), masks)
    if check_finite_number(rotation_degrees, "rotation_degrees", minimum=0.0) > 0:
        angle = (draws[:, 2] * 2 - 1) * math.radians(rotation_degrees)
        cos, sin = torch.cos(angle), torch.sin(angle)
        h, w = images.shape[-2:]
        # affine_grid works in normalised coordinates; the aspect factors keep the rotation
        # rigid in pixel space for non-square images.
        theta = torch.zeros(b, 2, 3, dtype=images.dtype)
        theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
        theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        masks = F.grid_sample(masks, grid.to(masks.dtype), mode="nearest", padding_mode="zeros",
                              align_corners=False)
    return images, masks
