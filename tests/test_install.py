"""Installing: scripts/install.sh's steps and choice of torch index, setup.py's incremental
release build (checked on a one-file extension built exactly as `pip install -e .` builds it),
the build-isolated install that stops with the command that works, and the message of an
odekern without its compiled extension."""

from __future__ import annotations

import http.server
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import textwrap
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_install_script():
    spec = importlib.util.spec_from_file_location("odekern_install_script", REPO / "scripts" / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


install = _load_install_script()


# ---------------------------------------------------------------------------------------
# scripts/install.py: where torch comes from, what the build shows
# ---------------------------------------------------------------------------------------

def test_torch_source_choices():
    def never(url):
        raise AssertionError("a GPU machine or a chosen index must not probe the CPU index")

    assert install.torch_source(True, never)[0] == []
    assert install.torch_source(False, never, "https://example.invalid/cu126")[0] == \
        ["--index-url", "https://example.invalid/cu126"]
    args, why = install.torch_source(False, lambda url: url == install.CPU_INDEX)
    assert args == ["--index-url", install.CPU_INDEX] and "CPU build" in why
    args, why = install.torch_source(False, lambda url: False)
    assert args == [] and "default package index" in why and "did not answer" in why


@pytest.fixture
def local_index(tmp_path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "index.html").write_text("<html></html>")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_index_probe_answers_for_a_live_index_and_not_for_a_dead_one(local_index):
    assert install.index_reachable(local_index, timeout=10)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/"
    assert not install.index_reachable(dead, timeout=10)
    assert not install.index_reachable("https://no-such-host.invalid/whl/cpu", timeout=10)


def _fake_nvidia_smi(folder: Path, body: str) -> None:
    folder.mkdir(exist_ok=True)
    tool = folder / "nvidia-smi"
    tool.write_text("#!/bin/sh\n" + body + "\n")
    tool.chmod(0o755)


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs sh for the fake nvidia-smi")
def test_gpu_detection_uses_nvidia_smi(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    assert not install.has_nvidia_gpu()
    _fake_nvidia_smi(tmp_path / "gpu", 'echo "GPU 0: NVIDIA H200 (UUID: GPU-0)"')
    monkeypatch.setenv("PATH", str(tmp_path / "gpu"))
    assert install.has_nvidia_gpu()
    _fake_nvidia_smi(tmp_path / "driverless", 'echo "NVIDIA-SMI has failed"; exit 9')
    monkeypatch.setenv("PATH", str(tmp_path / "driverless"))
    assert not install.has_nvidia_gpu()


def test_tested_triton_only_where_torch_pins_none(monkeypatch, capsys):
    monkeypatch.setattr(install, "installed_version", lambda name: None)
    monkeypatch.setattr(install, "has_nvidia_gpu", lambda: False)
    monkeypatch.setattr(install, "index_reachable", lambda url, timeout=0: False)
    monkeypatch.delenv("ODEKERN_TORCH_INDEX", raising=False)

    monkeypatch.setattr(install.importlib.metadata, "requires", lambda name: ["filelock", "sympy>=1.13.3"])
    assert install.main(["test", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"pip install torch=={install.TORCH_VERSION}" in out and "default package index" in out
    assert f"--no-build-isolation -e .[networks,test] triton=={install.TESTED_TRITON}" in out

    monkeypatch.setattr(install.importlib.metadata, "requires",
                        lambda name: ["triton==3.7.1; platform_system == \"Linux\"", "filelock"])
    assert install.main(["test", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "-e .[networks,test]\n" in out and "triton==" not in out.split("3/3")[1]


def test_install_sh_runs_the_steps_in_order():
    env = dict(os.environ, ODEKERN_PYTHON=sys.executable)
    done = subprocess.run(["bash", str(REPO / "scripts" / "install.sh"), "test", "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    steps = [line for line in done.stdout.splitlines() if line.startswith("[install] ")]
    assert [s.split()[1] for s in steps[:3]] == ["1/3", "2/3", "3/3"] and "done in" in steps[-1]
    assert "2 minutes" in steps[2] or "only the files changed" in steps[2]
    assert "-m pip install -v --no-build-isolation -e .[networks,test]" in done.stdout


def test_build_progress_shows_files_and_hides_the_noise():
    p = install.BuildProgress(root=Path("/src/odekern"))
    assert p.feed("Requirement already satisfied: numpy in ./site-packages\n") is None
    assert p.feed("Collecting monai (from odekern==0.1.0)\n") == "  collecting monai"
    assert p.feed("  c++ -MMD -MF x.o.d -O3 -c /src/odekern/csrc/a.cpp -o x.o\n") is None  # a command echo
    shown = p.feed("[3/13] c++ -MMD -MF /b/csrc/a.o.d -Wall -c /src/odekern/csrc/ops/a.cpp -o /b/csrc/a.o -O3\n")
    assert shown == "  [3/13] csrc/ops/a.cpp" and p.compiled == 1
    line = "  [odekern setup] building CPU extension only (torch was built without CUDA)\n"
    assert "building CPU extension only" in p.feed(line) and p.feed(line) is None  # said once
    assert "nothing to recompile" in p.feed("ninja: no work to do.\n") and p.up_to_date
    assert "error" in p.feed("/src/odekern/csrc/a.cpp:3:1: error: expected ';'\n")


# ---------------------------------------------------------------------------------------
# setup.py: release objects, kept between editable builds, rebuilt after a change
# ---------------------------------------------------------------------------------------

_TINY_EXTENSION = textwrap.dedent("""
    #include <Python.h>
    static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
    PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
""")


def _scratch_project(root: Path) -> Path:
    """setup.py and pyproject.toml of odekern (with the compiler flags it reads) and one tiny C++
    source instead of csrc/."""
    root.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, root / name)
    (root / "odekern").mkdir()
    (root / "odekern" / "__init__.py").write_text("")
    (root / "csrc").mkdir()
    shutil.copy(REPO / "csrc" / "build_flags.json", root / "csrc" / "build_flags.json")
    (root / "csrc" / "tiny.cpp").write_text(_TINY_EXTENSION)
    return root


def _build_editable(project: Path) -> subprocess.CompletedProcess:
    """The PEP 660 hook pip calls for `pip install --no-build-isolation -e .`."""
    env = dict(os.environ, ODEKERN_STRICT_BUILD="1", MAX_JOBS="1")
    for name in ("ODEKERN_SKIP_EXT", "ODEKERN_DEBUG_BUILD", "ODEKERN_FORCE_CUDA"):
        env.pop(name, None)
    code = "from setuptools import build_meta; build_meta.build_editable('dist')"
    done = subprocess.run([sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    return done


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++").split()[0]) is None, reason="needs a C++ compiler")
def test_editable_builds_reuse_objects_and_rebuild_changed_sources(tmp_path):
    project = _scratch_project(tmp_path / "project")
    tag = f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
    obj = project / "build" / f"temp.{tag}" / "csrc" / "tiny.o"

    _build_editable(project)
    assert obj.is_file(), "objects must stay in build/, not in a temporary folder"
    built = list((project / "odekern").glob("_C*.so"))
    assert len(built) == 1
    assert b".debug_info" not in built[0].read_bytes(), "release build: no debug information"
    first = obj.stat().st_mtime_ns

    _build_editable(project)  # nothing changed: nothing recompiled
    assert obj.stat().st_mtime_ns == first

    source = project / "csrc" / "tiny.cpp"
    source.write_text(_TINY_EXTENSION + "\n// changed\n")
    os.utime(source, ns=(first + 10**9, first + 10**9))  # newer than the object, whatever the clock
    _build_editable(project)
    assert obj.stat().st_mtime_ns != first, "a changed source must be recompiled"


_WITHOUT_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):  # what pip's isolated build environment sees
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None

    sys.meta_path.insert(0, NoTorch())
    from setuptools import build_meta
    print(build_meta.get_requires_for_build_editable())
""")


def test_isolated_build_stops_with_the_command_that_works(tmp_path):
    project = _scratch_project(tmp_path / "project")
    env = dict(os.environ)
    env.pop("ODEKERN_SKIP_EXT", None)
    done = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH], cwd=project, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0
    assert "torch is not importable" in done.stderr and "bash scripts/install.sh" in done.stderr
    assert "pip install --no-build-isolation -e ." in done.stderr and "ODEKERN_SKIP_EXT=1" in done.stderr

    env["ODEKERN_SKIP_EXT"] = "1"  # the deliberate pure-Python install still works, and says so
    done = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH], cwd=project, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WITHOUT its C++ kernels" in done.stderr and "reference backend" in done.stderr


# ---------------------------------------------------------------------------------------
# odekern without odekern/_C*.so
# ---------------------------------------------------------------------------------------

_IMPORT_WITHOUT_BUILD = textwrap.dedent("""
    import sys
    # An editable install maps odekern._C to its own tree; this copy must not see it.
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
    import odekern
    assert odekern.__file__.startswith(sys.argv[1]), odekern.__file__
    print(odekern.backends()["cpu"])
""")


def test_missing_extension_is_reported_as_not_built(tmp_path):
    shutil.copytree(REPO / "odekern", tmp_path / "odekern", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", _IMPORT_WITHOUT_BUILD, str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    message = done.stdout.strip()
    assert "circular import" not in message and "partially initialized" not in message
    assert "not built" in message and "bash scripts/install.sh" in message
