"""Presets: the papers' numbers, every preset builds, and a preset trains end to end on a
synthetic folder in its dataset's public layout (tiny sizes)."""

import json

import pytest
import torch
from netutil import require_nmode
from test_layouts import _glas, _isic2018

from networks import build_model
from networks import checkpoint as ckpt
from networks import train as training
from networks.layers import layer_parameter_count, parameter_count
from networks.presets import PAPER_TRAINING, PRESET_NAMES, get


def test_presets_carry_the_papers_settings():
    for name in PRESET_NAMES:
        preset = get(name)
        assert preset.training == PAPER_TRAINING[preset.model] == training.PAPER_DEFAULTS[preset.model]
    cnm, cunet = get("cnm-kvasir-seg"), get("cunet-kvasir-seg")
    # cnm-unet.txt Implementation Details; continuous-unet.txt Sec. 4.1, Tables 2 and 10.
    assert (cnm.epochs, cnm.training["batch_size"], cnm.training["optimizer"], cnm.training["t_max"],
            cnm.training["eta_min"]) == (300, 8, "adamw", 50, 1e-5)
    assert (cunet.epochs, cunet.training["batch_size"], cunet.training["optimizer"], cunet.training["gamma"]) \
        == (500, 16, "adam", 0.999)
    assert {n: get(n).size for n in PRESET_NAMES if n.startswith("cunet-")} == {
        "cunet-glas": 352, "cunet-stare": 512, "cunet-kvasir-seg": 256, "cunet-dsb2018": 256,
        "cunet-isic2016": 512, "cunet-busi": 256}
    assert (get("cnm-isic2018").size, cnm.size, get("cnm-odoc-cup").size) == (256, 352, 512)
    assert cnm.duse_config().k == 1000 and cnm.duse_config().lr == 0.01 and cnm.duse_config().momentum == 0.8
    assert get("cnm-odoc-disc").duse_config().lr == 0.005
    with pytest.raises(ValueError, match="unknown preset"):
        get("cnm-isic2017")


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_builds_the_papers_model(name):
    if name.startswith("cnm-"):
        require_nmode()
    preset = get(name)
    options = dict(preset.model_options)
    if preset.model == "cnm-unet":
        options["image_size"] = preset.size
    # CNM-UNet's 9.4M parameters on the meta device; the continuous U-Net is small.
    with torch.device("meta" if preset.model == "cnm-unet" else "cpu"):
        model = build_model(preset.model, **options)
    if preset.model == "cnm-unet":
        assert layer_parameter_count(model) == 9_450_739 and not model.train_gamma
        assert model.cnm_block.momentum == 0.8
    else:
        assert parameter_count(model) == 169_585 and model.variant == "official"


def _train(tmp_path, argv):
    out = tmp_path / "run"
    assert training.main([*argv, "--epochs", "1", "--batch-size", "2", "--val-fraction", "0.5", "--no-progress",
                          "--out", str(out), "--seed", "0"]) == 0
    history = json.loads((out / "history.json").read_text())
    model, state = ckpt.load_model(out / "last.pt")
    return history, model, state


def test_cnm_preset_trains_on_an_isic2018_folder(tmp_path):
    require_nmode()
    _isic2018(tmp_path / "isic")
    history, model, state = _train(tmp_path, ["--preset", "cnm-isic2018", "--data", str(tmp_path / "isic"),
                                              "--size", "32", "--option", "encoder_widths=(4, 8, 8, 8, 8)",
                                              "--option", "rtol=1e-5", "--option", "atol=1e-7"])
    config = history["config"]
    assert config["preset"] == "cnm-isic2018" and config["layout"] == "isic2018"
    assert (config["optimizer"], config["t_max"], config["batch_size"]) == ("adamw", 50, 2)
    assert config["model_options"]["train_gamma"] is False and len(history["epochs"]) == 1
    # The authors' behaviour came back with the checkpoint: gamma untrained, DUSE settings kept.
    assert not model.cnm_block.nmode.gamma.any() and model.duse_config.k == 400.0
    assert model.duse_config.procedure == "official" and model.cnm_block.momentum == 0.8
    assert not model.fusion.bias.any() and "fusion.bias" not in dict(model.named_parameters())


def test_continuous_unet_preset_trains_on_a_glas_folder(tmp_path):
    _glas(tmp_path / "glas")
    history, model, _ = _train(tmp_path, ["--preset", "cunet-glas", "--data", str(tmp_path / "glas"),
                                          "--size", "32", "--lr", "0.01"])
    config = history["config"]
    assert (config["model"], config["layout"], config["optimizer"], config["lr"]) == \
        ("continuous-unet", "glas", "adam", 0.01)  # an explicit flag wins over the preset
    assert model.variant == "official" and parameter_count(model) == 169_585
    assert torch.isfinite(torch.tensor(history["epochs"][0]["train_loss"]))
