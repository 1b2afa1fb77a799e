"""The C++ kernels' method ids, coefficients and controller constants come from one Python source
through the generated header csrc/include/odekern/generated/nmode_constants.h: it must be what
tools/generate_cxx_constants.py writes today, and its literals must be the Python floats' bits."""

from __future__ import annotations

import importlib.util
import pathlib
import re

from odekern.ops.nmode_solve import coefficients
from odekern.ops.nmode_solve.config import CHECKPOINTS, MethodId
from odekern.solvers import controllers, tableaus

ROOT = pathlib.Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("generate_cxx_constants", ROOT / "tools" / "generate_cxx_constants.py")
generator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generator)
TEXT = generator.HEADER.read_text()


def test_checked_in_header_is_fresh():
    assert generator.main(["--check"]) == 0, "run: python tools/generate_cxx_constants.py"


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
