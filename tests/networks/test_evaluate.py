"""networks.evaluate: metrics recomputed independently, sweeps, DUSE route, solver ablation,
JSON + table, CLI."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from networks import checkpoint as ckpt
from networks import evaluate as evaluation
from networks import train as training
from networks.corruptions import CORRUPTIONS
from networks.data import SyntheticLesions

TINY = dict(model="unet", block="pln", model_options={"base_filters": 4, "levels": 2}, size=32, num_train=8,
            num_val=4, batch_size=4, epochs=1, progress=False, threads=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate") / "run"
    training.run(training.TrainConfig(**TINY, out=str(out)))
    return out / "best.pt"


def _cfg(checkpoint, tmp_path, **over):
    base = dict(checkpoint=str(checkpoint), num_images=6, batch_size=4, out=str(tmp_path / "eval.json"),
                progress=False, corruptions=("contrast", "gaussian_noise"))
    return evaluation.EvalConfig(**{**base, **over})


def test_clean_metrics_match_an_independent_recomputation(trained, tmp_path):
    results = evaluation.run(_cfg(trained, tmp_path, noise=(), corruptions=()))
    model, state = ckpt.load_model(trained)
    cfg = state["config"]
    data = SyntheticLesions(6, 32, seed=cfg["seed"], start=cfg["num_train"] + cfg["num_val"])  # unseen images
    with torch.no_grad():
        pred = (torch.sigmoid(model(data.images)) > 0.5).numpy()
    truth = data.masks.numpy() > 0
    inter = (pred & truth).sum((1, 2, 3))
    sizes = pred.sum((1, 2, 3)) + truth.sum((1, 2, 3))
    dice = np.where(sizes > 0, 2 * inter / np.maximum(sizes, 1), 1.0)
    acc = (pred == truth).mean((1, 2, 3))
    clean = results["clean"]["source_only"]
    assert clean["dice"] == pytest.approx(dice.mean(), abs=1e-6)
    assert clean["accuracy"] == pytest.approx(acc.mean(), abs=1e-6)
    assert clean["num_images"] == 6


def test_sweeps_are_complete_deterministic_and_written(trained, tmp_path):
    cfg = _cfg(trained, tmp_path, noise=(0.0, 0.2, 0.4, 0.5), corruptions=tuple(CORRUPTIONS), num_images=3)
    first = evaluation.run(cfg)
    second = evaluation.run(cfg)
    on_disk = json.loads((tmp_path / "eval.json").read_text())
    assert set(on_disk["noise"]) == {"0", "0.2", "0.4", "0.5"}
    assert set(on_disk["corruptions"]["results"]) == set(CORRUPTIONS) and on_disk["corruptions"]["severity"] == 5
    strip = lambda m: {k: v for k, v in m.items() if k != "seconds"}
    for sigma in first["noise"]:
        assert strip(first["noise"][sigma]) == strip(second["noise"][sigma])
    for name in CORRUPTIONS:
        assert strip(first["corruptions"]["results"][name]["source_only"]) == \
            strip(second["corruptions"]["results"][name]["source_only"])
    # zero noise is the clean evaluation
    assert strip(first["noise"]["0"]) == strip(first["clean"]["source_only"])
    assert first["duse"] == "off"
    table = evaluation.format_table(first)
    assert "gaussian noise sigma=0.5" in table and "shot_noise s5" in table


class _AdaptingNet(nn.Module):
    """Test-only stand-in exposing the CNM-UNet ``adapt`` contract."""

    def __init__(self, in_channels=3, num_classes=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.adapted = 0
        self.resets = 0

    def forward(self, x):
        return self.conv(x)

    def adapt(self, x):
        self.adapted += x.shape[0]
        return torch.full((x.shape[0], 1, *x.shape[-2:]), 4.0)  # "everything is lesion"

    def reset_adaptation(self):
        self.resets += 1


def test_duse_route_uses_adapt_per_setting(tmp_path, monkeypatch):
    built = []

    def fake_build(name, c, k, options, size=None):
        built.append(_AdaptingNet(c, k))
        return built[-1]

    monkeypatch.setattr(ckpt, "build_network", fake_build)
    training.run(training.TrainConfig(**{**TINY, "model": "adapting-standin", "model_options": {}, "block": None},
                                      out=str(tmp_path / "run")))
    results = evaluation.run(_cfg(tmp_path / "run" / "last.pt", tmp_path, duse=True, noise=()))
    model = built[-1]
    assert results["duse"] == "on"
    assert model.adapted == 6 * 3 and model.resets == 3  # clean + 2 corruptions, fresh memory each
    for entry in [results["clean"], *results["corruptions"]["results"].values()]:
        assert entry["duse"]["accuracy"] == pytest.approx(
            float(torch.cat([m for _, m in SyntheticLesions(6, 32, seed=0, start=12)]).mean()), abs=1e-6)


def test_duse_requested_on_a_model_without_it(trained, tmp_path):
    results = evaluation.run(_cfg(trained, tmp_path, duse=True, noise=(), corruptions=()))
    assert results["duse"].startswith("unsupported") and "duse" not in results["clean"]


def test_solver_ablation(trained, tmp_path):
    skipped = evaluation.run(_cfg(trained, tmp_path, noise=(), corruptions=(), solvers=("euler",)))
    assert "skipped" in skipped["solvers"]["euler"] and "method" in skipped["solvers"]["euler"]["skipped"]
    out = tmp_path / "ode"
    training.run(training.TrainConfig(**{**TINY, "model": "continuous-unet", "block": None,
                                         "model_options": {"base_filters": 2, "levels": 2}},
                                      max_steps_per_epoch=1, out=str(out)))
    results = evaluation.run(_cfg(out / "last.pt", tmp_path, noise=(), corruptions=(), num_images=2,
                                  solvers=("rk4", "euler")))
    rk4, euler = results["solvers"]["rk4"], results["solvers"]["euler"]
    assert rk4["num_images"] == euler["num_images"] == 2
    # the checkpoint was trained with rk4 (the default), so its rk4 row is the clean row
    strip = lambda m: {k: v for k, v in m.items() if k != "seconds"}
    assert strip(rk4) == strip(results["clean"]["source_only"])


def test_cli(trained, tmp_path, capsys):
    out = tmp_path / "cli.json"
    assert evaluation.main([str(trained), "--num-images", "4", "--noise", "0.2", "--corruptions", "saturate",
                            "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "saturate s5" in printed and "gaussian noise sigma=0.2" in printed and out.is_file()
    assert evaluation.main([str(tmp_path / "none.pt")]) == 2
    assert capsys.readouterr().err == f"odekern-evaluate: checkpoint not found: {tmp_path / 'none.pt'}\n"
    with pytest.raises(SystemExit) as exc:  # refused as the command line is read
        evaluation.main([str(trained), "--corruptions", "fog", "--no-progress"])
    assert exc.value.code == 2 and "argument --corruptions: invalid choice: 'fog'" in capsys.readouterr().err


def test_cnm_unet_duse_leaves_the_checkpoint_untouched(tmp_path):
    options = {"encoder_widths": (4, 4, 8, 8, 8)}
    try:
        ckpt.build_network("cnm-unet", 3, 1, options, 32)
    except NotImplementedError as exc:
        pytest.skip(f"cnm-unet cannot be built yet: {exc}")
    out = tmp_path / "cnm"
    training.run(training.TrainConfig(**{**TINY, "model": "cnm-unet", "block": None, "model_options": options},
                                      max_steps_per_epoch=1, out=str(out)))
    before = (out / "last.pt").read_bytes()
    results = evaluation.run(_cfg(out / "last.pt", tmp_path, duse=True, noise=(), corruptions=("contrast",),
                                  num_images=2, solvers=("rk4",)))
    assert results["duse"] == "on"
    for entry in (results["clean"], results["corruptions"]["results"]["contrast"]):
        assert entry["duse"]["num_images"] == 2 and 0.0 <= entry["duse"]["dice"] <= 1.0
    assert results["solvers"]["rk4"]["num_images"] == 2
    assert (out / "last.pt").read_bytes() == before
    # adaptation must not leak: "contrast, source only" ran after DUSE on the clean images in
    # the same process, and must equal the same setting scored by a run without DUSE
    plain = evaluation.run(_cfg(out / "last.pt", tmp_path, noise=(), corruptions=("contrast",), num_images=2))
    strip = lambda m: {k: v for k, v in m.items() if k != "seconds"}
    assert strip(plain["corruptions"]["results"]["contrast"]["source_only"]) == \
        strip(results["corruptions"]["results"]["contrast"]["source_only"])


@pytest.mark.parametrize("setting, value, says", [
    ("batch_size", 0, "EvalConfig: batch_size must be an integer >= 1, got 0"),  # was range()'s own error
    ("num_images", 2.5, "EvalConfig: num_images must be an integer >= 1, got 2.5"),
    ("severity", 6, r"EvalConfig: severity must be one of \(1, 2, 3, 4, 5\), got 6"),
    ("noise", (0.2, float("nan")), "EvalConfig: noise sigma must be a finite number >= 0, got nan"),
    ("max_images", 0, "EvalConfig: max_images must be an integer >= 1, got 0"),  # evaluated nothing, then failed
])
def test_a_config_built_in_python_is_refused_by_name(tmp_path, setting, value, says):
    with pytest.raises(ValueError, match=f"^{says}"):
        evaluation.run(_cfg(tmp_path / "never-read.pt", tmp_path, **{setting: value}))
    assert not (tmp_path / "eval.json").exists()


def test_a_model_answering_nan_is_not_scored():
    class Diverged(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(float("nan")))

        def forward(self, x):
            return x[:, :1] * self.w

    with pytest.raises(ValueError, match=r"the model's output \(logits\) contains NaN or inf"):
        evaluation.score(Diverged(), SyntheticLesions(2, 16), batch_size=2)
