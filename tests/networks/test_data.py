"""networks.data: synthetic data (deterministic, exact masks that match the image), folder
datasets (pairing, resizing, bad files, mismatches), splits, sharding, augmentation."""


import numpy as np
import pytest
import torch
from PIL import Image

from networks.data import (
    FolderSegmentation,
    SyntheticLesions,
    augment_batch,
    epoch_order,
    read_image_folder,
    split_indices,
)
from networks.layouts import LayoutError, find_samples

# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_index_addressed():
    a = SyntheticLesions(6, 32, seed=4)
    b = SyntheticLesions(6, 32, seed=4)
    tail = SyntheticLesions(3, 32, seed=4, start=3)  # the same samples 3..5, generated alone
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert torch.equal(a.images[3:], tail.images) and torch.equal(a.masks[3:], tail.masks)
    other = SyntheticLesions(6, 32, seed=5)
    assert not torch.equal(a.images, other.images)


def test_synthetic_shapes_ranges_and_binary_nonempty_masks():
    ds = SyntheticLesions(12, (40, 48), seed=0)
    image, mask = ds[0]
    assert image.shape == (3, 40, 48) and mask.shape == (1, 40, 48)
    assert image.dtype == torch.float32 and 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    assert set(torch.unique(ds.masks).tolist()) <= {0.0, 1.0}
    fractions = ds.masks.flatten(1).mean(1)
    assert (fractions > 0.005).all() and (fractions < 0.6).all(), fractions


def test_synthetic_masks_follow_the_image_content():
    # Independent check that a mask is the lesion drawn in the image: the lesion colour
    # differs from the surrounding tissue far more than tissue differs from itself.
    ds = SyntheticLesions(24, 64, seed=1)
    separations = []
    for image, mask in ds:
        inside = image[:, mask[0] > 0].mean(1)
        outside = image[:, mask[0] == 0]
        spread = outside.std(1).norm()
        separations.append(float((inside - outside.mean(1)).norm() / spread))
    assert np.median(separations) > 1.5, separations


def test_synthetic_grey_and_bad_arguments():
    grey = SyntheticLesions(2, 16, channels=1)
    assert grey[0][0].shape == (1, 16, 16)
    with pytest.raises(ValueError, match="num_samples"):
        SyntheticLesions(0, 16)
    with pytest.raises(ValueError, match="channels"):
        SyntheticLesions(2, 16, channels=2)
    with pytest.raises(ValueError, match="size"):
        SyntheticLesions(2, 0)


@pytest.mark.parametrize("size", ["64", 64.5, (32.5, 32), True, (16, 16, 16), None])
def test_a_size_that_is_not_whole_numbers_is_refused_not_reinterpreted(size, tmp_path):
    # int("64") per character made a 6x4 dataset; int(32.5) dropped the fraction silently.
    with pytest.raises(ValueError, match=r"size must be a positive int or \(height, width\) of positive ints"):
        SyntheticLesions(2, size)
    _write_pair(tmp_path, "a")
    with pytest.raises(ValueError, match="size must be"):
        FolderSegmentation(tmp_path, size=size)


@pytest.mark.parametrize("argument", ["num_samples", "seed", "start"])
@pytest.mark.parametrize("value", [2.5, "3", True, -1])
def test_counts_must_be_whole_numbers(argument, value):
    kwargs = {"num_samples": 2, "size": 16, argument: value}
    with pytest.raises(ValueError, match=f"{argument} must be an integer >= "):
        SyntheticLesions(**kwargs)


def test_numpy_integers_are_whole_numbers():
    ds = SyntheticLesions(np.int64(2), (np.int32(16), np.int64(24)), seed=np.int64(3))
    assert ds.images.shape == (2, 3, 16, 24)
    assert SyntheticLesions(1, np.array([16, 24])).images.shape == (1, 3, 16, 24)
    assert torch.equal(ds.images, SyntheticLesions(2, (16, 24), seed=3).images)


