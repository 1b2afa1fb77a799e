"""The lane loops of the per-element CPU paths stay vectorised for AVX2.

Every ``#pragma omp simd`` loop of csrc/ops/nmode_solve/nmode_solve_cpu_per_element.h is meant
to become vector code; when GCC cannot vectorise one it silently emits scalar code, which made
per-element control several times slower once (its step-size controller loop fell back to
scalar double arithmetic in the AVX2 clone). This test compiles the header alone for
x86-64-v3 (the AVX2 clone, the one this machine runs) with GCC's vectoriser report and fails if
the report names a loop it could not vectorise inside any ``omp simd`` loop.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEADER = ROOT / "csrc" / "ops" / "nmode_solve" / "nmode_solve_cpu_per_element.h"

pytestmark = pytest.mark.skipif(shutil.which("g++") is None or platform.machine() != "x86_64",
                                reason="needs g++ targeting x86-64 (the CPU backend's compiler)")

# One instantiation of each block function per dtype, ISA clones off so that the report is for
# the x86-64-v3 code only.
SOURCE = """
#include "odekern/macros.h"
#undef ODEKERN_ISA_CLONES
#define ODEKERN_ISA_CLONES
#include "ops/nmode_solve/nmode_solve_cpu_per_element.h"
namespace pe = odekern::nmode::cpu_pe;
#define INSTANTIATE(T)                                                                          \\
  template int pe::forward_block<T>(const T*, const T*, int64_t, int64_t, int64_t, double, double, \\
                                    double, double, T*, T*, T*);                                 \\
  template int pe::backward_block<T>(const T*, const T*, int64_t, int64_t, int64_t, double, double, \\
                                     double, double, const T*, const T*, const T*, T*, T*);
INSTANTIATE(float)
INSTANTIATE(double)
"""


def _simd_loop_lines(text: str) -> set[int]:
    """1-based line numbers of every statement inside a loop that follows `#pragma omp simd`."""
    lines = text.splitlines()
    inside: set[int] = set()
    for i, line in enumerate(lines):
        if line.strip().startswith("#pragma omp simd"):
            depth, j, opened = 0, i + 1, False
            while j < len(lines):
                inside.add(j + 1)
                depth += lines[j].count("{") - lines[j].count("}")
                opened = opened or "{" in lines[j]
                if (opened and depth <= 0) or (not opened and lines[j].rstrip().endswith(";")):
                    break
                j += 1
    return inside


def test_every_simd_lane_loop_vectorises_for_avx2(tmp_path):
    src = tmp_path / "per_element_vec.cpp"
    src.write_text(SOURCE)
    cmd = ["g++", "-std=c++20", "-O3", "-march=x86-64-v3", "-fopenmp", "-fno-math-errno",
           f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'csrc' / 'include'}", "-c", str(src), "-o", str(tmp_path / "o.o"),
           "-fopt-info-vec-all"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = out.stderr.splitlines()
    where = re.compile(re.escape(HEADER.name) + r":(\d+):\d+: (optimized|missed): (.*)")
    vectorised, scalar = set(), set()
    for line in report:
        m = where.search(line)
        if m and m.group(2) == "optimized" and "loop vectorized" in m.group(3):
            vectorised.add(int(m.group(1)))
        elif m and m.group(2) == "missed" and m.group(3).startswith("couldn't vectorize loop"):
            scalar.add(int(m.group(1)))
    simd_lines = _simd_loop_lines(HEADER.read_text())
    assert vectorised & simd_lines, "the report names no vectorised lane loop: did the flags change?"
    bad = sorted(scalar & simd_lines)
    assert not bad, (f"omp simd loops left scalar for x86-64-v3 at {HEADER.name} lines {bad}; "
                     "see the vectoriser report: " + " | ".join(r for r in report if "couldn't" in r)[:3000])
