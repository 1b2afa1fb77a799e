"""Data-parallel training under torchrun: 2 CPU processes (gloo) stay identical replicas
while seeing different data."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from networks import checkpoint as ckpt

WORKER = textwrap.dedent("""
    import os, sys, torch
    from networks import train as T
    cfg = T.config_from_args(T.build_parser().parse_args(sys.argv[1:]))
    history, model = T.train(cfg)
    torch.save({"state": model.state_dict(), "losses": history["step_losses"]},
               os.path.join(cfg.out, "rank%s.pt" % os.environ["RANK"]))
""")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
def test_two_cpu_replicas_stay_identical(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           "--model", "unet", "--block", "pln", "--option", "base_filters=4", "--option", "levels=2",
           "--size", "32", "--num-train", "8", "--num-val", "4", "--batch-size", "2", "--epochs", "1",
           "--max-steps-per-epoch", "2", "--no-progress", "--threads", "1", "--device", "cpu", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert len(rank0["losses"]) == len(rank1["losses"]) == 2
    assert rank0["losses"] != rank1["losses"]  # different shards of the data...
    for key, value in rank0["state"].items():  # ...yet the same weights and BN buffers
        assert torch.equal(value, rank1["state"][key]), key

    saved = ckpt.torch_load(out / "last.pt")
    assert len(saved["rng_states"]) == 2 and saved["history"]["world_size"] == 2
    initial = ckpt.build_network("unet", 3, 1, {"block": "pln", "base_filters": 4, "levels": 2})
    assert any(not torch.equal(v, initial.state_dict()[k]) for k, v in rank0["state"].items()
               if v.is_floating_point())
    for key, value in saved["model_state"].items():
        assert torch.equal(value, rank0["state"][key]), key
