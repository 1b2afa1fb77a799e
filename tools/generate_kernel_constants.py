"""Writes the nmODE kernels' method ids, Runge-Kutta coefficients, step-control constants,
status codes and failure messages from their one Python source, for the two kernel languages
that cannot import it at run time: csrc/include/odekern/generated/nmode_constants.h (C++/CUDA
constants, device code can read them), csrc/include/odekern/generated/nmode_failures.h (the C++
host code's failure messages) and odekern/ops/nmode_solve/triton/constants_generated.py
(``tl.constexpr`` values for Triton jit code, which can only read module-level constexprs).

Sources: ``odekern.ops.nmode_solve.config.MethodId`` (method ids), ``odekern.ops.nmode_solve.
coefficients`` (tableaus derived from ``odekern/solvers/tableaus.py``), ``odekern.solvers.
controllers`` (controller and initial-step constants), ``config.CHECKPOINTS``, ``odekern.ops.
nmode_solve.fast_sine`` (the fused sine's range reduction and range) and ``odekern.ops.
nmode_solve.failures`` (status codes, failure messages). Every double is
written exactly (hexadecimal in C++, repr in Python), so the kernels see the very bits Python
uses. C++ coefficients are ``constexpr`` functions, which CUDA device code can call
(namespace-scope arrays it could not read).

    python tools/generate_kernel_constants.py          # rewrite the three files
    python tools/generate_kernel_constants.py --check  # exit 1 if a checked-in file is stale

tests/test_generated_kernel_constants.py runs the check.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from odekern.ops.nmode_solve import coefficients, failures, fast_sine  # noqa: E402
from odekern.ops.nmode_solve.config import CHECKPOINTS, MethodId  # noqa: E402
from odekern.solvers import controllers  # noqa: E402

HEADER = ROOT / "csrc" / "include" / "odekern" / "generated" / "nmode_constants.h"
FAILURES_HEADER = ROOT / "csrc" / "include" / "odekern" / "generated" / "nmode_failures.h"
TRITON = ROOT / "odekern" / "ops" / "nmode_solve" / "triton" / "constants_generated.py"

# Name prefixes of the methods' coefficients in the Triton module.
TRITON_PREFIX = {MethodId.EULER: "EULER", MethodId.MIDPOINT: "MIDPOINT", MethodId.RK4: "RK38",
                 MethodId.RK4_CLASSIC: "RK4C", MethodId.DOPRI5: "DP5"}


def camel_constant(name: str) -> str:
    """A C++ constant's name for an enum member's: TOO_MANY_STEPS -> kTooManySteps."""
    return "k" + "".join(part.capitalize() for part in name.split("_"))


# C++ names of the method ids (enum Method) and of the status codes (enum Status).
CXX_METHOD = {m: camel_constant(m.name) for m in MethodId}
CXX_STATUS = {s: camel_constant(s.name) for s in failures.Status}

CONTROLLER_CONSTANTS = {
    "kSafety": controllers.SAFETY,
    "kIfactor": controllers.IFACTOR,
    "kDfactor": controllers.DFACTOR,
    "kInitialNormFloor": controllers.INITIAL_NORM_FLOOR,
    "kInitialTinyStep": controllers.INITIAL_TINY_STEP,
    "kInitialStepFraction": controllers.INITIAL_STEP_FRACTION,
    "kInitialFlatFloor": controllers.INITIAL_FLAT_FLOOR,
    "kInitialFlatShrink": controllers.INITIAL_FLAT_SHRINK,
    "kInitialMaxGrowth": controllers.INITIAL_MAX_GROWTH,
}


def literal(x: float) -> str:
    """An exact C++ double literal."""
    return "0.0" if x == 0.0 else float(x).hex()


def _select(index: str, values: list[str]) -> str:
    """``index == 0 ? v0 : index == 1 ? v1 : ... : 0.0``, leaving out zeros."""
    parts = [f"{index} == {i} ? {v} : " for i, v in enumerate(values) if v != "0.0"]
    return "".join(parts) + "0.0"


# The fused sine's constants per state dtype: C++ type, Triton name prefix, values.
SINE_REDUCTIONS = (("float", "F32", fast_sine.FLOAT32), ("double", "F64", fast_sine.FLOAT64))
SINE_FIELDS = ("two_over_pi", "inv_pi", "pio2_hi", "pio2_mid", "pio2_lo", "magic", "range")
SINE_TURNS = ("max_quarter_turns", "max_half_turns")


def _trig_const(cxx_type: str, reduction: fast_sine.Reduction) -> str:
    suffix = "f" if cxx_type == "float" else ""
    lines = [f"template <> struct TrigConst<{cxx_type}> {{"]
    lines += [f"  static constexpr {cxx_type} {name} = {literal(getattr(reduction, name))}{suffix};"
              f"  // {getattr(reduction, name)!r}" for name in SINE_FIELDS]
    lines += [f"  static constexpr int {name} = {getattr(reduction, name)};" for name in SINE_TURNS]
    lines.append("};")
    return "\n".join(lines)


def _vector_fn(name: str, values) -> str:
    body = _select("i", [literal(v) for v in values])
    return f"  ODEKERN_HD static constexpr double {name}(int i) {{ return {body}; }}"


def _tableau(c: coefficients.MethodCoefficients) -> str:
    rows = [_select("j", [literal(v) for v in row]) for row in c.a]
    a_body = "".join(f"i == {i} ? ({row}) : " for i, row in enumerate(rows) if row != "0.0") + "0.0"
    lines = [
        f"template <> struct Tableau<{CXX_METHOD[c.method]}> {{",
        f"  static constexpr int S = {c.stages};",
        f"  static constexpr int kOrder = {c.order};",
        f"  ODEKERN_HD static constexpr double a(int i, int j) {{ return {a_body}; }}",
        _vector_fn("b", c.b),
    ]
    if c.err is not None:
        lines.append("  // The local error estimate is dt * sum_j e(j) k_j (higher minus embedded order).")
        lines.append(_vector_fn("e", c.err))
    if c.mid is not None:
        lines.append("  // Stage weights of the dense output's midpoint (y_mid = y0 + dt * sum_j mid(j) k_j).")
        lines.append(_vector_fn("mid", c.mid))
    lines.append("};")
    return "\n".join(lines)


def render() -> str:
    enum = ", ".join(f"{CXX_METHOD[m]} = {int(m)}" for m in MethodId)
    status = ", ".join(f"{CXX_STATUS[s]} = {int(s)}" for s in failures.Status)
    constants = "\n".join(f"constexpr double {name} = {literal(v)};  // {v!r}"
                          for name, v in CONTROLLER_CONSTANTS.items())
    dense = "\n".join(
        f"ODEKERN_HD constexpr double dense_{name}(int p) {{ return {_select('p', ['0.0'] + [literal(v) for v in powers])}; }}"
        for name, powers in coefficients.DOPRI5_DENSE_QUARTIC.items())
    tableaus = "\n\n".join(_tableau(coefficients.COEFFICIENTS[m]) for m in MethodId)
    trig = "\n".join(_trig_const(cxx_type, reduction) for cxx_type, _, reduction in SINE_REDUCTIONS)
    return f"""// Generated by tools/generate_kernel_constants.py from odekern/ops/nmode_solve/coefficients.py,
