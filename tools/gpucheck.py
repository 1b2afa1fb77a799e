"""``python -m tools.gpucheck`` (from the repository root): prove odekern's GPU code lowers for real GPUs, on any machine.

This machine has no GPU, so the Triton interpreter and the CPU build of the shared math are
all the tests can execute. What they cannot show is that the same code compiles for a real
target and fits in registers. This module compiles it ahead of time for sm_80 and sm_90:

* Triton: every ``triton.jit`` kernel (name ending in ``_kernel``, docs/design.md's convention;
  other jit functions are device helpers) defined in an op's Triton backend (``odekern/ops/*/triton.py`` or ``triton/``) is compiled
  with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` for each variant
  the module lists in ``aot_variants()``: a list of dicts ``{"kernel", "signature",
  "constexprs", "label", "options"}`` (dtypes x representative constexprs). A kernel with no
  variant is itself a failure, so a new kernel cannot slip past the check. Compilation runs in
  a child interpreter with ``TRITON_INTERPRET=0`` (the tests run the interpreter, in which
  ``triton.jit`` does not produce compilable functions) and a fresh Triton cache, so ptxas
  really runs and its ``-v`` log is the source of the register / spill numbers.
* CUDA: every ``csrc/**/*.cu`` is compiled by nvcc with the flags of the real build
  (setup.py) plus ``-arch=sm_XX -Xptxas -v`` to an object in a temp dir; ptxas' log gives the
  numbers per entry function.

Exit status is non-zero on any compile failure, on any spill (unless ``--allow-spills``),
and when no kernel at all was found.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import glob
import importlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from networks import atomic_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS: dict[str, int] = {"sm_80": 80, "sm_90": 90}
DEFAULT_NVCC = "/usr/local/bin/nvcc"
# One compile (a whole .cu, or all Triton variants of one target) may not take longer.
TIMEOUT_S = 1200


@dataclasses.dataclass
class KernelResult:
    """One kernel compiled for one target (or the failure to compile it)."""

    kind: str  # "triton" | "cuda"
    kernel: str  # Triton: function name; CUDA: demangled entry name
    target: str  # "sm_80" | "sm_90"
    variant: str  # Triton: dtype + constexprs; CUDA: the source file
    regs: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack: int | None = None
    smem: int | None = None
    error: str | None = None

    @property
    def spills(self) -> int:
        return (self.spill_stores or 0) + (self.spill_loads or 0)


# --------------------------------------------------------------------------- ptxas log parsing

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas_log(log: str) -> dict[str, dict[str, int]]:
    """Per entry function of a ``ptxas -v`` log: regs, stack, spill_stores/loads, smem.

    ptxas prints, per entry, "Compiling entry function 'X'", then "Function properties for X"
    followed by the stack/spill line, then "Used N registers, ..., M bytes smem, ...". Device
    functions that were not inlined get a properties block too; they are not entries, so their
    lines are attributed to no kernel (their spills show up in the entry that calls them).
    """
    out: dict[str, dict[str, int]] = {}
    current: str | None = None
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = m.group(1)
            out[current] = {"regs": -1, "stack": 0, "spill_stores": 0, "spill_loads": 0, "smem": 0}
            continue
        if "Function properties for" in line:
            name = line.split("Function properties for", 1)[1].strip()
            if name != current:
                current = None  # a non-inlined device function, not the entry being compiled
            continue
        if current is None:
            continue
        m = _PROPS.search(line)
        if m:
            stats = out[current]
            stats["stack"], stats["spill_stores"], stats["spill_loads"] = map(int, m.groups())
            continue
        m = _USED.search(line)
        if m:
            out[current]["regs"] = int(m.group(1))
            s = _SMEM.search(line)
            out[current]["smem"] = int(s.group(1)) if s else 0
    return out


def _demangle(names: list[str]) -> dict[str, str]:
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    res = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True,
                         check=False)
    pretty = res.stdout.splitlines()
    if res.returncode != 0 or len(pretty) != len(names):
        return {n: n for n in names}
    return dict(zip(names, pretty))


def _kernel_name(signature: str) -> str:
    """A demangled kernel signature without its return type and parameter list (the last
    top-level parenthesised group; "(anonymous namespace)" inside the name survives)."""
    s = signature.strip()
    if s.endswith(")"):
        depth = 0
        for i in range(len(s) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(s[i], 0)
            if depth == 0:
                s = s[:i]
                break
    return s.removeprefix("void ").replace("(anonymous namespace)::", "")


def _short_error(text: str, limit: int = 1500) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()] or lines
    msg = "\n".join(errors[:12])
    return msg[:limit] if msg else "failed without output"


# --------------------------------------------------------------------------------------- CUDA

def cuda_sources(csrc: str | None = None) -> list[str]:
    """Every ``.cu`` file under ``csrc`` (default: the repository's csrc/)."""
    base = csrc or os.path.join(ROOT, "csrc")
    return sorted(glob.glob(os.path.join(base, "**", "*.cu"), recursive=True))


def _nvcc_flags(target: str, include_dirs: list[str]) -> list[str]:
    # The flags setup.py's CUDAExtension uses, so the registers reported are the shipped ones.
    try:
        from torch.utils import cpp_extension

        common = list(cpp_extension.COMMON_NVCC_FLAGS)
        torch_includes = list(cpp_extension.include_paths())
    except Exception:  # noqa: BLE001 - torch missing: plain CUDA sources still compile
        common, torch_includes = [], []
    flags = ["-std=c++17", "-O3", "--use_fast_math", "-Xptxas", "-v", f"-arch={target}"]
    flags += common + ["-DODEKERN_WITH_CUDA=1"]
    for d in include_dirs:
        flags += ["-I", d]
    for d in torch_includes:
        flags += ["-isystem", d]
    return flags


def compile_cuda(source: str, target: str, nvcc: str = DEFAULT_NVCC,
                 include_dirs: list[str] | None = None) -> list[KernelResult]:
    """nvcc ``source`` for ``target``; one result per entry function, or one failure row."""
    rel = os.path.relpath(source, ROOT) if source.startswith(ROOT) else source
    if include_dirs is None:
        include_dirs = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")]
    if not os.path.exists(nvcc):
        found = shutil.which("nvcc")
        if found is None:
            return [KernelResult("cuda", os.path.basename(source), target, rel,
                                 error=f"nvcc not found at {nvcc} nor on PATH")]
        nvcc = found
    with tempfile.TemporaryDirectory(prefix="odekern_gpucheck_") as tmp:
        obj = os.path.join(tmp, os.path.basename(source) + f".{target}.o")
        cmd = [nvcc, *_nvcc_flags(target, include_dirs), "-c", source, "-o", obj]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            return [KernelResult("cuda", os.path.basename(source), target, rel,
                                 error=f"nvcc timed out after {TIMEOUT_S} s")]
    log = res.stdout + res.stderr
    if res.returncode != 0:
        return [KernelResult("cuda", os.path.basename(source), target, rel,
                             error=f"nvcc exit {res.returncode}: {_short_error(log)}")]
    stats = parse_ptxas_log(log)
    pretty = _demangle(list(stats))
    results = []
    for mangled, s in stats.items():
        name = _kernel_name(pretty[mangled])
        err = None if s["regs"] >= 0 else "ptxas printed no register count"
        results.append(KernelResult("cuda", name, target, rel, s["regs"], s["spill_stores"],
                                    s["spill_loads"], s["stack"], s["smem"], err))
    if not results:
        results.append(KernelResult("cuda", os.path.basename(source), target, rel,
                                    error="compiled, but ptxas reported no entry function "
                                          "(no __global__ kernel instantiated?)"))
    return results


# ------------------------------------------------------------------------------------- Triton

def triton_modules() -> list[str]:
    """Module names of every op's Triton backend: ``odekern/ops/<op>/triton.py`` or the package
    ``odekern/ops/<op>/triton/`` (whose ``__init__`` exposes its kernels and ``aot_variants``)."""
    ops = glob.glob(os.path.join(ROOT, "odekern", "ops", "*", "triton.py"))
    ops += [os.path.dirname(p) for p in glob.glob(os.path.join(ROOT, "odekern", "ops", "*", "triton", "__init__.py"))]
    return sorted(f"odekern.ops.{os.path.basename(os.path.dirname(p))}.triton" for p in ops)


def _describe_variant(signature: dict, constexprs: dict) -> str:
    dtypes = sorted({t.lstrip("*") for t in signature.values() if t.startswith("*")})
    consts = " ".join(f"{k}={v}" for k, v in sorted(constexprs.items()))
    return "/".join(dtypes) + (" " + consts if consts else "")


def _describe_exception(exc: BaseException) -> str:
    """The root cause first (Triton chains a CompilationError per inlined call level), then
    the source position of the outermost error."""
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__)
    root = chain[-1]
    where = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(root).__name__}: {_short_error(str(root), 600)} [{where}]"


