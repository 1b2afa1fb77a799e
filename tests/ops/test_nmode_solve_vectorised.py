"""The lane loops of the per-element and adjoint CPU paths stay vectorised for AVX2.

Every ``#pragma omp simd`` loop of the per-element and continuous-adjoint block headers
(csrc/ops/nmode_solve/nmode_solve_cpu_{per_element,adjoint}.h) and of the lane step control they
share (nmode_solve_cpu_lane_control.h) is meant to become vector code;
when GCC cannot vectorise one it silently emits scalar code, which made per-element control
~3x and the adjoint ~1.5x slower once (a controller loop and an initial-step probe had fallen
back to scalar arithmetic in the AVX2 clone). This test compiles each header alone for
x86-64-v3 (the AVX2 clone, the one this machine runs) with GCC's vectoriser report and fails if
the report names a loop it could not vectorise inside an ``omp simd`` loop. A loop known to stay
scalar says so on its pragma line ("left scalar") and is not checked.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEADERS = ROOT / "csrc" / "ops" / "nmode_solve"

pytestmark = pytest.mark.skipif(shutil.which("g++") is None or platform.machine() != "x86_64",
                                reason="needs g++ targeting x86-64 (the CPU backend's compiler)")

# The lane step control both block headers include; its loops are checked with each of them.
SHARED_HEADER = "nmode_solve_cpu_lane_control.h"

# Per header: explicit instantiations of its block functions, ISA clones off so that the report
# is for the x86-64-v3 code only.
PRELUDE = """
#include "odekern/macros.h"
#undef ODEKERN_ISA_CLONES
#define ODEKERN_ISA_CLONES
#include "ops/nmode_solve/{header}"
namespace nm = odekern::nmode;
"""
INSTANTIATIONS = {
    "nmode_solve_cpu_per_element.h": """
#define INSTANTIATE(T)                                                                          \\
  template int nm::cpu_pe::forward_task<T>(const T*, const T*, int64_t, int64_t, int64_t, double,    \\
                                           double, double, double, T*, T*, T*);                  \\
  template int nm::cpu_pe::backward_block<T>(const T*, const T*, int64_t, int64_t, int64_t, double,  \\
                                             double, double, double, const T*, const T*, const T*, \\
                                             T*, T*);
INSTANTIATE(float)
INSTANTIATE(double)
""",
    "nmode_solve_cpu_adjoint.h": """
template int nm::cpu::adjoint_backward_task<float, nm::kDopri5>(const nm::cpu::AdjointTask<float>&, int64_t, int64_t);
template int nm::cpu::adjoint_backward_task<double, nm::kDopri5>(const nm::cpu::AdjointTask<double>&, int64_t, int64_t);
template int nm::cpu::adjoint_backward_task<float, nm::kRk4>(const nm::cpu::AdjointTask<float>&, int64_t, int64_t);
""",
}


def _simd_loop_lines(text: str) -> set[int]:
    """1-based line numbers of every statement inside a loop that follows `#pragma omp simd`."""
    lines = text.splitlines()
    inside: set[int] = set()
    for i, line in enumerate(lines):
        if line.strip().startswith("#pragma omp simd") and "left scalar" not in line:
            depth, j, opened = 0, i + 1, False
            while j < len(lines):
                inside.add(j + 1)
                depth += lines[j].count("{") - lines[j].count("}")
                opened = opened or "{" in lines[j]
                if (opened and depth <= 0) or (not opened and lines[j].rstrip().endswith(";")):
                    break
                j += 1
    return inside


@pytest.mark.parametrize("header", sorted(INSTANTIATIONS))
def test_every_simd_lane_loop_vectorises_for_avx2(tmp_path, header):
    src = tmp_path / "vec.cpp"
    src.write_text(PRELUDE.format(header=header) + INSTANTIATIONS[header])
    cmd = ["g++", "-std=c++20", "-O3", "-march=x86-64-v3", "-fopenmp", "-fno-math-errno",
           f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'csrc' / 'include'}", "-c", str(src), "-o", str(tmp_path / "o.o"),
           "-fopt-info-vec-all"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = out.stderr.splitlines()
    for checked in (header, SHARED_HEADER):
        where = re.compile(re.escape(checked) + r":(\d+):\d+: (optimized|missed): (.*)")
        vectorised, scalar = set(), set()
        for line in report:
            m = where.search(line)
            if m and m.group(2) == "optimized" and "loop vectorized" in m.group(3):
                vectorised.add(int(m.group(1)))
            elif m and m.group(2) == "missed" and m.group(3).startswith("couldn't vectorize loop"):
                scalar.add(int(m.group(1)))
        simd_lines = _simd_loop_lines((HEADERS / checked).read_text())
        if checked == header or simd_lines & (vectorised | scalar):
            assert vectorised & simd_lines, f"the report names no vectorised lane loop of {checked}: did the flags change?"
        bad = sorted(scalar & simd_lines)
        assert not bad, (f"omp simd loops left scalar for x86-64-v3 at {checked} lines {bad}; the report: "
                         + " | ".join(r for r in report if "couldn't" in r)[:3000])
