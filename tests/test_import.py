"""What ``import odekern`` loads: only what a solve needs. Each check runs in a fresh interpreter,
where nothing else has imported the modules in question."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_import_leaves_the_compiler_scipy_and_triton_unloaded():
    # torch._dynamo alone takes about a second to import, scipy.integrate a third of one: a
    # script, a command line's --help or a worker process would pay them on every start.
    proc = _run("import sys, odekern\n"
                "print(sorted(m for m in ('torch._dynamo', 'scipy', 'triton') if m in sys.modules))")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_scipy_is_needed_only_by_the_scipy_solver_method():
    # SciPy is not among odekern's requirements: without it every other method solves, and
    # method="scipy_solver" says what is missing (a None entry makes `import scipy` fail).
    proc = _run("import sys\n"
                "sys.modules['scipy'] = None\n"
                "import torch, odekern\n"
                "y = odekern.odeint(lambda t, y: -y, torch.ones(3), torch.tensor([0.0, 1.0]))\n"
                "assert abs(float(y[-1, 0]) - 0.36787944) < 1e-6, y\n"
                "try:\n"
                "    odekern.odeint(lambda t, y: -y, torch.ones(3), torch.tensor([0.0, 1.0]), method='scipy_solver')\n"
                "except ImportError as error:\n"
                "    print(error)\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "method='scipy_solver'" in proc.stdout and "pip install scipy" in proc.stdout, proc.stdout
