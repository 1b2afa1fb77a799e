"""Every public entry point, every argument, a dozen values of the wrong kind or range: each call
either runs or raises a TypeError / ValueError / RuntimeError whose message names the argument,
never an error from deep inside (Python's "'int' object is not iterable", PyTorch's size
messages, float()'s complaints)."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from solver_problems import Decay

import odekern

F64 = torch.float64

WRONG = {
    "list": [1], "str": "x", "object": object(), "int": 3, "float": 1.5, "tuple": (1, 2), "dict": {"a": 1},
    "array": np.array([1.0, 2.0]), "matrix": torch.tensor([[1.0]]), "bool": True, "negative": -1,
    "nan": float("nan"),
}

# Texts of errors raised inside Python, NumPy or PyTorch rather than by a check of the argument.
INTERNAL = re.compile(r"has no attribute|not subscriptable|unsupported operand|list indices|object is not "
                      r"(callable|iterable)|not iterable|positional argument|unexpected keyword|can't multiply|"
                      r"must be real number|argument must be a string|invalid data type|could not convert|"
                      r"only one element tensors|not supported between|Boolean value of Tensor|size of tensor|"
                      r"out of bounds|new\(\)")


def _y0():
    return torch.ones(2, dtype=F64, requires_grad=True)


def _t():
    return torch.tensor([0.0, 1.0], dtype=F64)


def _event(t, y):
    return y[0] - 0.5


def _odeint(**kw):
    args = dict(func=Decay(), y0=_y0(), t=_t(), rtol=1e-6, atol=1e-8) | kw
    return odekern.odeint(**args)


def _odeint_adjoint(**kw):
    args = dict(func=Decay(), y0=_y0(), t=_t(), rtol=1e-6, atol=1e-8) | kw
    out = odekern.odeint_adjoint(**args)
    (out[1] if isinstance(out, tuple) else out).sum().backward()  # the backward's settings are used there


def _odeint_dense(**kw):
    args = dict(y0=_y0().detach(), t0=torch.tensor(0.0, dtype=F64), t1=torch.tensor(1.0, dtype=F64)) | kw
    odekern.odeint_dense(Decay(), **args)(torch.as_tensor(args["t1"], dtype=F64))  # inside any span


def _odeint_event(**kw):
    args = dict(y0=_y0().detach(), t0=torch.tensor(0.0, dtype=F64), event_fn=_event) | kw
    return odekern.odeint_event(Decay(), **args)


def _ode_block(**kw):
    return odekern.ODEBlock(Decay(), **kw)(torch.ones(2, 1, dtype=F64))


def _nmode_solve(**kw):
    args = dict(t0=0.0, t1=1.0) | kw
    return odekern.nmode_solve(torch.rand(2, 3), torch.rand(2, 3), **args)


ENTRY_POINTS = {
    "odeint": (_odeint, ["func", "y0", "t", "rtol", "atol", "method", "options", "event_fn"]),
    "odeint_adjoint": (_odeint_adjoint, ["func", "y0", "t", "rtol", "atol", "method", "options", "adjoint_rtol",
                                         "adjoint_atol", "adjoint_method", "adjoint_options", "adjoint_params"]),
    "odeint_dense": (_odeint_dense, ["y0", "t0", "t1", "rtol", "atol", "method", "options"]),
    "odeint_event": (_odeint_event, ["y0", "t0", "event_fn", "method", "options"]),
    "ODEBlock": (_ode_block, ["t", "method", "step_size", "rtol", "atol", "gradient", "options", "checkpoints"]),
    "nmode_solve": (_nmode_solve, ["t0", "t1", "method", "step_size", "rtol", "atol", "control", "gradient",
                                   "max_num_steps", "backend"]),
}

CASES = [(entry, arg, kind) for entry, (_, args) in ENTRY_POINTS.items() for arg in args for kind in WRONG]


@pytest.mark.parametrize("entry, arg", sorted({(e, a) for e, a, _ in CASES}))
def test_wrong_values_run_or_are_named(entry, arg):
    call = ENTRY_POINTS[entry][0]
    unclear = []
    for kind, value in WRONG.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                call(**{arg: value})
        except (TypeError, ValueError, RuntimeError) as exc:
            text = str(exc)
            if INTERNAL.search(text) or arg.split("_")[-1] not in text:
                unclear.append(f"{arg}={kind}: {type(exc).__name__}: {text}")
    assert not unclear, "\n".join(unclear)