def _compile_triton_here(target: str, quick: bool = False) -> list[KernelResult]:
    """Compile every Triton variant for ``target`` in this process (needs TRITON_INTERPRET=0);
    ``quick``: only the first variant listed for each kernel."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("Triton AOT compilation needs TRITON_INTERPRET=0 in this process")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    gpu = GPUTarget("cuda", TARGETS[target], 32)
    results: list[KernelResult] = []
    for modname in triton_modules():
        try:
            mod = importlib.import_module(modname)
        except Exception as exc:  # noqa: BLE001
            results.append(KernelResult("triton", modname, target, "import",
                                        error=f"import failed: {type(exc).__name__}: {exc}"))
            continue
        # Launchable kernels are named ``*_kernel`` (docs/design.md); other jit functions are
        # device helpers, compiled as part of the kernels that call them.
        kernels = {name: obj for name, obj in vars(mod).items()
                   if isinstance(obj, JITFunction) and obj.__module__.startswith(modname)
                   and name.endswith("_kernel")}
        variants = list(mod.aot_variants()) if hasattr(mod, "aot_variants") else []
        covered = {v["kernel"].__name__ for v in variants}
        if quick:
            firsts: dict[str, dict] = {}
            for v in variants:
                firsts.setdefault(v["kernel"].__name__, v)
            variants = list(firsts.values())
        for name in sorted(set(kernels) - covered):
            why = (f"{modname}.aot_variants() lists no variant for it" if hasattr(mod, "aot_variants")
                   else f"{modname} defines no aot_variants() (the signatures and constexprs to "
                        "compile; see odekern/ops/nmode_solve/triton/aot.py)")
            results.append(KernelResult("triton", name, target, modname, error=why))
        for v in variants:
            fn, sig, consts = v["kernel"], dict(v["signature"]), dict(v.get("constexprs", {}))
            label = v.get("label") or _describe_variant(sig, consts)
            for k in consts:
                sig.setdefault(k, "constexpr")
            row = KernelResult("triton", fn.__name__, target, label)
            log = io.StringIO()
            try:
                with contextlib.redirect_stdout(log):  # TRITON_DUMP_PTXAS_LOG prints the log
                    compiled = triton.compile(ASTSource(fn, signature=sig, constexprs=consts),
                                              target=gpu, options=v.get("options"))
            except Exception as exc:  # noqa: BLE001
                row.error = _describe_exception(exc)
                results.append(row)
                continue
            stats = parse_ptxas_log(log.getvalue()).get(compiled.metadata.name)
            if stats is None or stats["regs"] < 0:
                row.error = "compiled, but the ptxas -v log was not captured"
            else:
                row.regs, row.stack = stats["regs"], stats["stack"]
                row.spill_stores, row.spill_loads = stats["spill_stores"], stats["spill_loads"]
                # Triton's shared memory is dynamic, so it is in the metadata, not in the log.
                row.smem = int(compiled.metadata.shared) + stats["smem"]
            results.append(row)
    return results


def compile_triton(target: str, quick: bool = False) -> list[KernelResult]:
    """Compile all Triton variants for ``target`` in a child interpreter (TRITON_INTERPRET=0)."""
    with tempfile.TemporaryDirectory(prefix="odekern_gpucheck_triton_") as tmp:
        out = os.path.join(tmp, "results.json")
        env = dict(os.environ)
        env.update({
            "TRITON_INTERPRET": "0",
            "TRITON_CACHE_DIR": os.path.join(tmp, "cache"),  # fresh: ptxas must really run
            "TRITON_DUMP_PTXAS_LOG": "1",
            # Keep Triton 3.9's current default (fused multiply-add on) and silence its warning.
            "TRITON_DEFAULT_FP_FUSION": env.get("TRITON_DEFAULT_FP_FUSION", "1"),
        })
        cmd = [sys.executable, "-m", "tools.gpucheck", "--_triton-worker", target, out]
        if quick:
            cmd.append("--quick")
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT,
                                 timeout=TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            return [KernelResult("triton", "<all>", target, "", error=f"timed out after {TIMEOUT_S} s")]
        if res.returncode != 0 or not os.path.exists(out):
            return [KernelResult("triton", "<all>", target, "",
                                 error=f"worker exit {res.returncode}: {_short_error(res.stderr)}")]
        with open(out) as f:
            return [KernelResult(**r) for r in json.load(f)]


# -------------------------------------------------------------------------------------- report

def run(targets: list[str] | None = None, *, triton: bool = True, cuda: bool = True,
        csrc: str | None = None, nvcc: str = DEFAULT_NVCC, jobs: int | None = None,
        quick: bool = False) -> list[KernelResult]:
    """Compile everything for every target; compiles run in parallel (``jobs`` processes).
    ``quick``: one variant per Triton kernel (every kernel still compiles for every target)."""
    targets = targets or list(TARGETS)
    for t in targets:
        if t not in TARGETS:
            raise ValueError(f"targets must be among {sorted(TARGETS)}, got {t!r}")
    tasks = []
    if triton:
        tasks += [(compile_triton, (t,), {"quick": quick}) for t in targets]
    if cuda:
        include = None if csrc is None else [os.path.join(ROOT, "csrc", "include"), csrc]
        tasks += [(compile_cuda, (src, t), {"nvcc": nvcc, "include_dirs": include})
                  for src in cuda_sources(csrc) for t in targets]
    jobs = jobs or os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(fn, *args, **kw) for fn, args, kw in tasks]
        results = [r for fut in futures for r in fut.result()]
    results.sort(key=lambda r: (r.kind, r.kernel, r.variant, r.target))
    return results


def failures(results: list[KernelResult], allow_spills: bool = False) -> list[str]:
    """Why the check fails (empty list: it passes)."""
    why = [f"{r.kind} {r.kernel} [{r.variant}] {r.target}: {r.error}" for r in results if r.error]
    if not allow_spills:
        why += [f"{r.kind} {r.kernel} [{r.variant}] {r.target}: spills "
                f"{r.spill_stores} B stored / {r.spill_loads} B loaded"
                for r in results if not r.error and r.spills]
    if not results:
        why.append("no GPU kernel found (no Triton kernel and no .cu file)")
    return why


def format_table(results: list[KernelResult]) -> str:
    """A Markdown table (it goes into README as is)."""
    head = "| kind | kernel | variant | target | regs | spill st/ld (B) | stack (B) | smem (B) |"
    rows = [head, "|" + "---|" * 8]
    for r in results:
        if r.error:
            first = r.error.splitlines()[0][:90]
            rows.append(f"| {r.kind} | {r.kernel} | {r.variant} | {r.target} | FAILED: {first} | | | |")
        else:
            rows.append(f"| {r.kind} | {r.kernel} | {r.variant} | {r.target} | {r.regs} | "
                        f"{r.spill_stores}/{r.spill_loads} | {r.stack} | {r.smem} |")
    return "\n".join(rows)


def write_json(path: str, results: list[KernelResult]) -> None:
    """Write results atomically (networks.atomic_files: never a half-written file)."""
    text = json.dumps([dataclasses.asdict(r) for r in results], indent=1)
    atomic_files.atomic_write_bytes(path, text.encode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.gpucheck", description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default=",".join(TARGETS), help="comma list among sm_80,sm_90")
    p.add_argument("--allow-spills", action="store_true", help="report spills but do not fail")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON (atomically)")
    p.add_argument("--only", choices=("triton", "cuda"), help="check one kind of kernel only")
    p.add_argument("--csrc", help="directory of .cu files to check instead of the repo's csrc/")
    p.add_argument("--nvcc", default=DEFAULT_NVCC, help="nvcc to use (default %(default)s)")
    p.add_argument("--jobs", type=int, default=None, help="parallel compiles (default: #cores)")
    p.add_argument("--quick", action="store_true",
                   help="one variant (the first listed) per Triton kernel instead of all")
    p.add_argument("--_triton-worker", nargs=2, metavar=("TARGET", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    worker = args._triton_worker
    if worker:
        target, out = worker
        write_json(out, _compile_triton_here(target, quick=args.quick))
        return 0

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    results = run(targets, triton=args.only in (None, "triton"), cuda=args.only in (None, "cuda"),
                  csrc=args.csrc, nvcc=args.nvcc, jobs=args.jobs, quick=args.quick)
    print(format_table(results))
    if args.json:
        write_json(args.json, results)
    why = failures(results, allow_spills=args.allow_spills)
    if why:
        print("\ngpucheck FAILED:\n  " + "\n  ".join(why), file=sys.stderr)
        return 1
    print(f"\ngpucheck OK: {len(results)} kernel builds, no failures"
          + ("" if args.allow_spills else ", no spills"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
