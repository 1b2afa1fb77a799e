"""The command lines answer ordinary mistakes as a user meets them: run as real processes, each
mistake gives exactly one line on stderr naming the problem, exit code 2, no traceback (the
traceback only with --debug). Evaluation results are strict JSON."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from networks import checkpoint as ckpt
from networks import cli
from networks import evaluate as evaluation
from networks.data import SyntheticLesions

REPO = Path(__file__).resolve().parents[2]


def _run(module: str, *args: str, cwd: Path, warnings: str = "ignore") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONWARNINGS=warnings)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _one_line_error(done: subprocess.CompletedProcess, prog: str, *fragments: str) -> str:
    lines = done.stderr.splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith(f"{prog}: ") and "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("mistakes")
    data = root / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(data / "images" / f"{name}.png")
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(data / "masks" / "a.png")
    torch.save({"format": ckpt.TRAIN_FORMAT, "payload": torch.zeros(4096)}, root / "good.pt")
    full = (root / "good.pt").read_bytes()
    (root / "truncated.pt").write_bytes(full[: len(full) // 2])
    (root / "picture.pt").write_bytes((data / "images" / "a.png").read_bytes())
    torch.save({"weight": torch.zeros(2)}, root / "state_dict.pt")
    return root


def test_train_image_without_mask(files):
    done = _run("networks.train", "--data", str(files / "data"), "--epochs", "1", "--out", str(files / "r1"),
                cwd=files)
    _one_line_error(done, "odekern-train", "without", "mask", "b.png")


def test_train_size_not_divisible(files):
    done = _run("networks.train", "--size", "50", "--out", str(files / "r2"), cwd=files)
    _one_line_error(done, "odekern-train", "--size 50", "divisible by 16")
    assert not (files / "r2").exists()  # found before anything was written


def test_train_misspelt_model(files):
    done = _run("networks.train", "--model", "cnmunet", cwd=files)
    _one_line_error(done, "odekern-train", "'cnmunet'", "did you mean 'cnm-unet'")


def test_train_bad_flag_value_is_one_line_too(files):
    _one_line_error(_run("networks.train", "--epochs", "x", cwd=files), "odekern-train", "--epochs", "--help")


def test_debug_shows_the_traceback(files):
    done = _run("networks.train", "--model", "cnmunet", "--debug", cwd=files)
    assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr
    assert "UsageError" in done.stderr


def test_resume_from_a_truncated_checkpoint(files):
    done = _run("networks.train", "--resume", str(files / "truncated.pt"), "--out", str(files / "r3"), cwd=files)
    _one_line_error(done, "odekern-train", "truncated.pt is not an odekern checkpoint or is damaged")


def test_evaluate_a_picture_named_pt(files):
    done = _run("networks.evaluate", str(files / "picture.pt"), cwd=files)
    _one_line_error(done, "odekern-evaluate", "picture.pt is not an odekern checkpoint or is damaged")


def test_predict_with_a_plain_state_dict(files):
    done = _run("networks.predict", str(files / "state_dict.pt"), str(files / "data" / "images" / "a.png"),
                str(files / "masks-out"), cwd=files)
    _one_line_error(done, "odekern-predict", "state_dict.pt is not an odekern checkpoint", "format None")


def test_figures_overlays_of_a_truncated_checkpoint(files):
    done = _run("networks.figures", "overlays", str(files / "truncated.pt"), "--out", str(files / "o.png"),
                cwd=files)
    _one_line_error(done, "python -m networks.figures", "not an odekern checkpoint or is damaged")


@pytest.fixture(scope="module")
def small_checkpoint(files):
    """A checkpoint as odekern-train writes it, of an untrained two-level U-Net."""
    from networks.models import build_model

    options = {"block": "pln", "base_filters": 2, "levels": 2}
    model = build_model("unet", in_channels=3, num_classes=1, **options)
    path = files / "small.pt"
    ckpt.atomic_torch_save({"format": ckpt.TRAIN_FORMAT, "epoch": 1, "config": {"size": 16, "channels": 3},
                            "model": {"name": "unet", "in_channels": 3, "num_classes": 1, "options": options,
                                      "image_size": 16},
                            "model_state": model.state_dict()}, path)
    return path


def test_predict_one_image_file(files, small_checkpoint):
    image = files / "data" / "images" / "a.png"
    done = _run("networks.predict", str(small_checkpoint), str(image), str(files / "one"), cwd=files)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]
    assert "wrote 1 mask(s)" in done.stdout and [p.name for p in (files / "one").iterdir()] == ["a.png"]


def test_predict_warns_in_one_line_per_skipped_file(files, small_checkpoint):
    folder = files / "mixed"
    folder.mkdir()
    (folder / "good.png").write_bytes((files / "data" / "images" / "a.png").read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    env_done = _run("networks.predict", str(small_checkpoint), str(folder), str(files / "mixed-out"), cwd=files,
                    warnings="default")
    assert env_done.returncode == 0, env_done.stderr[-2000:]
    lines = env_done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("odekern-predict: warning: skipping unreadable file"), lines
    assert "broken.jpg" in lines[0] and "wrote 1 mask(s)" in env_done.stdout


def test_predict_with_nothing_readable(files, small_checkpoint):
    folder = files / "only-broken"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    from networks import predict as prediction

    with pytest.raises(ValueError, match="no readable image"), pytest.warns(UserWarning, match="broken.jpg"):
        prediction.predict_folder(str(small_checkpoint), str(folder), str(files / "none-out"))


# ---------------------------------------------------------------------------------------
# In-process details of the same machinery
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["truncated.pt", "picture.pt"])
def test_damaged_files_raise_checkpoint_error(files, name):
    with pytest.raises(ckpt.CheckpointError, match="not an odekern checkpoint or is damaged"):
        ckpt.load_checkpoint(files / name)


def test_one_line_joins_a_listing():
    listing = ("images-masks layout: 2 files without their image or mask\nexpected structure: S\n"
               "image without its mask: b.png\nmask without its image: c.png")
    assert cli.one_line(listing) == ("images-masks layout: 2 files without their image or mask: expected structure: "
                                     "S; image without its mask: b.png; mask without its image: c.png")
    many = "head:\n" + "\n".join(f"item {i}" for i in range(10))
    assert cli.one_line(many, max_items=2) == "head: item 0; item 1; and 8 more"


def _option_help(text: str, option: str) -> str:
    """The help entry of ``option`` in ``--help`` output (its line and continuation lines)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(option))
    entry = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith("      ") or line.strip().startswith("-"):
            break
        entry.append(line)
    return " ".join(entry)