# ---------------------------------------------------------------- folders


def _write_pair(root, stem, image_ext=".png", mask_name=None, value=255, size=(20, 30)):
    h, w = size
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.arange(w, dtype=np.uint8)[None] * 8
    mask = np.zeros((h, w), np.uint8)
    mask[5:15, 10:20] = value
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(root / "images" / f"{stem}{image_ext}")
    Image.fromarray(mask).save(root / "masks" / (mask_name or f"{stem}.png"))
    return mask > 0


def test_folder_pairs_by_stem_across_extensions_and_isic_suffix(tmp_path):
    _write_pair(tmp_path, "a", ".jpg", "a.png")
    _write_pair(tmp_path, "ISIC_001", ".jpg", "ISIC_001_segmentation.png")
    _write_pair(tmp_path, "c", ".png", "c.tif", value=1)  # 0/1 mask stored as TIFF
    layout, samples = find_samples(tmp_path)
    assert layout.name == "images-masks"
    assert [(s.image.name, *(m.name for m in s.masks)) for s in samples] == [
        ("ISIC_001.jpg", "ISIC_001_segmentation.png"), ("a.jpg", "a.png"), ("c.png", "c.tif")]


def test_folder_dataset_resizes_and_binarises(tmp_path):
    truth = _write_pair(tmp_path, "x", ".png", "x.jpg")  # JPEG mask: 0/255 with ringing
    _write_pair(tmp_path, "y", ".png", "y.png", value=1)
    ds = FolderSegmentation(tmp_path, size=(20, 30))  # native size: no resampling
    image, mask = ds[0]
    assert image.shape == (3, 20, 30) and mask.shape == (1, 20, 30)
    assert torch.equal(mask[0].bool(), torch.from_numpy(truth))
    assert torch.equal(ds[1][1][0].bool(), torch.from_numpy(truth))
    expected_red = torch.arange(30, dtype=torch.float32) * 8 / 255
    torch.testing.assert_close(image[0, 0], expected_red)
    small = FolderSegmentation(tmp_path, size=16)
    assert small[0][0].shape == (3, 16, 16) and set(torch.unique(small[0][1]).tolist()) <= {0.0, 1.0}


def test_folder_corrupt_file_is_reported_by_name_and_skipped(tmp_path):
    _write_pair(tmp_path, "good")
    _write_pair(tmp_path, "broken")
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.warns(UserWarning, match="broken.png"):
        ds = FolderSegmentation(tmp_path, size=16)
    assert ds.names == ["good"] and len(ds) == 1
    assert ds.skipped[0][0].endswith("broken.png")


def test_folder_mismatch_lists_every_orphan(tmp_path):
    _write_pair(tmp_path, "ok")
    _write_pair(tmp_path, "lonely_image")
    (tmp_path / "masks" / "lonely_image.png").unlink()
    _write_pair(tmp_path, "gone")
    (tmp_path / "images" / "gone.png").unlink()
    _write_pair(tmp_path, "lonely_too")
    (tmp_path / "masks" / "lonely_too.png").unlink()
    with pytest.raises(LayoutError) as err:
        find_samples(tmp_path, "images-masks")
    lines = str(err.value).splitlines()
    assert lines[0] == "images-masks layout: 3 files without their image or mask"
    assert lines[1].startswith("expected structure: images/<name>")
    assert lines[2:] == [f"image without its mask: {tmp_path / 'images' / 'lonely_image.png'}",
                         f"image without its mask: {tmp_path / 'images' / 'lonely_too.png'}",
                         f"mask without its image: {tmp_path / 'masks' / 'gone.png'}"]


def test_folder_with_two_images_of_one_stem_names_both(tmp_path):
    _write_pair(tmp_path, "a")
    _write_pair(tmp_path, "a", image_ext=".bmp")
    with pytest.raises(LayoutError, match=r"two files for 'a' \(a\.bmp and a\.png\); keep one"):
        find_samples(tmp_path, "images-masks")


