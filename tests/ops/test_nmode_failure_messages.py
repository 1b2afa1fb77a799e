"""Every way an nmode_solve fails is worded once, in odekern/ops/nmode_solve/failures.py; the C++
and CUDA kernels get those words generated, the Triton launcher and the reference read them.
Each backend must report a failure with that failure's text and its exception type, and the
C++ texts must be the Python table's."""

from __future__ import annotations

import pytest
import torch
from nmode_backends import require_available

import odekern
from odekern.ops.nmode_solve import failures
from odekern.ops.nmode_solve.op import raise_as_solve_failure
from odekern.solvers import NonFiniteError, SolveError

# A value each language prints alike (C++'s operator<< and Python's str), and a count.
VALUE, COUNT = 0.5, 7


def sample_text(failure: failures.Failure, value: float = VALUE, count: int = COUNT) -> str:
    numbers = {name: (count if failures.FIELD_TYPES[name] in ("int", "int64_t") else value)
               for name in failure.fields}
    return failure.text(**numbers)


@pytest.mark.parametrize("failure", failures.FAILURES, ids=lambda f: f.name)
def test_each_text_is_recognised_as_its_own_failure_only(failure):
    for value, count in ((VALUE, COUNT), (-1.25e-300, 10**9), (float("inf"), 0), (float("nan"), 1)):
        text = sample_text(failure, value, count)
        assert failures.failure_of(text) is failure, text
        # PyTorch appends the C++ stack to a kernel's message with TORCH_SHOW_CPP_STACKTRACES=1.
        assert failures.failure_of(text + "\nException raised from f at x.cpp:1") is failure
    assert failures.failure_of(sample_text(failure) + " and more") is None
    assert failures.failure_of("prefix " + sample_text(failure)) is None


def test_names_are_unique_and_fields_have_cxx_types():
    assert len({f.name for f in failures.FAILURES}) == len(failures.FAILURES)
    assert len({f.template for f in failures.FAILURES}) == len(failures.FAILURES)
    for failure in failures.FAILURES:
        assert set(failure.fields) <= set(failures.FIELD_TYPES), failure.name
        assert failure.text(**dict.fromkeys(failure.fields, 1)).startswith("nmode_solve: ")


def test_every_failing_status_has_a_message_and_ok_has_none():
    assert failures.status_failure(failures.Status.OK, 5) is None
    assert set(failures.PER_ELEMENT) == set(failures.Status) - {failures.Status.OK}
    for status, failure in failures.PER_ELEMENT.items():
        exc = failures.status_failure(int(status), 5)
        assert type(exc) is failure.error and str(exc) == failure.text(max_num_steps=5)
    exc = failures.status_failure(42, 5)
    assert type(exc) is RuntimeError and str(exc) == failures.UNKNOWN_STATUS.text(status=42)


def test_types_follow_odeint():
    """A step budget or an underflowing step is a SolveError, as odeint's failed solves are;
    NaN/inf is its NonFiniteError; the fixed grid's up-front budget check stays a plain
    RuntimeError (no solve started)."""
    assert failures.PER_ELEMENT_TOO_MANY_STEPS.error is SolveError
    assert failures.GLOBAL_STEP_UNDERFLOW.error is SolveError
    assert all(f.error is NonFiniteError for f in failures.FAILURES if "non-finite" in f.template)
    assert failures.FIXED_GRID_TOO_MANY_STEPS.error is RuntimeError


@pytest.mark.parametrize("failure", failures.FAILURES, ids=lambda f: f.name)
def test_a_kernels_runtime_error_is_raised_with_the_failures_type(failure):
    text = sample_text(failure)
    if failure.error is RuntimeError:
        raise_as_solve_failure(RuntimeError(text))  # already its type: returns
        return
    with pytest.raises(failure.error) as info:
        raise_as_solve_failure(RuntimeError(text))
    assert str(info.value) == text


def test_other_errors_are_left_alone():
    raise_as_solve_failure(RuntimeError("nmode_solve: something else entirely"))
    raise_as_solve_failure(RuntimeError("CUDA error: an illegal memory access was encountered"))


@pytest.mark.parametrize("failure", failures.FAILURES, ids=lambda f: f.name)
def test_the_cxx_kernels_words_are_the_tables(testing_ops, failure):
    assert testing_ops.nmode_failure_text(failure.name, COUNT, VALUE) == sample_text(failure)


@pytest.mark.parametrize("status", [*failures.Status, 9])
def test_the_cxx_status_messages_are_the_tables(testing_ops, status):
    exc = failures.status_failure(int(status), COUNT)
    assert testing_ops.nmode_status_message(int(status), COUNT) == ("" if exc is None else str(exc))


Y = torch.linspace(0.1, 0.9, 12, dtype=torch.float64)
SOLVES = {
    "global step budget": (failures.GLOBAL_TOO_MANY_STEPS,
                           dict(method="dopri5", rtol=1e-12, atol=1e-12, max_num_steps=2)),
    "per-element step budget": (failures.PER_ELEMENT_TOO_MANY_STEPS,
                                dict(method="dopri5", control="per_element", rtol=1e-12, atol=1e-12,
                                     max_num_steps=2)),
    "fixed grid budget": (failures.FIXED_GRID_TOO_MANY_STEPS,
                          dict(method="euler", step_size=0.01, max_num_steps=50)),
    # Explicit Euler at dt = 10 multiplies y by -9 per step: it overflows long before t1.
    "explicit method overflowing": (failures.NON_FINITE_Y1,
                                    dict(method="euler", step_size=10.0, max_num_steps=10**4)),
}


@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # NumPy, in the Triton interpreter
@pytest.mark.parametrize("solve", SOLVES)
def test_every_backend_reports_a_failure_in_the_tables_words(backend, solve):
    failure, options = SOLVES[solve]
    t1 = 5000.0 if failure is failures.NON_FINITE_Y1 else 1.0
    with pytest.raises(failure.error) as info:
        odekern.nmode_solve(Y, Y, 0.0, t1, backend=backend, **options)
    assert failures.failure_of(str(info.value)) is failure, str(info.value)


def test_the_cxx_bindings_own_budget_check_speaks_the_tables_words():
    """The C++ op checks the fixed grid's budget itself for callers of torch.ops.odekern_C that
    skip odekern.nmode_solve's check."""
    require_available("cpu")
    with pytest.raises(RuntimeError) as info:
        torch.ops.odekern_C.nmode_solve_fwd(Y, Y, 0.0, 1.0, "euler", 0.01, 1e-6, 1e-6, "global", 50, False)
    assert failures.failure_of(str(info.value)) is failures.FIXED_GRID_TOO_MANY_STEPS, str(info.value)
