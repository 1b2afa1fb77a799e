"""networks.demo end to end at toy settings: trains, evaluates, writes every promised file."""

import json

from PIL import Image

from networks import demo


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--size", "32", "--width", "4", "--epochs", "1", "--num-train", "8",
                      "--num-val", "4", "--num-test", "3", "--num-overlays", "2", "--batch-size", "4",
                      "--corruptions", "contrast", "--no-progress", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "cnm-unet"
    assert summary["backend"]["nmode_solve_cpu"] == "cpu"  # the fused kernel, not the reference
    assert f"test Dice {summary['test_dice']:.4f}" in printed
    for name in ("train/last.pt", "train/best.pt", "train/history.json", "evaluation.json"):
        assert (out / name).is_file(), name
    for name in ("curves.png", "overlays.png", "robustness.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG"
    results = json.loads((out / "evaluation.json").read_text())
    assert results["clean"]["source_only"]["dice"] == summary["test_dice"]
    assert set(results["corruptions"]["results"]) == {"contrast"}
    assert set(results["noise"]) == {"0.2", "0.4", "0.5"}
    assert "duse" in results["clean"] and "duse" in results["corruptions"]["results"]["contrast"]