// odekern/solvers/controllers.py, odekern/ops/nmode_solve/config.py,
// odekern/ops/nmode_solve/fast_sine.py and odekern/ops/nmode_solve/failures.py. Do not edit: change
// the Python source and rerun the script (tests/test_generated_kernel_constants.py fails when stale).
#pragma once

#include "odekern/macros.h"

namespace odekern {{
namespace nmode {{

// The method ids every backend receives (config.MethodId).
enum Method : int {{ {enum} }};

// A per-element solver's outcome (failures.Status); a kernel reports the largest of its elements'.
enum Status : int {{ {status} }};

// torchdiffeq's step-size controller and initial-step constants (solvers/controllers.py).
{constants}

// States kept per element by the exact backward's two-level checkpointing (config.CHECKPOINTS).
constexpr int kCheckpoints = {CHECKPOINTS};

// dopri5's dense output on a step: y(theta) = y0 + w_y1 (y1 - y0) + w_mid (y_mid - y0)
// + w_f0 dt f0 + w_f1 dt f1, each weight w = sum_p dense_w(p) theta^p for p = 1..4.
{dense}

// Butcher tableaus: a(i, j) for j < i, step weights b(i), and for dopri5 e(i) and mid(i).
template <int M> struct Tableau;

{tableaus}

// The fused sine's range reduction per state dtype (fast_sine.py): x = k pi/2 + r with
// pi/2 = pio2_hi + pio2_mid + pio2_lo, exact for |x| <= range, that is |k| <= max_quarter_turns
// (or |n| <= max_half_turns for x = n pi + r); the kernels return inf beyond.
template <typename T> struct TrigConst;
{trig}

}}  // namespace nmode
}}  // namespace odekern
"""


def _cxx_failure(failure: failures.Failure) -> str:
    """``failure``'s formatting function: its template's words and fields streamed in order."""
    parts = [part for literal, field in failure.pieces
             for part in ([json.dumps(literal)] if literal else []) + ([field] if field else [])]
    signature = ", ".join(f"{failures.FIELD_TYPES[field]} {field}" for field in dict.fromkeys(failure.fields))
    return (f"inline std::string {failure.name}({signature}) {{\n"
            f"  return text_of({', '.join(parts)});\n"
            f"}}")


def render_failures() -> str:
    functions = "\n\n".join(_cxx_failure(f) for f in failures.FAILURES)
    cases = "\n".join(f"    case {CXX_STATUS[status]}: return {failure.name}"
                      f"({', '.join(failure.fields)});" for status, failure in failures.PER_ELEMENT.items())
    return f"""// Generated by tools/generate_kernel_constants.py from odekern/ops/nmode_solve/failures.py. Do not
