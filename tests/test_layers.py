"""The package's layers (docs/design.md, "Layers"): no import cycle, no import from a lower layer
into a higher one, no odekern import hidden inside a function, and every module importable on
its own (in a process that has imported torch and nothing of odekern).

The graph is read from the source (ast), so it sees every module-level import, including ones
that a particular import order would never execute first.
"""

from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "odekern"

# Lowest first. A module may import modules of its own layer or of lower ones. The solver core
# (tableaus, controllers, state, the stage interface, the methods) is below the kernels: the
# kernels build on its data and register their fused stages into it (solvers.stages owns that
# interface), so the core never imports a kernel package.
LAYERS = (
    ("odekern._warnings", "odekern._choices", "odekern._ext", "odekern.dispatch"),
    ("odekern.solvers",),
    ("odekern.ops",),
    ("odekern.odeint", "odekern.adjoint", "odekern.checkpoint", "odekern.dense", "odekern.events",
     "odekern.reachable", "odekern.module_state"),
    ("odekern.nn",),
    ("odekern.testing",),
)

# (module, imported package) pairs allowed inside a function: an optional dependency, imported
# when it is used and not at ``import odekern`` time.
LAZY_ALLOWED = {("odekern.dispatch", "triton"), ("odekern.solvers.scipy_solver", "scipy")}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The odekern module ``name`` refers to (a module, or the package it is an attribute of)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> tuple[set[str], list[tuple[int, str]]]:
    """(odekern modules imported at module level, [(line, name)] of imports inside functions)."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    top: set[str] = set()
    nested: list[tuple[int, str]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [f"{child.module}.{a.name}" for a in child.names]
            for name in names:
                if in_function:
                    nested.append((child.lineno, name))
                elif name.split(".")[0] == "odekern":
                    target = _resolve(name)
                    if target is not None and target != module:
                        top.add(target)
            visit(child, inner)

    visit(tree, False)
    return top, nested


GRAPH = {m: _imports(m)[0] for m in MODULES}


def _layer(module: str) -> int | None:
    for level, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    return None


def test_every_module_has_a_layer():
    assert [m for m in MODULES if m != "odekern" and _layer(m) is None] == []


def _upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return [(m, t) for m, targets in graph.items() if m != "odekern" for t in targets
            if t != "odekern" and _layer(t) > _layer(m)]


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def walk(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            # A package's own __init__ importing its submodules is how packages load, not a cycle
            # back into it from the submodule.
            if module.startswith(target + "."):
                continue
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = walk(target)
                if found:
                    return found
        path.pop()
        state[module] = 2
        return None

    for module in graph:
        if module not in state:
            cycle = walk(module)
            if cycle:
                return cycle
    return None


def test_no_import_from_a_lower_layer_into_a_higher_one():
    assert _upward(GRAPH) == [], "modules importing from a higher layer"


def test_no_package_module_imports_the_top_level_package():
    # `import odekern` from inside the package would make every module depend on all of them.
    assert [m for m, targets in GRAPH.items() if m != "odekern" and "odekern" in targets] == []


def test_no_import_cycle():
    cycle = _find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_odekern_import_inside_a_function():
    hidden = [(m, line, name) for m in MODULES for line, name in _imports(m)[1]
              if (m, name.split(".")[0]) not in LAZY_ALLOWED]
    assert hidden == [], "imports inside functions (move them to module level): " + repr(hidden)


def test_the_checks_above_can_fail(tmp_path):
    # The solver core importing a kernel package, once at module level and once in a function.
    module = "odekern.solvers.stages"
    probe = tmp_path / "probe.py"
    late_imports = "\nfrom odekern.ops.rk_stage import dispatch\n\ndef _late():\n    from odekern.nn import ODEBlock\n"
    probe.write_text(MODULES[module].read_text() + late_imports)
    saved = MODULES[module]
    MODULES[module] = probe
    try:
        top, nested = _imports(module)
    finally:
        MODULES[module] = saved
    graph = {**GRAPH, module: top}
    assert (module, "odekern.ops.rk_stage.dispatch") in _upward(graph)
    assert _find_cycle(graph) is not None  # rk_stage.dispatch imports solvers.stages
    assert [name for _, name in nested] == ["odekern.nn.ODEBlock"]


# Imports each module named on the command line in a process of its own, forked from one that has
# imported torch only: a module then starts from no odekern module loaded, as in a fresh
# interpreter, without paying torch's second of import per module. Prints the failures as JSON.
_IMPORT_EACH_ALONE = r"""
import json, os, sys, traceback
import torch
failures = []
for module in sys.argv[1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            __import__(module)
            os._exit(0)
        except BaseException:
            os.write(write, traceback.format_exc()[-2000:].encode())
            os._exit(1)
    os.close(write)
    with os.fdopen(read) as pipe:
        message = pipe.read()
    if os.waitpid(pid, 0)[1] != 0:
        failures.append([module, message])
print(json.dumps(failures))
"""


def _import_each_alone(modules: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _IMPORT_EACH_ALONE, *modules], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=PACKAGE.parent)


def test_every_module_imports_alone_in_a_fresh_interpreter():
    modules = sorted(MODULES)
    drivers = [_import_each_alone(modules[k::2]) for k in range(2)]  # one per core
    failures = []
    for driver in drivers:
        out, err = driver.communicate(timeout=600)
        assert driver.returncode == 0, err[-2000:]
        failures += json.loads(out)
    assert failures == [], failures


def test_a_module_that_fails_to_import_alone_is_reported():
    driver = _import_each_alone(["odekern.solvers.state", "odekern.no_such_module"])
    out, err = driver.communicate(timeout=600)
    assert driver.returncode == 0, err[-2000:]
    [(module, message)] = json.loads(out)
    assert module == "odekern.no_such_module" and "ModuleNotFoundError" in message
