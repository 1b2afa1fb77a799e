"""The kernels' method ids, coefficients, controller constants, status codes and failure messages
come from one Python source through three generated files, the C++ headers
csrc/include/odekern/generated/nmode_constants.h and nmode_failures.h and the Triton module
odekern/ops/nmode_solve/triton/constants_generated.py: each must be what
tools/generate_kernel_constants.py writes today, and their literals must be the Python floats' bits
(tests/ops/test_nmode_failure_messages.py runs the generated messages)."""

from __future__ import annotations

import importlib.util
import pathlib
import re

import pytest

from odekern.ops.nmode_solve import coefficients, failures
from odekern.ops.nmode_solve.config import CHECKPOINTS, MethodId
from odekern.solvers import controllers, tableaus

ROOT = pathlib.Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("generate_kernel_constants", ROOT / "tools" / "generate_kernel_constants.py")
generator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generator)
TEXT = generator.HEADER.read_text()


def test_checked_in_header_is_fresh():
    assert generator.main(["--check"]) == 0, "run: python tools/generate_kernel_constants.py"


def test_stale_header_is_detected(tmp_path, monkeypatch):
    stale = tmp_path / "nmode_constants.h"
    stale.write_text(TEXT.replace("kSafety = ", "kSafety = 1 + "))
    monkeypatch.setattr(generator, "HEADER", stale)
    assert generator.main(["--check"]) == 1


def _constant(name: str) -> float:
    match = re.search(rf"constexpr double {name} = (\S+);", TEXT)
    assert match, name
    return float.fromhex(match.group(1))


def test_controller_constants_are_the_python_ones_bit_for_bit():
    assert _constant("kSafety") == controllers.SAFETY
    assert _constant("kIfactor") == controllers.IFACTOR
    assert _constant("kDfactor") == controllers.DFACTOR
    assert _constant("kInitialStepFraction") == controllers.INITIAL_STEP_FRACTION
    assert _constant("kInitialFlatFloor") == controllers.INITIAL_FLAT_FLOOR
    assert f"constexpr int kCheckpoints = {CHECKPOINTS};" in TEXT


def test_method_enum_matches_method_ids():
    enum = re.search(r"enum Method : int \{ (.*) \};", TEXT).group(1)
    parsed = {name: int(value) for name, value in (item.split(" = ") for item in enum.split(", "))}
    assert parsed == {"kEuler": 0, "kMidpoint": 1, "kRk4": 2, "kRk4Classic": 3, "kDopri5": 4}
    assert sorted(parsed.values()) == sorted(int(m) for m in MethodId)


def _tableau_block(cxx_name: str) -> str:
    return re.search(rf"template <> struct Tableau<{cxx_name}> \{{(.*?)\n\}};", TEXT, re.S).group(1)


def test_dopri5_literals_are_the_tableau_values():
    block = _tableau_block("kDopri5")
    # b(0) = 35/384 and a(3, 0) = 44/45 rounded once; e(6) = 0 - 1/60.
    b = re.search(r"double b\(int i\) \{ return i == 0 \? (\S+) :", block).group(1)
    assert float.fromhex(b) == float(tableaus.DOPRI5.b[0]) == 35 / 384
    a30 = re.search(r"i == 3 \? \(j == 0 \? (\S+) :", block).group(1)
    assert float.fromhex(a30) == 44 / 45
    e6 = re.search(r"double e\(int i\) \{ return .* i == 6 \? (\S+) : 0\.0; \}", block).group(1)
    assert float.fromhex(e6) == coefficients.of("dopri5").err[6] == -1 / 60


def test_every_coefficient_round_trips():
    for method in MethodId:
        coeffs = coefficients.COEFFICIENTS[method]
        block = _tableau_block(generator.CXX_METHOD[method])
        literals = {float.fromhex(x) for x in re.findall(r"-?0x[0-9a-f.]+p[-+]\d+", block)}
        wanted = {x for row in coeffs.a for x in row} | set(coeffs.b) | set(coeffs.err or ()) | set(coeffs.mid or ())
        assert literals == wanted - {0.0}, method


def test_triton_constants_are_the_python_ones_bit_for_bit():
    text = generator.TRITON.read_text()
    values = dict(re.findall(r"^(\w+) = tl\.constexpr\((\S+)\)$", text, re.M))
    dopri5 = coefficients.of("dopri5")
    assert "DP5_A30" not in values  # the stage coupling is read at compile time instead:
    stage_coupling = pytest.importorskip("odekern.ops.nmode_solve.triton.jit_math").stage_coupling
    assert stage_coupling.fn(int(MethodId.DOPRI5), 3, 0) == dopri5.a[3][0] == 44 / 45
    assert stage_coupling.fn(int(MethodId.RK4_CLASSIC), 2, 0) == 0.0
    assert [float(values[f"DP5_E{j}"]) for j in range(7)] == list(dopri5.err)
    assert [float(values[f"DP5_MID{j}"]) for j in range(7)] == list(dopri5.mid)
    assert float(values["SAFETY"]) == controllers.SAFETY and float(values["STEP_EXPONENT"]) == 1 / 5
    assert {m.name: int(values[m.name]) for m in MethodId} == {m.name: int(m) for m in MethodId}
    statuses = {s.name: int(values[f"STATUS_{s.name}"]) for s in failures.Status}
    assert statuses == {s.name: int(s) for s in failures.Status}


def test_status_enum_matches_the_status_codes():
    enum = re.search(r"enum Status : int \{ (.*) \};", TEXT).group(1)
    parsed = {name: int(value) for name, value in (item.split(" = ") for item in enum.split(", "))}
    assert parsed == {"kOk": 0, "kTooManySteps": 1, "kStepUnderflow": 2, "kNonFinite": 3}
    assert sorted(parsed.values()) == sorted(int(s) for s in failures.Status)


def test_a_stale_failures_header_is_detected(tmp_path, monkeypatch):
    stale = tmp_path / "nmode_failures.h"
    stale.write_text(generator.FAILURES_HEADER.read_text().replace("non-finite values in the state",
                                                                   "NaN in the state"))
    monkeypatch.setattr(generator, "FAILURES_HEADER", stale)
    assert generator.main(["--check"]) == 1