// edit: change the Python source and rerun the script (tests/test_generated_kernel_constants.py
// fails when stale). Host code only: each function formats one failure's message, which the
// bindings raise and the op recognises by its words.
#pragma once

#include <cstdint>
#include <sstream>
#include <string>

#include "odekern/generated/nmode_constants.h"

namespace odekern {{
namespace nmode {{

// The parts streamed the way TORCH_CHECK formats its message (operator<<).
template <typename... Parts>
std::string text_of(const Parts&... parts) {{
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}}

{functions}

// The message of a per-element solver's status, "" for kOk.
inline std::string status_message(int status, int64_t max_num_steps) {{
  switch (status) {{
    case {CXX_STATUS[failures.Status.OK]}: return std::string();
{cases}
    default: return {failures.UNKNOWN_STATUS.name}(status);
  }}
}}

}}  // namespace nmode
}}  // namespace odekern
"""


def render_triton() -> str:
    lines = []
    for m in MethodId:
        c, p = coefficients.COEFFICIENTS[m], TRITON_PREFIX[m]
        # a(i, j) is not here: the jit code reads it at compile time (jit_math.stage_coupling).
        lines.append(f"# {m.name.lower()}: b(j)"
                     + (", e(j) (error weights), mid(j) (dense-output midpoint)" if c.err else ""))
        lines += [f"{p}_B{j} = tl.constexpr({v!r})" for j, v in enumerate(c.b)]
        lines += [f"{p}_E{j} = tl.constexpr({v!r})" for j, v in enumerate(c.err or ())]
        lines += [f"{p}_MID{j} = tl.constexpr({v!r})" for j, v in enumerate(c.mid or ())]
        lines.append("")
    lines.append("# dopri5's dense output: coefficient of theta**p (p = 1..4) of each weight")
    for name, powers in coefficients.DOPRI5_DENSE_QUARTIC.items():
        lines += [f"DENSE_{name.upper()}_{p} = tl.constexpr({v!r})" for p, v in enumerate(powers, start=1)]
    lines.append("")
    lines.append("# torchdiffeq's controller and initial-step constants; STEP_EXPONENT = 1 / dopri5's order")
    for name, v in CONTROLLER_CONSTANTS.items():
        snake = "".join("_" + ch if ch.isupper() else ch.upper() for ch in name[1:]).lstrip("_")
        lines.append(f"{snake} = tl.constexpr({v!r})")
    lines.append(f"STEP_EXPONENT = tl.constexpr({1.0 / coefficients.COEFFICIENTS[MethodId.DOPRI5].order!r})")
    lines += ["", "# The fused sine's range reduction per state dtype (fast_sine.py)"]
    for _, prefix, reduction in SINE_REDUCTIONS:
        lines += [f"{prefix}_{name.upper()} = tl.constexpr({getattr(reduction, name)!r})" for name in SINE_FIELDS]
    lines += ["", "# Method ids (config.MethodId)"]
    lines += [f"{m.name} = tl.constexpr({int(m)})" for m in MethodId]
    lines += ["", "# Per-element solver outcomes (failures.Status)"]
    lines += [f"STATUS_{s.name} = tl.constexpr({int(s)})" for s in failures.Status]
    body = "\n".join(lines)
    return f'''"""Generated by tools/generate_kernel_constants.py from odekern/ops/nmode_solve/coefficients.py,
odekern/solvers/controllers.py, odekern/ops/nmode_solve/config.py, odekern/ops/nmode_solve/fast_sine.py
and odekern/ops/nmode_solve/failures.py: do not edit (change the Python source and rerun the script;
tests/test_generated_kernel_constants.py fails when this file is stale).
Triton jit code reads module-level ``tl.constexpr`` values only, hence a file of them."""

import triton.language as tl

{body}
'''


OUTPUTS = {"header": (lambda: HEADER, render), "failures": (lambda: FAILURES_HEADER, render_failures),
           "triton": (lambda: TRITON, render_triton)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the checked-in header is stale")
    args = parser.parse_args(argv)
    stale = 0
    for path_of, render_fn in OUTPUTS.values():
        path, text = path_of(), render_fn()
        if args.check:
            if not path.exists() or path.read_text() != text:
                print(f"{path} is stale: run python tools/generate_kernel_constants.py")
                stale = 1
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)  # never a half-written file
        print(f"wrote {path}")
    return stale


if __name__ == "__main__":
    sys.exit(main())
