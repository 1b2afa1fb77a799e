"""Dataset folders as the public releases lay them out, recognised without renaming a file.

``find_samples(root)`` picks the layout whose folder structure ``root`` has (or the one named
by ``layout=``) and returns its ``Sample`` list: an image, the mask file(s) whose union is its
target, and the rule that turns a mask file into foreground (``MASK_RULES``). Only paths are
handled here; decoding is ``networks.data``'s. A folder that matches no layout, or a layout
with an image lacking its mask (or a mask lacking its image), raises ``LayoutError`` naming the
expected structure and every image and mask without its partner.

Recognised (``root`` may be the folder shown or the folder holding it):

========================  =============================================================  ==========
layout                    structure                                                      mask rule
========================  =============================================================  ==========
isic2018                  ISIC2018_Task1-2_<Split>_Input/ISIC_0000000.jpg +              binary
                          ISIC2018_Task1_<Split>_GroundTruth/ISIC_0000000_segmentation.png
isic2016                  ISBI2016_ISIC_Part1_<Split>_Data/ISIC_0000000.jpg +            binary
                          ISBI2016_ISIC_Part1_<Split>_GroundTruth/ISIC_0000000_Segmentation.png
cvc-clinicdb              Original/1.tif + "Ground Truth"/1.tif (also under PNG/ or TIF/)  binary
bkai-igh                  train/<id>.jpeg + train_gt/<id>.jpeg (Kaggle also nests          any colour
                          train/train, train_gt/train_gt; red and green both count)
glas                      train_1.bmp + train_1_anno.bmp, testA_*, testB_* (one folder;    nonzero
                          annotations are instance labels)
stare                     stare-images/im0001.ppm[.gz] + labels-ah/im0001.ah.ppm[.gz]      binary
dsb2018                   <id>/images/<id>.png + <id>/masks/*.png (e.g. stage1_train/;     binary
                          the masks of one image are its nuclei, joined)
busi                      benign|malignant|normal/<name>.png + <name>_mask.png             binary
                          [+ <name>_mask_1.png ...] (Dataset_BUSI_with_GT/)
odoc-disc, odoc-cup       image/<name>.png + mask/<name>.png, found at any depth (e.g.     disc / cup
                          <Domain>/train/ROIs/image); masks 0 = cup, 128 = disc rim,
                          255 = background; the disc target includes the cup
images-masks (Kvasir-SEG  images/<name>.<ext> + masks/<name>[_segmentation|_mask].<ext>      binary
and any other)
========================  =============================================================  ==========
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".ppm")
COMPRESSED_SUFFIXES = (".gz",)  # STARE ships every image gzip-compressed
# Generic layout: masks named <stem>, or with an ISIC-style / other release suffix.
MASK_SUFFIXES = ("", "_segmentation", "_mask", "_Segmentation")

# How a mask file becomes foreground (implemented in networks.data.mask_foreground).
MASK_RULES = ("binary", "nonzero", "any-colour", "odoc-disc", "odoc-cup")


class LayoutError(ValueError):
    """A dataset folder that does not have the structure its layout needs."""


@dataclasses.dataclass(frozen=True)
class Sample:
    image: Path
    masks: tuple[Path, ...]
    rule: str = "binary"

    @property
    def name(self) -> str:
        return file_stem(self.image)


def file_stem(path: Path) -> str:
    """``im0001.ppm.gz`` -> ``im0001``; ``a.png`` -> ``a``."""
    name = path.name
    for suffix in COMPRESSED_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return Path(name).stem


def is_image_file(path: Path) -> bool:
    name = path.name.lower()
    for suffix in COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return path.is_file() and not path.name.startswith(".") and Path(name).suffix in IMAGE_EXTENSIONS


def image_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if is_image_file(p))


@dataclasses.dataclass(frozen=True)
class Layout:
    name: str
    structure: str  # what the folder must look like, for error messages
    matches: Callable[[Path], bool]
    collect: Callable[[Path], list[Sample]]


def _fail(layout: str, structure: str, problem: str, path: Path) -> LayoutError:
    return LayoutError(f"{layout} layout: {problem}: {path}\n  expected structure: {structure}")


def _pair_by_key(layout: str, structure: str, images: dict[str, Path], masks: dict[str, list[Path]],
                 rule: str) -> list[Sample]:
    """Samples for matching keys. Images without a mask and masks without an image raise, every
    one of them named, so a dataset is mended in one pass."""
    orphans = ([("image without its mask", images[k]) for k in sorted(images) if k not in masks]
               + [("mask without its image", masks[k][0]) for k in sorted(masks) if k not in images])
    if len(orphans) == 1:
        raise _fail(layout, structure, *orphans[0])
    if orphans:
        raise LayoutError("\n".join([f"{layout} layout: {len(orphans)} files without their image or mask",
                                     f"expected structure: {structure}",
                                     *(f"{problem}: {path}" for problem, path in orphans)]))
    if not images:
        raise LayoutError(f"{layout} layout: no images found\n  expected structure: {structure}")
    return [Sample(images[k], tuple(sorted(masks[k])), rule) for k in sorted(images)]


def _by_stem(layout: str, structure: str, paths: Iterable[Path]) -> dict[str, Path]:
    """``paths`` by file stem. Two files of one stem (``a.png`` beside ``a.jpg``) would make one
    sample and drop the other without a word: that raises, naming both."""
    found: dict[str, Path] = {}
    for p in paths:
        _claim(layout, structure, found, file_stem(p), p)
    return found


def _claim(layout: str, structure: str, taken: dict[str, Path], key: str, path: Path) -> None:
    if key in taken:
        raise _fail(layout, structure, f"two files for {key!r} ({taken[key].name} and {path.name}); keep one",
                    path)
    taken[key] = path


def _candidates(root: Path) -> list[Path]:
    """``root`` and its direct sub-folders: a release unpacks into one folder of its own."""
    if not root.is_dir():
        return []
    return [root, *sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))]


def _first(root: Path, test: Callable[[Path], bool]) -> Path | None:
    return next((p for p in _candidates(root) if test(p)), None)


# --------------------------------------------------------------------------- ISIC


def _isic(name: str, image_dir: str, mask_dir: str, mask_suffix: str, structure: str) -> Layout:
    image_re = re.compile(image_dir.replace("<Split>", r"(?P<split>\w+?)") + "$")

    def pairs(root: Path) -> list[tuple[Path, Path]]:
        found = []
        for d in _candidates(root):
            m = image_re.match(d.name) if d.is_dir() else None
            if m:
                found.append((d, d.parent / mask_dir.replace("<Split>", m["split"])))
        return found

    def matches(root: Path) -> bool:
        return any(True for _ in pairs(root)) or any(pairs(p) for p in _candidates(root)[1:])

    def collect(root: Path) -> list[Sample]:
        found = pairs(root) or [pair for p in _candidates(root)[1:] for pair in pairs(p)]
        samples = []
        for images_dir, masks_dir in found:
            if not masks_dir.is_dir():
                raise _fail(name, structure, "missing the ground-truth folder for", images_dir)
            images = _by_stem(name, structure, image_files(images_dir))
            masks: dict[str, list[Path]] = {}
            for p in image_files(masks_dir):
                stem = file_stem(p)
                if not stem.endswith(mask_suffix):
                    raise _fail(name, structure, f"mask not named <image>{mask_suffix}.png", p)
                masks.setdefault(stem[: -len(mask_suffix)], []).append(p)
            samples += _pair_by_key(name, structure, images, masks, "binary")
        return samples

    return Layout(name, structure, matches, collect)


# --------------------------------------------------------------------------- two folders, same names


def _sibling_folders(name: str, image_names: tuple[str, ...], mask_names: tuple[str, ...], rule: str,
                     structure: str, depth: int = 2) -> Layout:
    """Images in one folder, masks of the same file stem in a sibling folder, possibly nested
    (``train/train``) or under an extra level (``PNG/``)."""

    def find(root: Path, names: tuple[str, ...]) -> Path | None:
        for d in _candidates(root):
            if d.name in names and d.is_dir():
                inner = next((d / n for n in names if (d / n).is_dir()), None)
                return inner or d
        return None

    def locate(root: Path) -> tuple[Path, Path] | None:
        level = [root]
        for _ in range(depth):
            for d in level:
                images, masks = find(d, image_names), find(d, mask_names)
                if images is not None and masks is not None and images.parent != masks:
                    return images, masks
            level = [c for d in level for c in _candidates(d)[1:]]
        return None

    def collect(root: Path) -> list[Sample]:
        found = locate(root)
        if found is None:
            raise LayoutError(f"{name} layout: folders not found in {root}\n  expected structure: {structure}")
        images = _by_stem(name, structure, image_files(found[0]))
        masks = {k: [p] for k, p in _by_stem(name, structure, image_files(found[1])).items()}
        return _pair_by_key(name, structure, images, masks, rule)

    return Layout(name, structure, lambda root: locate(root) is not None, collect)


# --------------------------------------------------------------------------- GlaS


_GLAS_IMAGE = re.compile(r"(train|testA|testB)_\d+$")
_GLAS_STRUCTURE = "<folder>/train_1.bmp + train_1_anno.bmp (also testA_<n>, testB_<n>)"


def _glas_folder(root: Path) -> Path | None:
    return _first(root, lambda d: any(_GLAS_IMAGE.match(file_stem(p)) for p in image_files(d)))


def _glas_collect(root: Path) -> list[Sample]:
    folder = _glas_folder(root)
    if folder is None:
        raise LayoutError(f"glas layout: no train_<n> / testA_<n> / testB_<n> images in {root}\n"
                          f"  expected structure: {_GLAS_STRUCTURE}")
    images: dict[str, Path] = {}
    annotations: dict[str, Path] = {}
    for p in image_files(folder):
        stem = file_stem(p)
        if stem.endswith("_anno"):
            _claim("glas", _GLAS_STRUCTURE, annotations, stem[: -len("_anno")], p)
        elif _GLAS_IMAGE.match(stem):
            _claim("glas", _GLAS_STRUCTURE, images, stem, p)
    masks = {k: [p] for k, p in annotations.items()}
    return _pair_by_key("glas", _GLAS_STRUCTURE, images, masks, "nonzero")


GLAS = Layout("glas", _GLAS_STRUCTURE, lambda root: _glas_folder(root) is not None, _glas_collect)


# --------------------------------------------------------------------------- STARE


_STARE_STRUCTURE = "stare-images/im0001.ppm[.gz] + labels-ah/im0001.ah.ppm[.gz]"


def _stare_folder(root: Path) -> Path | None:
    return _first(root, lambda d: (d / "stare-images").is_dir() and (d / "labels-ah").is_dir())


def _stare_collect(root: Path) -> list[Sample]:
    folder = _stare_folder(root)
    if folder is None:
        raise LayoutError(f"stare layout: folders not found in {root}\n  expected structure: {_STARE_STRUCTURE}")
    images = _by_stem("stare", _STARE_STRUCTURE, image_files(folder / "stare-images"))
    labels: dict[str, Path] = {}
    for p in image_files(folder / "labels-ah"):
        stem = file_stem(p)
        if not stem.endswith(".ah"):
            raise _fail("stare", _STARE_STRUCTURE, "label not named <image>.ah.ppm", p)
        _claim("stare", _STARE_STRUCTURE, labels, stem[: -len(".ah")], p)
    masks = {k: [p] for k, p in labels.items()}
    return _pair_by_key("stare", _STARE_STRUCTURE, images, masks, "binary")


# --------------------------------------------------------------------------- DSB2018


_DSB_STRUCTURE = "<id>/images/<id>.png + <id>/masks/<nucleus>.png (one folder per image, e.g. stage1_train/)"


def _is_dsb_case(d: Path) -> bool:
    return d.is_dir() and (d / "images").is_dir() and (d / "masks").is_dir()


def _is_named_dsb_case(d: Path) -> bool:
    """A case folder whose image carries the folder's name (what tells DSB2018 from a generic
    images/ + masks/ folder)."""
    return _is_dsb_case(d) and any(file_stem(p) == d.name for p in image_files(d / "images"))


def _dsb_folder(root: Path) -> Path | None:
    def holds_cases(d: Path) -> bool:
        subs = _candidates(d)[1:]
        return bool(subs) and not _is_dsb_case(d) and all(_is_named_dsb_case(s) for s in subs[:3])

    return _first(root, holds_cases)


def _dsb_collect(root: Path) -> list[Sample]:
    folder = _dsb_folder(root)
    if folder is None:
        raise LayoutError(f"dsb2018 layout: no image folders in {root}\n  expected structure: {_DSB_STRUCTURE}")
    samples = []
    for case in _candidates(folder)[1:]:
        if not _is_dsb_case(case):
            raise _fail("dsb2018", _DSB_STRUCTURE, "folder without images/ and masks/", case)
        images = image_files(case / "images")
        if len(images) != 1:
            raise _fail("dsb2018", _DSB_STRUCTURE, f"expected one image, found {len(images)}", case / "images")
        masks = image_files(case / "masks")
        if not masks:
            raise _fail("dsb2018", _DSB_STRUCTURE, "image without its masks", images[0])
        samples.append(Sample(images[0], tuple(masks), "binary"))
    return samples


# --------------------------------------------------------------------------- BUSI


_BUSI_CLASSES = ("benign", "malignant", "normal")
_BUSI_STRUCTURE = "benign|malignant|normal/<name>.png + <name>_mask.png [+ <name>_mask_1.png]"
_BUSI_MASK = re.compile(r"(.+)_mask(_\d+)?$")


def _busi_folder(root: Path) -> Path | None:
    return _first(root, lambda d: sum((d / c).is_dir() for c in _BUSI_CLASSES) >= 2)


def _busi_collect(root: Path) -> list[Sample]:
    folder = _busi_folder(root)
    if folder is None:
        raise LayoutError(f"busi layout: class folders not found in {root}\n  expected structure: {_BUSI_STRUCTURE}")
    samples = []
    for cls in _BUSI_CLASSES:
        if not (folder / cls).is_dir():
            continue
        images, masks = {}, {}
        for p in image_files(folder / cls):
            m = _BUSI_MASK.match(file_stem(p))
            if m:
                masks.setdefault(m[1], []).append(p)
            else:
                _claim("busi", _BUSI_STRUCTURE, images, file_stem(p), p)
        samples += _pair_by_key("busi", _BUSI_STRUCTURE, images, masks, "binary")
    return samples


# --------------------------------------------------------------------------- OD/OC


_ODOC_STRUCTURE = ("image/<name>.png + mask/<name>.png side by side, at any depth (e.g. "
                   "<Domain>/train/ROIs/image); masks 0 = cup, 128 = disc rim, 255 = background")


def _odoc_pairs(root: Path) -> list[tuple[Path, Path]]:
    if not root.is_dir():
        return []
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if "image" in dirnames and "mask" in dirnames:
            found.append((Path(dirpath) / "image", Path(dirpath) / "mask"))
    return found


def _odoc(structure_name: str, rule: str) -> Layout:
    def collect(root: Path) -> list[Sample]:
        samples = []
        for images_dir, masks_dir in _odoc_pairs(root):
            images = _by_stem(structure_name, _ODOC_STRUCTURE, image_files(images_dir))
            masks = {k: [p] for k, p in _by_stem(structure_name, _ODOC_STRUCTURE, image_files(masks_dir)).items()}
            samples += _pair_by_key(structure_name, _ODOC_STRUCTURE, images, masks, rule)
        if not samples:
            raise LayoutError(f"{structure_name} layout: no image/ + mask/ folders in {root}\n"
                              f"  expected structure: {_ODOC_STRUCTURE}")
        return samples

    return Layout(structure_name, _ODOC_STRUCTURE, lambda root: bool(_odoc_pairs(root)), collect)


# --------------------------------------------------------------------------- generic images/ + masks/


_GENERIC_STRUCTURE = "images/<name>.<ext> + masks/<name>[_segmentation|_mask|_Segmentation].<ext>"


def _generic_folder(root: Path) -> Path | None:
    return _first(root, lambda d: (d / "images").is_dir() and (d / "masks").is_dir())


def mask_key(stem: str, images: Iterable[str]) -> str:
    """The image stem a generic-layout mask belongs to (exact stem first, then a known suffix)."""
    if stem in images:
        return stem
    for suffix in MASK_SUFFIXES[1:]:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _generic_collect(root: Path) -> list[Sample]:
    folder = _generic_folder(root)
    if folder is None:
        raise LayoutError(f"images-masks layout: {root} has no images/ and masks/ sub-folders\n"
                          f"  expected structure: {_GENERIC_STRUCTURE}")
    images = _by_stem("images-masks", _GENERIC_STRUCTURE, image_files(folder / "images"))
    masks: dict[str, list[Path]] = {}
    for p in image_files(folder / "masks"):
        key = mask_key(file_stem(p), images)
        if key in masks:
            raise _fail("images-masks", _GENERIC_STRUCTURE, f"second mask for {key!r} (first: {masks[key][0].name})", p)
        masks[key] = [p]
    return _pair_by_key("images-masks", _GENERIC_STRUCTURE, images, masks, "binary")


# --------------------------------------------------------------------------- registry


LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    _isic("isic2018", "ISIC2018_Task1-2_<Split>_Input", "ISIC2018_Task1_<Split>_GroundTruth", "_segmentation",
          "ISIC2018_Task1-2_<Split>_Input/ISIC_0000000.jpg + "
          "ISIC2018_Task1_<Split>_GroundTruth/ISIC_0000000_segmentation.png"),
    _isic("isic2016", "ISBI2016_ISIC_Part1_<Split>_Data", "ISBI2016_ISIC_Part1_<Split>_GroundTruth", "_Segmentation",
          "ISBI2016_ISIC_Part1_<Split>_Data/ISIC_0000000.jpg + "
          "ISBI2016_ISIC_Part1_<Split>_GroundTruth/ISIC_0000000_Segmentation.png"),
    _sibling_folders("cvc-clinicdb", ("Original",), ("Ground Truth", "GroundTruth"), "binary",
                     'Original/<n>.tif + "Ground Truth"/<n>.tif (optionally under PNG/ or TIF/)'),
    _sibling_folders("bkai-igh", ("train",), ("train_gt",), "any-colour",
                     "train/<id>.jpeg + train_gt/<id>.jpeg (or train/train + train_gt/train_gt)"),
    GLAS,
    Layout("stare", _STARE_STRUCTURE, lambda root: _stare_folder(root) is not None, _stare_collect),
    Layout("dsb2018", _DSB_STRUCTURE, lambda root: _dsb_folder(root) is not None, _dsb_collect),
    Layout("busi", _BUSI_STRUCTURE, lambda root: _busi_folder(root) is not None, _busi_collect),
    _odoc("odoc-disc", "odoc-disc"),
    _odoc("odoc-cup", "odoc-cup"),
    Layout("images-masks", _GENERIC_STRUCTURE, lambda root: _generic_folder(root) is not None, _generic_collect),
)}
LAYOUT_NAMES = tuple(LAYOUTS)
# Auto-detection skips the OD/OC layouts: disc or cup is a choice detection cannot make.
_AUTO = tuple(n for n in LAYOUT_NAMES if not n.startswith("odoc-"))


def detect_layout(root: str | os.PathLike) -> Layout:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    for name in _AUTO:
        if LAYOUTS[name].matches(root):
            return LAYOUTS[name]
    lines = [f"{root} is not a dataset folder of any known layout; expected one of:"]
    lines += [f"  {layout.name}: {layout.structure}" for layout in LAYOUTS.values()]
    lines.append("(OD/OC folders need layout='odoc-disc' or 'odoc-cup'; see docs/reproducing.md)")
    raise LayoutError("\n".join(lines))


def find_samples(root: str | os.PathLike, layout: str = "auto") -> tuple[Layout, list[Sample]]:
    """The layout of ``root`` (detected, or by name) and its samples, sorted by image name."""
    if layout == "auto":
        chosen = detect_layout(root)
    elif layout in LAYOUTS:
        chosen = LAYOUTS[layout]
        if not Path(root).is_dir():
            raise FileNotFoundError(f"dataset folder not found: {root}")
    else:
        raise ValueError(f"layout must be 'auto' or one of {LAYOUT_NAMES}, got {layout!r}")
    return chosen, chosen.collect(Path(root))