def test_help_shows_no_default_for_switches_or_none():
    import networks.predict
    import networks.train

    text = networks.train.build_parser().format_help()
    for switch in ("--no-augment", "--no-progress", "--no-hflip"):
        assert "default" not in _option_help(text, switch)
    assert _option_help(text, "--resume").count("default") == 1
    assert "(default: 10)" in _option_help(text, "--epochs")
    assert "114 MB" in text and "encoder_widths=(16,32,64,128,128)" in text  # the size warning
    assert _option_help(evaluation.build_parser().format_help(), "--data").count("default") == 1
    assert "default" not in _option_help(networks.predict.build_parser().format_help(), "--model-size")


def _strict_loads(text: str):
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=reject)


def test_written_json_is_strict(tmp_path):
    ckpt.atomic_write_json(tmp_path / "x.json", {"a": math.nan, "b": [1.0, -math.inf, np.float32("nan")],
                                                 "c": {"d": math.inf, "e": 0.5}})
    assert _strict_loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [1.0, None, None],
                                                                 "c": {"d": None, "e": 0.5}}


class _EmptyPredictor(torch.nn.Module):
    """Predicts background everywhere: AHD is undefined on every image (its mask is not empty)."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor(-10.0))

    def forward(self, x):
        return self.bias.expand(x.shape[0], 1, *x.shape[-2:])


def test_undefined_ahd_is_null_with_a_reason(tmp_path):
    data = SyntheticLesions(3, 16, seed=0)
    assert all(float(data[i][1].sum()) > 0 for i in range(len(data)))
    scored = evaluation.score(_EmptyPredictor(), data, batch_size=2)
    assert scored["ahd"] is None and "exactly one of prediction and ground truth is empty" in scored["ahd_note"]
    assert scored["dice"] == 0.0
    ckpt.atomic_write_json(tmp_path / "evaluation.json", {"clean": {"source_only": scored}})
    parsed = _strict_loads((tmp_path / "evaluation.json").read_text())
    assert parsed["clean"]["source_only"]["ahd"] is None
    row = evaluation._row("clean", scored)
    assert row.split()[-1] == "n/a"


def test_tool_exit_codes(capsys):
    @cli.tool("demo-tool")
    def main(argv=None):
        kind = argv[0]
        if kind == "usage":
            raise cli.UsageError("--x must be >= 1, got 0")
        if kind == "missing":
            raise FileNotFoundError("checkpoint not found: a.pt")
        if kind == "bug":
            raise RuntimeError("kernel exploded\nsecond line")
        if kind == "exit-text":
            raise SystemExit("demo-tool: old-style message")
        return 0

    assert main(["ok"]) == 0
    assert main(["usage"]) == 2 and capsys.readouterr().err == "demo-tool: --x must be >= 1, got 0\n"
    assert main(["missing"]) == 2 and capsys.readouterr().err == "demo-tool: checkpoint not found: a.pt\n"
    assert main(["bug"]) == 1
    assert capsys.readouterr().err == ("demo-tool: unexpected RuntimeError: kernel exploded: second line "
                                       "(run again with --debug for the traceback)\n")
    assert main(["exit-text"]) == 2 and capsys.readouterr().err == "demo-tool: old-style message\n"
    with pytest.raises(RuntimeError, match="kernel exploded"):
        main(["bug", "--debug"])


FLAG_MISTAKES = [
    ("--lr", "nan", "must be a finite number > 0, got nan"),
    ("--lr", "abc", "expected a number, got 'abc'"),
    ("--rotation", "nan", "must be a finite number >= 0, got nan"),
    ("--gamma", "0", "must be a finite number > 0, got 0.0"),
    ("--weight-decay", "-1", "must be a finite number >= 0, got -1.0"),
    ("--eta-min", "inf", "must be a finite number >= 0, got inf"),
    ("--val-fraction", "1.5", "must be a finite number >= 0 and < 1, got 1.5"),
    ("--t-max", "0", "must be an integer >= 1, got 0"),
    ("--step-size", "0", "must be an integer >= 1, got 0"),
    ("--threads", "0", "must be an integer >= 1, got 0"),
    ("--workers", "-1", "must be an integer >= 0, got -1"),
    ("--max-steps-per-epoch", "0", "must be an integer >= 1, got 0"),
    ("--num-val", "-2", "must be an integer >= 0, got -2"),
    ("--device", "tpu", "expected auto, cpu, cuda or cuda:N, got 'tpu'"),
]


@pytest.mark.parametrize("flag, value, says", FLAG_MISTAKES, ids=[f"{f}={v}" for f, v, _ in FLAG_MISTAKES])
def test_train_flag_values_are_checked_before_anything_runs(tmp_path, capsys, flag, value, says):
    """Each once trained silently on a NaN (learning rate, rotation, decay factor), failed late
    with a Python error (--t-max 0: ZeroDivisionError; --device cuda: an AssertionError about
    torch's build) or meant something unstated (0 threads or steps: no limit)."""
    from networks import train

    with pytest.raises(SystemExit) as exc:
        train.main([flag, value, "--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"odekern-train: argument {flag}: ") and says in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a CUDA device")
def test_train_on_cuda_without_a_cuda_device_is_named(tmp_path, capsys):
    from networks import train

    with pytest.raises(SystemExit):
        train.main(["--device", "cuda", "--out", str(tmp_path / "run")])
    assert "'cuda' asks for a CUDA device, but this machine has none" in capsys.readouterr().err


OTHER_TOOL_MISTAKES = [
    ("evaluate", ["x.pt", "--threads", "0"], "--threads: must be an integer >= 1, got 0"),
    ("evaluate", ["x.pt", "--noise", "0.2", "nan"], "--noise: must be a finite number >= 0, got nan"),
    ("evaluate", ["x.pt", "--max-images", "0"], "--max-images: must be an integer >= 1, got 0"),
    ("evaluate", ["x.pt", "--corruptions", "fog"], "--corruptions: invalid choice: 'fog'"),
    ("predict", ["x.pt", "in", "out", "--threshold", "1.5"], "--threshold: must be a finite number > 0 and < 1"),
    ("predict", ["x.pt", "in", "out", "--batch-size", "0"], "--batch-size: must be an integer >= 1, got 0"),
    ("figures", ["overlays", "x.pt", "--out", "o", "--num-images", "0"],
     "--num-images: must be an integer >= 1, got 0"),
    ("demo", ["--threads", "0"], "--threads: must be an integer >= 1, got 0"),
    ("demo", ["--corruptions", "fog"], "--corruptions: invalid choice: 'fog'"),
]
PROGS = {"evaluate": "odekern-evaluate", "predict": "odekern-predict", "demo": "python -m networks.demo",
         "figures": "python -m networks.figures overlays"}


@pytest.mark.parametrize("module, argv, says", OTHER_TOOL_MISTAKES,
                         ids=[f"{m}-{a[-2]}" for m, a, _ in OTHER_TOOL_MISTAKES])
def test_other_tools_check_their_flags_too(capsys, module, argv, says):
    tool = __import__(f"networks.{module}", fromlist=["main"])
    with pytest.raises(SystemExit) as exc:
        tool.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{PROGS[module]}: ") and says in err[0], err
