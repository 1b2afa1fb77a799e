"""scripts/gpu-check.sh --dry-run: the one-shot GPU check runs end to end on CPU (tiny sizes,
no build, the GPU tests only collected) and writes its JSON and markdown results, so the
script is known to work before it meets a GPU machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_dry_run_writes_results(tmp_path):
    out = tmp_path / "results"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    env.pop("TRITON_INTERPRET", None)  # as on a fresh shell: the dry run stays on cpu/reference
    res = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu-check.sh"), "--dry-run"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"stdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-3000:]}"
    for name in ("env.json", "gpu-tests.log", "benchmarks.json", "benchmarks.md", "summary.md"):
        assert (out / name).exists(), name
    env_json = json.loads((out / "env.json").read_text())
    assert {"torch", "gpu", "nvcc", "torchdiffeq", "torchode"} <= set(env_json)
    results = json.loads((out / "benchmarks.json").read_text())
    assert results["mode"] == "dry"
    groups = {r["group"] for r in results["benchmarks"]}
    assert groups == {"nmODE solve", "RK stages, conv RHS (dopri5)", "CNM-UNet training step"}
    assert not [r for r in results["benchmarks"] if "error" in r or "skipped" in r]
    assert all(r["ms"] > 0 for r in results["benchmarks"])
    # Every kernel result is compared with the reference, within float32 rounding of a solve.
    assert all(r["max_abs_diff_vs_reference"] < 1e-4 for r in results["benchmarks"]
               if "max_abs_diff_vs_reference" in r)
    assert {(r["gradient"], r["steps"]) for r in results["memory"]} == {
        (g, s) for g in ("adjoint", "checkpoint", "backprop") for s in (2, 4)}
    log = (out / "gpu-tests.log").read_text()
    assert "skipped" in log and "no CUDA device" in log and "error" not in log.lower()  # collected
    assert "status: OK" in (out / "summary.md").read_text()


def test_gpu_check_rejects_unknown_arguments():
    res = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu-check.sh"), "--bogus"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "unknown argument --bogus" in res.stderr
