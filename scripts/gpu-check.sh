#!/usr/bin/env bash
# One-shot validation and benchmark of odekern on a machine with one NVIDIA GPU (H100/H200),
# PyTorch with CUDA, Triton, nvcc and ninja already installed, and no network: nothing is
# downloaded. Run from anywhere; results go to $OUT (default gpu-results/, gitignored):
#   env.json, build.log, gpu-tests.log, gpu-tests.xml (junit), benchmarks.json, benchmarks.md,
#   summary.md. Exit status: non-zero if the build, a GPU test or a benchmark failed.
#
#   bash scripts/gpu-check.sh             # the real check (about 8 minutes on an H200)
#   bash scripts/gpu-check.sh --dry-run   # CPU only, tiny sizes: checks this script (CI)
#
# Steps: (1) build odekern._C with its CUDA kernels for this GPU's architecture on all cores
# (pip install --no-deps --no-build-isolation -e .); (2) the GPU test subset (tests/gpu: cuda
# and triton backends against the reference for every op, dtype, method and gradient mode; both
# networks forward+backward on cuda); (3) bench/gpu_check.py (nmODE vs torchdiffeq/torchode,
# fused stages with a conv RHS, a CNM-UNet training step, peak memory vs steps).
# PYTHON selects the interpreter (default python3); BUDGET_S caps the benchmarks' time.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "gpu-check: unknown argument $arg (expected --dry-run)" >&2; exit 2 ;;
    esac
done
PY="${PYTHON:-python3}"
OUT="${OUT:-gpu-results}"
mkdir -p "$OUT"
start=$(date +%s)
status=0
step() { echo "== gpu-check [$(( $(date +%s) - start )) s] $*"; }

step "environment"
"$PY" - > "$OUT/env.json" <<'PYEOF'
import importlib.util, json, platform, shutil, subprocess
import torch
def version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[-1]
    except Exception as exc:
        return f"unavailable ({type(exc).__name__})"
env = {
    "python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
    "cuda_available": torch.cuda.is_available(),
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if torch.cuda.is_available() else None,
    "nvcc": version(["nvcc", "--version"]) if shutil.which("nvcc") else None,
    "ninja": shutil.which("ninja"),
    "nproc": __import__("os").cpu_count(),
}
for lib in ("triton", "torchdiffeq", "torchode", "jax", "diffrax", "cupy"):
    env[lib] = importlib.util.find_spec(lib) is not None
print(json.dumps(env, indent=1))
PYEOF
cat "$OUT/env.json"
for lib in torchdiffeq torchode; do
    if ! grep -q "\"$lib\": true" "$OUT/env.json"; then
        echo "gpu-check: $lib is not installed here: its comparison rows are left out (odekern is still compared with its reference backend)"
    fi
done

if [ "$DRY" = 1 ]; then
    step "dry run: no build (CPU); the installed odekern is used"
    "$PY" -c "import odekern; print('odekern', odekern.__file__, odekern.build_info())" || status=1
else
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu-check: no CUDA device visible; use --dry-run on a CPU machine" >&2
        exit 2
    fi
    step "build odekern._C with CUDA for this GPU ($(nproc) jobs)"
    arch=$(grep -o '"capability": "[0-9.]*"' "$OUT/env.json" | grep -o '[0-9][0-9.]*')
    if TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$(nproc)" ODEKERN_STRICT_BUILD=1 ODEKERN_FORCE_CUDA=1 \
        "$PY" -m pip install --no-deps --no-build-isolation --no-index -e . > "$OUT/build.log" 2>&1; then
        "$PY" -c "import odekern, json; print(json.dumps(odekern.build_info()))" | tee -a "$OUT/build.log"
    else
        echo "gpu-check: BUILD FAILED, see $OUT/build.log" >&2
        tail -30 "$OUT/build.log" >&2
        status=1
    fi
fi

step "GPU test subset (tests/gpu)"
# Real Triton on CUDA tensors: the interpreter is only for CPU runs.
export TRITON_INTERPRET=0
# Without a GPU (dry run) every test of the subset is collected and skipped with its reason.
test_args=(-q -rs -p no:cacheprovider tests/gpu "--junitxml=$OUT/gpu-tests.xml")
if ! timeout 240 "$PY" -m pytest "${test_args[@]}" > "$OUT/gpu-tests.log" 2>&1; then
    echo "gpu-check: GPU TESTS FAILED, see $OUT/gpu-tests.log" >&2
    status=1
fi
tail -5 "$OUT/gpu-tests.log"

step "benchmarks (bench/gpu_check.py)"
bench_args=(--out "$OUT" --budget-s "${BUDGET_S:-150}")
[ "$DRY" = 1 ] && bench_args+=(--dry-run)
if ! timeout 240 "$PY" bench/gpu_check.py "${bench_args[@]}" > "$OUT/benchmarks.log" 2>&1; then
    echo "gpu-check: BENCHMARKS FAILED, see $OUT/benchmarks.log" >&2
    status=1
fi

{
    echo "# odekern gpu-check ($( [ "$DRY" = 1 ] && echo dry run || echo GPU ))"
    echo
    echo "status: $( [ "$status" = 0 ] && echo OK || echo FAILED ), $(( $(date +%s) - start )) s"
    echo
    echo '```'
    cat "$OUT/env.json"
    echo '```'
    echo
    echo "## GPU tests"
    echo
    echo '```'
    tail -5 "$OUT/gpu-tests.log"
    echo '```'
    echo
    [ -f "$OUT/benchmarks.md" ] && cat "$OUT/benchmarks.md"
} > "$OUT/summary.md.tmp" && mv "$OUT/summary.md.tmp" "$OUT/summary.md"
step "done: status $status, results in $OUT/"
exit "$status"
