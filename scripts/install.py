"""Install odekern into the running interpreter's environment, saying what happens.

``bash scripts/install.sh [EXTRA]`` creates ./.venv and runs this file with its python; run it
directly (``python scripts/install.py [EXTRA]``) to install into another environment. Steps:

1. torch==TORCH_VERSION, unless that version is installed already. With an NVIDIA GPU
   (``nvidia-smi -L`` lists one): from the default package index (the CUDA build). Without
   one: the CPU build from PyTorch's CPU wheel index when it answers within a few seconds,
   otherwise from the default index (which may hold the CPU build, as a local mirror does,
   or the CUDA build). ``ODEKERN_TORCH_INDEX=URL`` picks the index instead.
2. The build tools (setuptools, wheel, ninja).
3. odekern itself, editable, built against that torch (``--no-build-isolation``): the C++
   build prints its progress, ``[done/total] file``; the full log is kept in
   ``build/install.log``. A second run recompiles only what changed (``setup.py`` keeps the
   objects in ``build/``).

``--dry-run`` prints the pip commands instead of running them. Standard library only: this
runs before torch exists.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH_VERSION = "2.13.0"
# The triton the test suite is verified with; used only where torch itself pins no triton
# (the CPU build), so the extras never fight the CUDA build's own pin.
TESTED_TRITON = "3.9.0"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PROBE_TIMEOUT_S = 4.0  # a CI machine without that index must not wait on it
BUILD_TOOLS = ("setuptools>=64", "wheel", "ninja")
LOG = ROOT / "build" / "install.log"


def say(message: str) -> None:
    print(f"[install] {message}", flush=True)


# ---------------------------------------------------------------------------------------
# Where torch comes from
# ---------------------------------------------------------------------------------------

def has_nvidia_gpu() -> bool:
    """``nvidia-smi -L`` lists at least one GPU (the driver is installed and sees a device)."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and "GPU" in done.stdout


