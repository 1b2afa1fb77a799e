"""Dataset folders in the public releases' layouts: detection, pairing, mask rules, and the
message a broken folder gets (expected structure + first offending file)."""

import gzip
import io

import numpy as np
import pytest
from PIL import Image

from networks.data import FolderSegmentation
from networks.layouts import LayoutError, detect_layout, find_samples

SIZE = 16


def _image(path, seed=0, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)


def _mask(path, values, mode="L", fmt=None):
    """``values``: [SIZE, SIZE] array (grey) or [SIZE, SIZE, 3] (colour)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values, dtype=np.uint8), mode=None if mode == "L" else mode).save(path, format=fmt)


def _square(value=255, background=0):
    m = np.full((SIZE, SIZE), background, np.uint8)
    m[4:12, 4:12] = value
    return m


def _gz(path, save):
    buffer = io.BytesIO()
    save(buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(buffer.getvalue()))


def _isic2018(root):
    for i in (1, 2):
        _image(root / "ISIC2018_Task1-2_Training_Input" / f"ISIC_000000{i}.jpg", i)
        _mask(root / "ISIC2018_Task1_Training_GroundTruth" / f"ISIC_000000{i}_segmentation.png", _square())
    (root / "ISIC2018_Task1-2_Training_Input" / "LICENSE.txt").write_text("release files are ignored")
    return root / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000002_segmentation.png"


def _isic2016(root):
    for i in (1, 2):
        _image(root / "ISBI2016_ISIC_Part1_Training_Data" / f"ISIC_000000{i}.jpg", i)
        _mask(root / "ISBI2016_ISIC_Part1_Training_GroundTruth" / f"ISIC_000000{i}_Segmentation.png", _square())
    return root / "ISBI2016_ISIC_Part1_Training_GroundTruth" / "ISIC_0000002_Segmentation.png"


def _kvasir(root):
    for name in ("cju0qkwl35piu0993l0dewei2", "cju0s690hkp960855tjuaqvv0"):
        _image(root / "Kvasir-SEG" / "images" / f"{name}.jpg")
        _mask(root / "Kvasir-SEG" / "masks" / f"{name}.jpg", _square())
    return root / "Kvasir-SEG" / "masks" / "cju0s690hkp960855tjuaqvv0.jpg"


def _cvc(root):
    for i in (1, 2):
        _image(root / "PNG" / "Original" / f"{i}.png", i)
        _mask(root / "PNG" / "Ground Truth" / f"{i}.png", _square())
    return root / "PNG" / "Ground Truth" / "2.png"


def _bkai(root):
    colour = np.zeros((SIZE, SIZE, 3), np.uint8)
    colour[4:8, 4:12, 0] = 255   # neoplastic: red
    colour[8:12, 4:12, 1] = 255  # non-neoplastic: green
    for name in ("0081835cf877e004e8bfb905b78a9139", "00c2d6e2e1d2e7a9e4ab8c5c2f4e1a3b"):
        _image(root / "train" / "train" / f"{name}.jpeg", fmt="PNG")  # lossless: exact check
        _mask(root / "train_gt" / "train_gt" / f"{name}.jpeg", colour, mode="RGB", fmt="PNG")
    return root / "train_gt" / "train_gt" / "00c2d6e2e1d2e7a9e4ab8c5c2f4e1a3b.jpeg"


def _glas(root):
    folder = root / "Warwick QU Dataset (Released 2016_07_08)"
    labels = _square(value=3)
    labels[12:14, 12:14] = 7  # a second gland instance
    for name in ("train_1", "testA_1"):
        _image(folder / f"{name}.bmp")
        _mask(folder / f"{name}_anno.bmp", labels)
    (folder / "Grade.csv").write_text("name,grade\n")
    return folder / "testA_1_anno.bmp"


def _stare(root):
    for i in (1, 2):
        _gz(root / "stare-images" / f"im000{i}.ppm.gz",
            lambda fh, i=i: Image.fromarray(np.full((SIZE, SIZE, 3), 40 * i, np.uint8)).save(fh, format="PPM"))
        _gz(root / "labels-ah" / f"im000{i}.ah.ppm.gz",
            lambda fh: Image.fromarray(np.stack([_square()] * 3, axis=2)).save(fh, format="PPM"))
    return root / "labels-ah" / "im0002.ah.ppm.gz"


def _dsb(root):
    for case in ("00ae65c1c6631ae6f2be1a449902976e", "0a7d30b252359a10fd298b638b90cb9a"):
        _image(root / "stage1_train" / case / "images" / f"{case}.png")
        left, right = np.zeros((SIZE, SIZE), np.uint8), np.zeros((SIZE, SIZE), np.uint8)
        left[4:12, 2:6], right[4:12, 10:14] = 255, 255
        _mask(root / "stage1_train" / case / "masks" / "a1.png", left)
        _mask(root / "stage1_train" / case / "masks" / "b2.png", right)
    return root / "stage1_train" / "0a7d30b252359a10fd298b638b90cb9a" / "masks" / "a1.png"


def _busi(root):
    folder = root / "Dataset_BUSI_with_GT"
    top, bottom = np.zeros((SIZE, SIZE), np.uint8), np.zeros((SIZE, SIZE), np.uint8)
    top[4:8, 4:12], bottom[8:12, 4:12] = 255, 255
    _image(folder / "benign" / "benign (1).png")
    _mask(folder / "benign" / "benign (1)_mask.png", top)
    _mask(folder / "benign" / "benign (1)_mask_1.png", bottom)  # a second lesion
    _image(folder / "malignant" / "malignant (1).png")
    _mask(folder / "malignant" / "malignant (1)_mask.png", _square())
    return folder / "malignant" / "malignant (1)_mask.png"


def _odoc(root):
    grey = np.full((SIZE, SIZE), 255, np.uint8)
    grey[2:14, 2:14] = 128  # disc rim
    grey[6:10, 6:10] = 0    # cup
    for name in ("V0001", "V0002"):
        _image(root / "Domain1" / "train" / "ROIs" / "image" / f"{name}.png")
        _mask(root / "Domain1" / "train" / "ROIs" / "mask" / f"{name}.png", grey)
    return root / "Domain1" / "train" / "ROIs" / "mask" / "V0002.png"


SQUARE = _square() > 0
LAYOUTS = {  # name -> (builder, expected foreground of every mask)
    "isic2018": (_isic2018, SQUARE),
    "isic2016": (_isic2016, SQUARE),
    "images-masks": (_kvasir, SQUARE),
    "cvc-clinicdb": (_cvc, SQUARE),
    "bkai-igh": (_bkai, SQUARE),
    "glas": (_glas, (_square(3) > 0) | (np.pad(np.ones((2, 2)), ((12, 2), (12, 2))) > 0)),
    "stare": (_stare, SQUARE),
    "dsb2018": (_dsb, np.pad(np.ones((8, 4)), ((4, 4), (2, 10))) + np.pad(np.ones((8, 4)), ((4, 4), (10, 2))) > 0),
    "busi": (_busi, SQUARE),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_release_layout_is_recognised_and_decoded(tmp_path, name):
    build, truth = LAYOUTS[name]
    build(tmp_path)
    assert detect_layout(tmp_path).name == name
    layout, samples = find_samples(tmp_path)
    assert layout.name == name and len(samples) == 2
    dataset = FolderSegmentation(tmp_path, size=SIZE)
    for i in range(len(dataset)):
        image, mask = dataset[i]
        assert image.shape == (3, SIZE, SIZE)
        np.testing.assert_array_equal(mask[0].numpy() > 0, truth)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_release_layout_missing_mask_names_structure_and_file(tmp_path, name):
    build, _ = LAYOUTS[name]
    mask = build(tmp_path)
    for path in mask.parent.iterdir() if name == "dsb2018" else [mask]:  # DSB: all of one image's masks
        path.unlink()
    with pytest.raises(LayoutError) as err:
        find_samples(tmp_path, name)
    message = str(err.value)
    assert "expected structure:" in message and f"{name} layout" in message
    assert "without its mask" in message or "without its masks" in message


@pytest.mark.parametrize("target, truth", [("odoc-disc", np.pad(np.ones((12, 12)), 2) > 0),
                                           ("odoc-cup", np.pad(np.ones((4, 4)), 6) > 0)])
def test_odoc_layout_targets_disc_or_cup(tmp_path, target, truth):
    _odoc(tmp_path)
    dataset = FolderSegmentation(tmp_path, size=SIZE, layout=target)
    assert len(dataset) == 2
    np.testing.assert_array_equal(dataset[0][1][0].numpy() > 0, truth)


def test_unknown_folder_lists_every_layout(tmp_path):
    (tmp_path / "pictures").mkdir()
    _image(tmp_path / "pictures" / "a.png")
    with pytest.raises(LayoutError) as err:
        detect_layout(tmp_path)
    for name in ("isic2018", "cvc-clinicdb", "glas", "stare", "dsb2018", "busi", "images-masks"):
        assert f"  {name}: " in str(err.value)


def test_misnamed_mask_is_the_offending_file(tmp_path):
    _isic2018(tmp_path)
    bad = tmp_path / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000001.png"
    (tmp_path / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000001_segmentation.png").rename(bad)
    with pytest.raises(LayoutError, match=r"mask not named <image>_segmentation.png: .*ISIC_0000001.png"):
        find_samples(tmp_path)


@pytest.mark.parametrize("name", sorted(set(LAYOUTS) - {"dsb2018"}) + ["odoc-disc"])
def test_two_images_of_one_name_are_refused_naming_both(tmp_path, name):
    # a.png beside a.jpg made one sample and dropped the other without a word. (DSB2018 keeps one
    # image per folder and already says so.)
    build = _odoc if name == "odoc-disc" else LAYOUTS[name][0]
    build(tmp_path)
    image = find_samples(tmp_path, name)[1][0].image
    twin = image.parent / (image.name.split(".")[0] + (".bmp" if image.suffix != ".bmp" else ".png"))
    _image(twin, seed=5)
    with pytest.raises(LayoutError) as err:
        find_samples(tmp_path, name)
    message = str(err.value)
    assert message.startswith(f"{name} layout: two files for ")
    assert f"({image.name} and {twin.name})" in message or f"({twin.name} and {image.name})" in message
