"""Shared fixtures: deterministic seeding and the ``backend`` fixture.

``backend`` is parametrised over every backend name; one that cannot run here is *skipped
with its reason* (never silently passed), so the test report shows exactly what ran.
"""

import atexit
import os
import shutil
import tempfile

# torch.compile's caches outlive the process (by default in /tmp/torchinductor_$USER) and know a
# custom op by its name, not by its schema or autograd formula: a graph compiled against an
# earlier odekern would be replayed against this one. Each session compiles afresh in a folder
# of its own (unless one is chosen explicitly), so no result depends on what ran before.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="odekern-tests-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

# Triton kernels run in its interpreter on CPU tensors; this must be set before triton.jit
# decorates anything, i.e. before odekern's Triton modules are imported. AOT compilation for
# real GPUs (tools/gpucheck.py) runs in a subprocess with TRITON_INTERPRET=0.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from native import build as native_build
from odekern import dispatch as _backends


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def _backend_param(name):
    return pytest.param(name, id=name)


@pytest.fixture(params=[_backend_param(n) for n in _backends.BACKEND_NAMES])
def backend(request):
    """A backend name usable on CPU tensors in this process, else skip with the reason."""
    name = request.param
    avail = _backends.availability().get(name)
    if avail is not True:
        pytest.skip(f"backend {name} unavailable: {avail}")
    if name == "cuda":
        pytest.skip("backend cuda: no CUDA device on this machine")
    return name


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny tensors (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    intra-op threads only add spin/wake-up cost, badly so on a loaded machine (a 2x5x5 conv took
    14 ms with 2 threads vs 0.2 ms with 1 under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def triton_launches(monkeypatch):
    """Records every interpreted Triton kernel launch as (kernel name, dtypes of its tensor
    arguments), so a test can show that Triton kernels really ran (not a fallback)."""
    interpreter = pytest.importorskip("triton.runtime.interpreter")
    launches: list[tuple[str, frozenset]] = []
    original = interpreter.InterpretedFunction.run

    def run(self, *args, **kwargs):
        dtypes = frozenset(str(a.dtype).removeprefix("torch.") for a in args if isinstance(a, torch.Tensor))
        launches.append((self.fn.__name__, dtypes))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(interpreter.InterpretedFunction, "run", run)
    return launches


@pytest.fixture(scope="session")
def testing_ops():
    """``torch.ops.odekern_testing``: the test-only ops of tests/native, built on first use."""
    return native_build.load()
