"""Build script: the C++ extension ``odekern._C`` only; metadata lives in pyproject.toml.

Decision (printed at build time):
- CPU extension from ``csrc/**/*.cpp`` (minus ``*_cuda.cpp``), always, unless
  ``ODEKERN_SKIP_EXT=1``.
- CUDA extension (adds ``csrc/**/*_cuda.cu`` and their ``*_cuda.cpp`` bindings) when torch
  was built with CUDA and nvcc is found, or when ``ODEKERN_FORCE_CUDA=1``;
  ``ODEKERN_SKIP_CUDA=1`` turns it off.
- torch must be importable while building (the extension compiles against its headers):
  a build-isolated ``pip install -e .`` (pip's default, which does not see the installed
  torch) stops with the command that works, rather than downloading a second torch.
- If no compiler works, the install still succeeds without ``_C`` and odekern runs on its
  pure-PyTorch reference (``odekern._ext`` warns once); ``ODEKERN_STRICT_BUILD=1`` makes
  that an error.

Release objects: no debug information (``-g0``; Python's own CFLAGS carry ``-g``, which made
the library 33 MB); ``ODEKERN_DEBUG_BUILD=1`` keeps it.

Incremental builds: objects live in ``build/temp.<platform>-<python>`` for every kind of
build, including ``pip install -e .`` (whose default is a fresh temporary folder each time),
so ninja recompiles only the sources (and headers) changed since the last build.

ISA: the extension is compiled for the x86-64 baseline; hot loops pick AVX-512 / AVX2 /
baseline clones at run time (GCC ``target_clones``), so one wheel runs on any x86-64 CPU.
"""

import glob
import json
import os
import shutil
import sys
import sysconfig

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _log(msg: str) -> None:
    print(f"[odekern setup] {msg}", file=sys.stderr)


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


# The install command that works, for messages (scripts/install.sh pins torch first).
WORKING_INSTALL = ("bash scripts/install.sh   (or, in an environment that has torch: "
                   "pip install --no-build-isolation -e .)")
PURE_PYTHON = ("odekern is installed WITHOUT its C++ kernels and runs on its pure-PyTorch "
               "reference backend (same results, slower; odekern.backends() says why)")


def _torch_missing_message(exc: Exception) -> str:
    return (f"torch is not importable in this build environment ({type(exc).__name__}: {exc}). "
            "odekern's C++ extension is compiled against the installed torch, and pip's default "
            "build isolation hides it (torch is deliberately not a build requirement: that would "
            "download a second, multi-GB torch). Install with:\n    " + WORKING_INSTALL + "\n"
            "or set ODEKERN_SKIP_EXT=1 to install without the C++ extension.")


def _cxx_compiler() -> str | None:
    """The C++ compiler the build will call (``$CXX`` or ``c++``), if it exists."""
    command = (os.environ.get("CXX") or "c++").split()
    return shutil.which(command[0]) if command else None


def _ninja_on_path() -> bool:
    """torch's BuildExtension runs ``ninja`` from PATH; the ninja wheel installs it next to
    the interpreter, which is not on PATH when a venv's python is called directly."""
    if shutil.which("ninja"):
        return True
    try:
        import ninja
    except ImportError:
        return False
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    return shutil.which("ninja") is not None