def test_folder_missing_subfolder(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match="masks"):  # matches no layout: the message lists them
        FolderSegmentation(tmp_path)


def test_read_image_folder_skips_unreadable(tmp_path):
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "fine.png")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match="bad.jpg"):
        items = list(read_image_folder(tmp_path, 8))
    assert [(r.name, r.original_size) for r, _ in items] == [("fine", (10, 12))]
    assert items[0][1].shape == (3, 8, 8)


# ---------------------------------------------------------------- splits, order


def test_split_indices_partition_and_determinism():
    train, val = split_indices(50, 0.2, seed=3)
    assert sorted(train + val) == list(range(50)) and len(val) == 10
    assert (train, val) == split_indices(50, 0.2, seed=3)
    assert val != split_indices(50, 0.2, seed=4)[1]
    assert split_indices(3, 0.01, 0)[1] != []  # a requested split is never empty
    with pytest.raises(ValueError, match="val_fraction"):
        split_indices(10, 1.0, 0)


def test_a_nan_rotation_is_refused_not_skipped():
    x, m = torch.rand(2, 3, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    with pytest.raises(ValueError, match="rotation_degrees must be a finite number >= 0, got nan"):
        augment_batch(x, m, torch.Generator().manual_seed(0), rotation_degrees=float("nan"))


def test_epoch_order_shards_are_equal_disjoint_and_cover():
    n, world = 11, 2
    shards = [epoch_order(n, epoch=2, seed=0, rank=r, world_size=world) for r in range(world)]
    assert len(shards[0]) == len(shards[1]) == 6
    assert set(shards[0]) | set(shards[1]) == set(range(n))
    assert len(set(shards[0]) & set(shards[1])) <= 1  # only the wrap-around padding repeats
    assert epoch_order(n, 2, 0) == epoch_order(n, 2, 0) and epoch_order(n, 2, 0) != epoch_order(n, 3, 0)


# ---------------------------------------------------------------- augmentation


def test_augmentation_moves_image_and_mask_together():
    masks = (torch.rand(16, 1, 24, 24, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    images = torch.cat([masks, torch.rand(16, 2, 24, 24)], dim=1)  # channel 0 carries the mask
    g = torch.Generator().manual_seed(1)
    out_i, out_m = augment_batch(images, masks, g, rotation_degrees=0.0)
    assert torch.equal(out_i[:, :1], out_m)
    assert not torch.equal(out_m, masks)  # something was flipped
    # each output is one of the four flip combinations of its input
    for k in range(16):
        options = [masks[k], masks[k].flip(-1), masks[k].flip(-2), masks[k].flip(-1).flip(-2)]
        assert any(torch.equal(out_m[k], o) for o in options)


def test_rotation_keeps_masks_binary_and_aligned():
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    blob = (((yy - 15.5) ** 2 / 64 + (xx - 15.5) ** 2 / 25) < 1).float()[None, None].repeat(8, 1, 1, 1)
    images = blob.repeat(1, 3, 1, 1)
    out_i, out_m = augment_batch(images, blob, torch.Generator().manual_seed(0), False, False, 80.0)
    assert set(torch.unique(out_m).tolist()) <= {0.0, 1.0}
    agreement = ((out_i[:, 0] > 0.5).float() == out_m[:, 0]).float().mean()
    assert agreement > 0.98
    areas = out_m.flatten(1).sum(1) / blob.flatten(1).sum(1)  # a rigid rotation keeps the area
    assert ((areas - 1).abs() < 0.08).all(), areas
    assert not torch.equal(out_m, blob)


def test_augmentation_is_reproducible_from_its_generator():
    x, m = torch.rand(4, 3, 16, 16), (torch.rand(4, 1, 16, 16) > 0.5).float()
    a = augment_batch(x, m, torch.Generator().manual_seed(7), rotation_degrees=30)
    b = augment_batch(x, m, torch.Generator().manual_seed(7), rotation_degrees=30)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
