"""networks.checkpoint: atomic writes (old file intact on failure, no temp debris) and RNG
state capture/restore."""

import json
import os
import random

import numpy as np
import pytest
import torch

from networks import atomic_files
from networks import checkpoint as ckpt


def test_atomic_write_replaces_content_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    atomic_files.atomic_write_bytes(target, b"first")
    atomic_files.atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_failed_write_keeps_old_file(tmp_path):
    target = tmp_path / "state.pt"
    ckpt.atomic_torch_save({"w": torch.ones(3)}, target)

    def explode(fh):
        fh.write(b"partial garbage")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a save

    with pytest.raises(KeyboardInterrupt):
        atomic_files.atomic_write(target, explode)
    assert torch.equal(ckpt.torch_load(target)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_written_files_get_normal_permissions(tmp_path):
    target = ckpt.atomic_write_json(tmp_path / "r.json", {"a": 1.5, "nan": float("nan")})
    mask = os.umask(0)
    os.umask(mask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~mask)
    assert json.loads(target.read_text().replace("NaN", "null")) == {"a": 1.5, "nan": None}


def test_atomic_path_keeps_extension_for_format_sniffing_writers(tmp_path):
    with atomic_files.atomic_path(tmp_path / "fig.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    assert (tmp_path / "fig.png").read_bytes() == b"x"


def test_rng_state_roundtrip_reproduces_all_generators():
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    state = ckpt.capture_rng_state()
    first = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)])
    ckpt.restore_rng_state(state)
    second = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)])
    assert torch.equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2]


def test_torch_load_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        ckpt.torch_load(tmp_path / "nope.pt")


def test_load_model_rejects_foreign_checkpoint(tmp_path):
    path = ckpt.atomic_torch_save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ckpt.CheckpointError, match="not an odekern checkpoint"):
        ckpt.load_model(path)


def test_strict_json_writes_null_for_non_finite_numbers():
    text = ckpt.strict_json({"loss": float("nan"), "lr": 1e-3, "best": [float("-inf"), 0.5]})
    assert json.loads(text) == {"loss": None, "lr": 1e-3, "best": [None, 0.5]}
    assert "NaN" not in text and "Infinity" not in text