def _extension_modules():
    if _flag("ODEKERN_SKIP_EXT"):
        _log(f"ODEKERN_SKIP_EXT=1: not building the C++ extension; {PURE_PYTHON}")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as exc:
        _log(_torch_missing_message(exc))
        sys.exit(1)
    if _cxx_compiler() is None:
        if _flag("ODEKERN_STRICT_BUILD"):
            _log("no C++ compiler found ($CXX or c++) and ODEKERN_STRICT_BUILD=1")
            sys.exit(1)
        _log(f"no C++ compiler found ($CXX or c++): {PURE_PYTHON}. Install g++ and run "
             f"{WORKING_INSTALL} again to build the kernels.")
        return [], {}

    cpp = [s for s in _sources("csrc/**/*.cpp") if not s.endswith("_cuda.cpp")]
    cuda_bindings = _sources("csrc/**/*_cuda.cpp")
    cuda_kernels = _sources("csrc/**/*.cu")

    nvcc = shutil.which("nvcc") or (
        os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc") if cpp_extension.CUDA_HOME else None
    )
    torch_has_cuda = torch.version.cuda is not None
    if _flag("ODEKERN_SKIP_CUDA"):
        with_cuda, why = False, "ODEKERN_SKIP_CUDA=1"
    elif _flag("ODEKERN_FORCE_CUDA"):
        with_cuda, why = True, "ODEKERN_FORCE_CUDA=1"
    elif not torch_has_cuda:
        with_cuda, why = False, "torch was built without CUDA"
    elif not nvcc:
        with_cuda, why = False, "nvcc not found"
    else:
        with_cuda, why = True, f"torch CUDA {torch.version.cuda}, nvcc at {nvcc}"

    # Host flags shared with the test-only extension (csrc/build_flags.json); the .cu kernels
    # include no torch headers and stay C++17 for nvcc.
    with open(os.path.join(ROOT, "csrc", "build_flags.json")) as f:
        flags = json.load(f)
    cxx_flags, link_flags = list(flags["cxx"]), list(flags["link"])
    if not _flag("ODEKERN_DEBUG_BUILD"):
        # Last -g wins: this overrides the -g in Python's CFLAGS that distutils puts first.
        cxx_flags.append("-g0")
        if sys.platform.startswith("linux"):
            link_flags.append("-Wl,--strip-debug")  # also none from static objects linked in
    include_dirs = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")]
    define_macros = [("ODEKERN_TORCH_VERSION", f'"{torch.__version__}"')]
    if with_cuda:
        _log(f"building CPU + CUDA extension ({why})")
        ext = cpp_extension.CUDAExtension(
            "odekern._C",
            sources=cpp + cuda_bindings + cuda_kernels,
            include_dirs=include_dirs,
            define_macros=define_macros + [("ODEKERN_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17", "--use_fast_math",
                                                          "-Xptxas", "-v"]},
            extra_link_args=link_flags,
        )
    else:
        _log(f"building CPU extension only ({why})")
        ext = cpp_extension.CppExtension(
            "odekern._C",
            sources=cpp,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    use_ninja = _ninja_on_path()
    if not use_ninja:
        _log("ninja not found (pip install ninja): compiling file by file, every file every time")
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=use_ninja)
    return [ext], {"build_ext": _TolerantBuild(build_ext)}


def persistent_build_dirs(root: str = ROOT) -> tuple[str, str]:
    """(build_temp, build_lib) as ``setup.py build_ext`` names them by default."""
    tag = f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
    return os.path.join(root, "build", f"temp.{tag}"), os.path.join(root, "build", f"lib.{tag}")


def _TolerantBuild(base):
    """A build_ext that turns a compiler failure into a warning (odekern still installs) and
    keeps its objects between editable installs."""

    class TolerantBuildExt(base):
        def finalize_options(self):
            super().finalize_options()
            if getattr(self, "editable_mode", False):
                # setuptools gives editable builds a new temporary build folder every time,
                # which would recompile everything on every `pip install -e .`.
                self.build_temp, self.build_lib = persistent_build_dirs()

        def run(self):
            files = sum(len(ext.sources) for ext in self.extensions)
            if os.path.exists(os.path.join(self.build_temp, ".ninja_log")):
                _log(f"odekern._C: recompiling only what changed among its {files} files since the last "
                     f"build (objects in {self.build_temp})")
            else:
                _log(f"compiling {files} files into odekern._C: about 2 minutes on 2 idle cores (this "
                     f"machine has {os.cpu_count()}; MAX_JOBS=N limits parallel jobs), longer on a busy "
                     f"machine; objects are kept in {self.build_temp} for the next build")
            try:
                super().run()
            except Exception as exc:  # noqa: BLE001 - any compiler/toolchain failure
                if _flag("ODEKERN_STRICT_BUILD"):
                    raise
                _log(f"C++ extension build FAILED ({type(exc).__name__}: {exc}); {PURE_PYTHON}. "
                     "The compiler's messages are above; fix them and run "
                     f"{WORKING_INSTALL} again (ODEKERN_STRICT_BUILD=1 makes this an error).")

    return TolerantBuildExt


ext_modules, cmdclass = _extension_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
