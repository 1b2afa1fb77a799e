"""networks.predict: one PNG mask per readable image, at the original size, equal to the
thresholded (resized) model output; bad files reported and skipped."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from networks import checkpoint as ckpt
from networks import predict as prediction
from networks import train as training


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "run"
    training.run(training.TrainConfig(model="unet", block="pln", model_options={"base_filters": 4, "levels": 2},
                                      size=32, num_train=8, num_val=0, batch_size=4, epochs=1, progress=False,
                                      threads=1, out=str(out)))
    return out / "last.pt"


def _images(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"wide": (40, 56), "small": (32, 32), "tall": (50, 20)}
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return sizes


def test_masks_match_the_model_at_original_size(trained, tmp_path):
    sizes = _images(tmp_path / "in")
    with pytest.warns(UserWarning, match="corrupt.jpg"):
        written = prediction.predict_folder(str(trained), str(tmp_path / "in"), str(tmp_path / "out"), batch_size=2)
    assert sorted(p.name for p in written) == ["small.png", "tall.png", "wide.png"]
    model, _ = ckpt.load_model(trained)
    for name, (h, w) in sizes.items():
        mask = np.asarray(Image.open(tmp_path / "out" / f"{name}.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        with Image.open(tmp_path / "in" / f"{name}.png") as im:
            x = torch.from_numpy(np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR)).copy())
        x = x.permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            prob = torch.sigmoid(model(x))
        expected = F.interpolate(prob, size=(h, w), mode="bilinear", align_corners=False)[0, 0] > 0.5
        assert np.array_equal(mask > 0, expected.numpy())


def test_model_size_option_and_cli(trained, tmp_path, capsys):
    _images(tmp_path / "in")
    with pytest.warns(UserWarning):
        assert prediction.main([str(trained), str(tmp_path / "in"), str(tmp_path / "out"), "--model-size"]) == 0
    assert "wrote 3 mask(s)" in capsys.readouterr().out
    assert np.asarray(Image.open(tmp_path / "out" / "wide.png")).shape == (32, 32)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left


def test_bad_arguments(trained, tmp_path, capsys):
    def error(argv):
        try:
            code = prediction.main([str(trained), *argv])
        except SystemExit as exc:  # a flag refused as the command line is read
            code = exc.code
        assert code == 2
        err = capsys.readouterr().err
        assert err.startswith("odekern-predict: ") and err.count("\n") == 1, err
        return err

    assert "input not found" in error([str(tmp_path / "nowhere"), str(tmp_path / "out")])
    assert "no file matches" in error([str(tmp_path / "nowhere" / "*.png"), str(tmp_path / "out")])
    assert "threshold" in error([str(tmp_path), str(tmp_path / "out"), "--threshold", "1.5"])
    assert "no test-time adaptation" in error([str(tmp_path), str(tmp_path / "out"), "--duse"])


def test_single_image_and_glob_inputs(trained, tmp_path, capsys):
    sizes = _images(tmp_path / "in")
    one = sorted(sizes)[0]
    assert prediction.main([str(trained), str(tmp_path / "in" / f"{one}.png"), str(tmp_path / "one")]) == 0
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [f"{one}.png"]
    assert prediction.main([str(trained), str(tmp_path / "in" / "*.png"), str(tmp_path / "glob")]) == 0
    assert sorted(p.name for p in (tmp_path / "glob").iterdir()) == sorted(f"{n}.png" for n in sizes)
    assert "wrote 1 mask(s)" in capsys.readouterr().out
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / f"{one}.png").write_bytes((tmp_path / "in" / f"{one}.png").read_bytes())
    assert prediction.main([str(trained), str(tmp_path / "*" / f"{one}.png"), str(tmp_path / "dup")]) == 2
    assert "same name" in capsys.readouterr().err
    # The same in one folder: a.png beside a.bmp wrote one mask over the other without a word.
    Image.open(tmp_path / "in" / f"{one}.png").save(tmp_path / "in" / f"{one}.bmp")
    assert prediction.main([str(trained), str(tmp_path / "in"), str(tmp_path / "twins")]) == 2
    assert "same name" in capsys.readouterr().err and not (tmp_path / "twins" / f"{one}.png").exists()


def test_a_model_answering_nan_writes_no_mask(trained, tmp_path):
    # NaN logits thresholded read as background: an all-empty mask was written as the answer.
    state = ckpt.torch_load(trained)
    state["model_state"] = {k: v * float("nan") if v.is_floating_point() else v
                            for k, v in state["model_state"].items()}
    poisoned = ckpt.atomic_torch_save(state, tmp_path / "diverged.pt")
    _images(tmp_path / "in")
    with pytest.raises(ValueError, match=r"the model's output \(logits\) contains NaN or inf"):
        with pytest.warns(UserWarning, match="corrupt.jpg"):
            prediction.predict_folder(str(poisoned), str(tmp_path / "in"), str(tmp_path / "out"))
    assert not any((tmp_path / "out").glob("*.png"))


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_batch_size_is_a_positive_integer(trained, tmp_path, batch_size):
    # 0 or 2.5 never equalled the number pending, so every image went into one batch.
    with pytest.raises(ValueError, match=f"batch_size must be an integer >= 1, got {batch_size}"):
        prediction.predict_folder(str(trained), str(tmp_path / "in"), str(tmp_path / "out"), batch_size=batch_size)
