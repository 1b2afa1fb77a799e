"""Tensors reachable from an ODE function that the adjoint would leave without a gradient.

The continuous adjoint differentiates only ``y0``, ``t`` and ``adjoint_params``. A tensor that
``func`` uses and that requires grad -- a plain tensor attribute, a submodule's parameter left
out of an explicit ``adjoint_params``, a tensor captured by a closure -- silently gets no
gradient (torchdiffeq gives none either), so a model part the user means to train never
trains. ``odeint_adjoint`` warns once per such tensor, naming it; so does the checkpointed
gradient given an explicit ``adjoint_params``. Without one, the checkpointed gradient
differentiates every tensor found here, as backpropagation would, and so does ``ODEBlock``'s
adjoint (``differentiable_tensors``).

The search follows module parameters, buffers and submodules, plain attributes, bound
methods' ``self``, closures, the globals a function's code names, ``functools.partial`` and
lists/tuples/dicts, a few levels deep; it never calls anything.
"""

from __future__ import annotations

import functools
import types
import weakref
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from odekern._warnings import warn_caller

Tensor = torch.Tensor

_MAX_DEPTH = 6
_MAX_OBJECTS = 10_000
# Attributes every nn.Module has: its registries are walked explicitly, the rest is bookkeeping.
_MODULE_INTERNALS = frozenset(vars(nn.Module()))
# Tensors already warned about (by id; an entry disappears with its tensor).
_warned: weakref.WeakValueDictionary[int, Tensor] = weakref.WeakValueDictionary()


def tensors_requiring_grad(func: Callable) -> Iterator[tuple[str, Tensor]]:
    """``(name, tensor)`` for every tensor requiring grad reachable from ``func`` (see module doc)."""
    for name, obj in _reached(func):
        if isinstance(obj, Tensor) and obj.requires_grad:
            yield name, obj


def training_buffers(func: Callable) -> tuple[Tensor, ...]:
    """The buffers of every module in training mode reachable from ``func``, each once: what
    running ``func`` may update in place (a BatchNorm's running statistics)."""
    buffers = (b for _, obj in _reached(func) if isinstance(obj, nn.Module) and obj.training
               for b in obj._buffers.values() if b is not None)
    return tuple({id(b): b for b in buffers}.values())


def _reached(func: Callable) -> Iterator[tuple[str, object]]:
    """``(name, object)`` for every object the search reaches from ``func`` (see module doc);
    tensors are reached but not searched further."""
    seen: set[int] = set()
    stack: list[tuple[object, str, int]] = [(func, "func", 0)]
    while stack and len(seen) < _MAX_OBJECTS:
        obj, name, depth = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        yield name, obj
        if isinstance(obj, Tensor) or depth >= _MAX_DEPTH:
            continue
        stack.extend(reversed(list(_children(obj, name, depth + 1))))


def _children(obj: object, name: str, depth: int) -> Iterable[tuple[object, str, int]]:
    if isinstance(obj, nn.Module):
        for key, value in (*obj._parameters.items(), *obj._buffers.items(), *obj._modules.items()):
            if value is not None:
                yield value, f"{name}.{key}", depth
        for key, value in vars(obj).items():
            if key not in _MODULE_INTERNALS:
                yield value, f"{name}.{key}", depth
    elif isinstance(obj, types.MethodType):
        yield obj.__self__, f"{name}.__self__", depth
        yield obj.__func__, f"{name}.__func__", depth
    elif isinstance(obj, functools.partial):
        yield obj.func, f"{name}.func", depth
        for i, value in enumerate(obj.args):
            yield value, f"{name}.args[{i}]", depth
        for key, value in obj.keywords.items():
            yield value, f"{name}.keywords[{key!r}]", depth
    elif isinstance(obj, types.FunctionType):
        for var, cell in zip(obj.__code__.co_freevars, obj.__closure__ or ()):
            try:
                yield cell.cell_contents, f"{name}.<closure {var}>", depth
            except ValueError:  # an empty cell
                continue
        for var in sorted(_global_names(obj.__code__)):
            if var in obj.__globals__:
                yield obj.__globals__[var], f"{name}.<global {var}>", depth
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield value, f"{name}[{i}]", depth
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(key, str):
                yield value, f"{name}[{key!r}]", depth
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, types.ModuleType)):
        for key, value in vars(obj).items():
            yield value, f"{name}.{key}", depth


def differentiable_tensors(func: Callable) -> tuple[Tensor, ...]:
    """Every tensor requiring grad that backpropagation through ``func`` could reach, each once:
    its parameters (a module's, at any depth) and the tensors the search finds."""
    own = tuple(func.parameters()) if isinstance(func, nn.Module) else ()
    return distinct_requiring_grad((*own, *(tensor for _, tensor in tensors_requiring_grad(func))))


def distinct_requiring_grad(tensors: Iterable[Tensor]) -> tuple[Tensor, ...]:
    """The ``tensors`` that require grad, each once (by identity, in order): a tensor listed
    twice must not receive its gradient twice."""
    return tuple({id(t): t for t in tensors if t.requires_grad}.values())


def _global_names(code: types.CodeType) -> set[str]:
    """The global names ``code`` may read, its nested functions' and comprehensions' included
    (a name there is a global or an attribute; only those found in the globals are followed)."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def warn_unreached(func: Callable, adjoint_params: Iterable[Tensor], caller: str = "odeint_adjoint",
                   gradient: str = "the adjoint") -> None:
    """Warn (once per tensor) about tensors requiring grad that ``func`` reaches but that are
    not in ``adjoint_params``: ``gradient`` (the caller's) gives them no gradient."""
    given = {id(p) for p in adjoint_params}
    for name, tensor in tensors_requiring_grad(func):
        if id(tensor) in given or id(tensor) in _warned:
            continue
        _warned[id(tensor)] = tensor
        kind = "a parameter" if isinstance(tensor, nn.Parameter) else "a tensor"
        warn_caller(
            f"{caller}: {name} ({kind} of shape {tuple(tensor.shape)}) requires grad and is reachable "
            f"from func, but it is not in adjoint_params, so {gradient} gives it no gradient and it will not "
            "train. Pass it in adjoint_params, register it as an nn.Parameter of func, or detach it if it "
            "should stay fixed.")


__all__ = ["differentiable_tensors", "distinct_requiring_grad", "tensors_requiring_grad", "warn_unreached"]