def index_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """The index answers its torch page within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/torch/", timeout=timeout) as response:
            return 200 <= response.status < 400
    except (OSError, ValueError, urllib.error.URLError):
        return False


def torch_source(gpu: bool, reachable: Callable[[str], bool], chosen_index: str | None = None
                 ) -> tuple[list[str], str]:
    """(extra pip arguments, sentence for the user) for installing torch."""
    if chosen_index:
        return ["--index-url", chosen_index], f"from ODEKERN_TORCH_INDEX={chosen_index}"
    if gpu:
        return [], "NVIDIA GPU found: the CUDA build from the default package index (several GB)"
    if reachable(CPU_INDEX):
        return ["--index-url", CPU_INDEX], f"no NVIDIA GPU: the CPU build from {CPU_INDEX}"
    return [], (f"no NVIDIA GPU, and {CPU_INDEX} did not answer within {PROBE_TIMEOUT_S:g} s: "
                "from the default package index (the CPU build where that index has one, as a "
                "local mirror may; on pypi.org the CUDA build, several GB)")


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_pins_triton() -> bool:
    """The installed torch requires triton itself (CUDA builds pin one exact version)."""
    try:
        requirements = importlib.metadata.requires("torch") or []
    except importlib.metadata.PackageNotFoundError:
        return False
    return any(re.match(r"triton\b", r) and "extra ==" not in r for r in requirements)


# ---------------------------------------------------------------------------------------
# The build's output, reduced to progress
# ---------------------------------------------------------------------------------------

_NINJA_STEP = re.compile(r"^\[(\d+)/(\d+)\]\s+(.*)$")
_SOURCE = re.compile(r"\s-c\s+(\S+\.(?:cpp|cu|cc|c))\b")


class BuildProgress:
    """Turns pip's verbose output into the lines worth showing: odekern's own build messages,
    one ``[n/total] file`` per compiled file, linking, errors and the outcome."""

    def __init__(self, root: Path = ROOT):
        self.root = str(root)
        self.compiled = 0
        self.up_to_date = False
        self._seen: set[str] = set()

    def _relative(self, path: str) -> str:
        return os.path.relpath(path, self.root) if path.startswith(self.root) else path

    def feed(self, line: str) -> str | None:
        text = line.rstrip("\n")
        stripped = text.strip()
        step = _NINJA_STEP.match(stripped)
        if step:
            done, total, command = step.groups()
            source = _SOURCE.search(" " + command)
            self.compiled += 1
            what = self._relative(source.group(1)) if source else command[:100]
            return f"  [{done}/{total}] {what}"
        if "[odekern setup]" in stripped:
            message = stripped[stripped.index("[odekern setup]"):]
            if message in self._seen:  # setup.py runs once per build step; say each thing once
                return None
            self._seen.add(message)
            return "  " + message
        if stripped == "ninja: no work to do.":
            self.up_to_date = True
            return "  nothing to recompile: every object is up to date"
        if "up-to-date" in stripped and "skipping" in stripped:
            return "  " + stripped
        if re.search(r"\s-shared\s.*-o\s+\S*_C\S*\.so", stripped):
            return "  linking odekern/_C"
        if re.search(r"\berror\b|FAILED:|fatal", stripped) and not stripped.startswith("Requirement"):
            return "  " + stripped
        if stripped.startswith("Collecting "):  # a dependency being fetched: progress too
            return "  collecting " + stripped.split()[1]
        if stripped.startswith(("Installing collected packages", "Successfully installed", "ERROR:",
                                "Building editable for")):
            return "  " + stripped
        return None


# ---------------------------------------------------------------------------------------
# Running pip
# ---------------------------------------------------------------------------------------

class Installer:
    def __init__(self, python: str = sys.executable, dry_run: bool = False):
        self.python, self.dry_run = python, dry_run

    def pip(self, *args: str) -> None:
        command = [self.python, "-m", "pip", *args]
        if self.dry_run:
            print("    " + " ".join(command), flush=True)
            return
        subprocess.run(command, check=True)

    def build(self, args: Iterable[str], progress: BuildProgress) -> None:
        """pip with its verbose output to ``build/install.log`` and progress to the screen."""
        command = [self.python, "-m", "pip", *args]
        if self.dry_run:
            print("    " + " ".join(command), flush=True)
            return
        LOG.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # ninja from the ninja wheel lives next to this interpreter
        env["PATH"] = str(Path(self.python).parent) + os.pathsep + env.get("PATH", "")
        with open(LOG, "w") as log, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                     text=True, bufsize=1, env=env) as proc:
            tail: list[str] = []
            for line in proc.stdout:
                log.write(line)
                tail = (tail + [line.rstrip("\n")])[-40:]
                shown = progress.feed(line)
                if shown is not None:
                    print(shown, flush=True)
            code = proc.wait()
        if code != 0:
            print("\n".join(tail), file=sys.stderr)
            raise SystemExit(f"[install] the build failed (exit code {code}); the last lines are above, "
                             f"the full log is {LOG}")


def extras_of(extra: str | None) -> str:
    return "networks" + (f",{extra}" if extra else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/install.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("extra", nargs="?", default=None, help="extra to install too: test, triton or dev")
    parser.add_argument("--dry-run", action="store_true", help="print the pip commands, run nothing")
    args = parser.parse_args(argv)
    run = Installer(dry_run=args.dry_run)
    started = time.monotonic()

    have = installed_version("torch")
    if have is not None and have.split("+")[0] == TORCH_VERSION:
        say(f"1/3 torch {have} is installed already")
    else:
        gpu = has_nvidia_gpu()
        pip_args, why = torch_source(gpu, index_reachable, os.environ.get("ODEKERN_TORCH_INDEX"))
        say(f"1/3 torch=={TORCH_VERSION}: {why}")
        try:
            run.pip("install", *pip_args, f"torch=={TORCH_VERSION}")
        except subprocess.CalledProcessError:
            if not pip_args or os.environ.get("ODEKERN_TORCH_INDEX"):
                raise
            say(f"    {pip_args[-1]} failed; trying the default package index")
            run.pip("install", f"torch=={TORCH_VERSION}")

    say("2/3 build tools: " + ", ".join(BUILD_TOOLS))
    run.pip("install", "--quiet", *BUILD_TOOLS)

    extras = extras_of(args.extra)
    requirements = [f".[{extras}]"]
    if args.extra in ("test", "triton") and not torch_pins_triton():
        requirements.append(f"triton=={TESTED_TRITON}")  # torch pins none: take the tested one
    incremental = any((ROOT / "build").glob("temp.*/.ninja_log"))
    say(f"3/3 odekern[{extras}], editable, with its C++ kernels compiled against this torch: "
        + ("only the files changed since the last build are recompiled (objects in build/)" if incremental
           else "the first build takes about 2 minutes on 2 idle cores, longer on a busy machine")
        + f"; full log in {LOG.relative_to(ROOT)}")
    progress = BuildProgress()
    run.build(["install", "-v", "--no-build-isolation", "-e", *requirements], progress)
    say(f"done in {time.monotonic() - started:.0f} s"
        + ("" if args.dry_run else f" ({progress.compiled} file(s) compiled)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
