"""The package's shape: every module imports alone in a fresh interpreter, the module graph has no cycle and no
upward edge (the core never imports what is built on it), imports inside functions are rare and say why, and every
error is a `ShineError` of the builtin kind it stands for."""

from __future__ import annotations

import ast
import builtins
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import peft_shine
from peft_shine import _moved, errors
from peft_shine.adapters import generation, store
from peft_shine.storage import revisions


PACKAGE = Path(peft_shine.__file__).resolve().parent
MODULES = sorted(
    ".".join(("peft_shine", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
    for path in PACKAGE.rglob("*.py") if path.name != "__main__.py"
)
OPTIONAL = ("gradio",)  # the [demo] extra: modules that need it are imported only when it is installed


def module_imports(module: str) -> set[str]:
    """The peft_shine modules ``module`` imports at import time (top level and ``if`` blocks, not functions;
    ``TYPE_CHECKING`` blocks excluded)."""
    path = PACKAGE.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.If | ast.Try | ast.With):
                visit([child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)])
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("peft_shine"):
                for alias in node.names:
                    name = f"{node.module}.{alias.name}"
                    found.add(name if name in MODULES else node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("peft_shine"))

    visit(ast.parse(path.read_text()).body)
    return found - {module}


def test_the_module_graph_has_no_cycle() -> None:
    graph = {module: module_imports(module) for module in MODULES}
    state: dict[str, int] = {}

    def walk(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycle = trail[trail.index(target):] + [target] if target in trail else [module, target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if state.get(target) is None:
                walk(target, [*trail, target])
        state[module] = 2

    for module in MODULES:
        if module not in state:
            walk(module, [module])


def test_a_cycle_would_be_found() -> None:
    assert "peft_shine.modeling_shine" in module_imports("peft_shine.auto")  # the parser sees real edges


# Each module's layer: a module imports (at import time) only modules of its own layer or below. The first matching
# prefix wins. The core is layers 0-4: errors, storage/, hypernetwork/, adapters/, then ShineModel and its mixins.
LAYERS = {
    "peft_shine.errors": 0,
    "peft_shine._moved": 0,
    "peft_shine.storage": 1,
    "peft_shine.hypernetwork": 2,
    "peft_shine.adapters": 3,
    "peft_shine.loading": 4,
    "peft_shine.modeling_shine": 4,
    "peft_shine.auto": 4,
    "peft_shine.prompting": 5,
    "peft_shine.qa_data": 5,
    "peft_shine.shipped": 6,
    "peft_shine.hub": 6,
    "peft_shine.training": 7,
    "peft_shine.evaluation": 8,
    "peft_shine.demo": 9,
    "peft_shine.cli": 10,
    "peft_shine": 4,  # the package's __init__: the public names of the core
}


def layer(module: str) -> int:
    """The layer of a module (see `LAYERS`)."""
    return next(rank for prefix, rank in LAYERS.items() if module == prefix or module.startswith(prefix + "."))


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import-time edge from a module to one of a higher layer."""
    return [f"{module} -> {target}" for module, targets in sorted(graph.items()) for target in sorted(targets)
            if layer(target) > layer(module)]


def test_no_module_imports_a_higher_layer() -> None:
    graph = {module: module_imports(module) for module in MODULES}
    assert not upward_imports(graph), "upward imports:\n" + "\n".join(upward_imports(graph))


def test_an_upward_import_would_be_found() -> None:
    graph = {"peft_shine.modeling_shine": {"peft_shine.hub.push", "peft_shine.adapters.store"},
             "peft_shine.adapters.export": {"peft_shine.storage.io_utils", "peft_shine.training.trainer"}}
    assert upward_imports(graph) == ["peft_shine.adapters.export -> peft_shine.training.trainer",
                                     "peft_shine.modeling_shine -> peft_shine.hub.push"]
    assert {layer(module) for module in MODULES} <= set(LAYERS.values())  # every module has a layer


def test_the_package_imports_only_module_paths_that_exist() -> None:
    """Old module paths (`peft_shine._moved`) are for users' code; the package itself uses the folders."""
    stale = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            stale += [f"{path.relative_to(PACKAGE)}: {name}" for name in names
                      if name.startswith("peft_shine") and name != "peft_shine" and name not in MODULES]
    assert not stale, "imports of module paths that do not exist:\n" + "\n".join(stale)


def test_old_module_paths_import_as_the_moved_modules() -> None:
    assert importlib.import_module("peft_shine.adapter_store") is store
    assert importlib.import_module("peft_shine.hub.revisions") is revisions
    from peft_shine.adapters import MAX_CONTEXTS_PER_CALL  # the names of the old module peft_shine.adapters

    assert MAX_CONTEXTS_PER_CALL == generation.MAX_CONTEXTS_PER_CALL
    for old, new in _moved.MOVED_MODULES.items():
        assert new in MODULES and old not in MODULES, old


def test_an_old_module_path_warns_with_the_new_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "peft_shine.contexts", raising=False)  # first import in this process
    with pytest.warns(FutureWarning, match=r"peft_shine\.contexts moved to peft_shine\.adapters\.contexts"):
        module = importlib.import_module("peft_shine.contexts")
    assert module is importlib.import_module("peft_shine.adapters.contexts")


FRESH_IMPORTS = """
import importlib, sys
for module in sys.argv[1:]:
    for name in [n for n in sys.modules if n == "peft_shine" or n.startswith("peft_shine.")]:
        del sys.modules[name]  # each module alone: none of ours loaded before it (torch & co. stay, for speed)
    try:
        importlib.import_module(module)
    except Exception as error:
        print(f"{module}: {type(error).__name__}: {error}")
"""


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    modules = [m for m in MODULES if not m.startswith("peft_shine.demo.app")]  # gradio: an optional extra
    benchmarks = PACKAGE.parents[1] / "benchmarks"
    if benchmarks.is_dir():  # a checkout: the benchmarks must keep up with the package they measure
        modules += sorted(f"benchmarks.{path.stem}" for path in benchmarks.glob("*.py") if path.stem != "__init__")
    result = subprocess.run([sys.executable, "-c", FRESH_IMPORTS, *modules], capture_output=True, text=True,
                            cwd=PACKAGE.parents[1], timeout=300)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr[-2000:]


def test_imports_inside_functions_say_why() -> None:
    unexplained = []
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Import | ast.ImportFrom):
                        line, first = lines[inner.lineno - 1], inner.lineno - 1
                        while first > 0 and lines[first - 1].strip().startswith(("from ", "import ")):
                            first -= 1  # a group of imports shares one reason
                        if not any("#" in text for text in lines[max(first - 1, 0):inner.lineno]):
                            unexplained.append(f"{path.relative_to(PACKAGE)}:{inner.lineno}: {line.strip()}")
    assert not unexplained, "imports inside functions need a one-line reason:\n" + "\n".join(unexplained)


def test_every_error_is_a_shine_error_of_its_builtin_kind() -> None:
    kinds = {"ContextError": ValueError, "UnsupportedModelError": ValueError, "BaseModelMismatchError": ValueError,
             "DemoError": ValueError, "CheckpointError": OSError, "TargetExistsError": FileExistsError,
             "AdapterSaveError": OSError, "PullError": OSError, "HubError": RuntimeError,
             "AdapterStateError": RuntimeError, "ChunkingError": ValueError, "CompositionError": ValueError,
             "ConfigError": ValueError, "DataError": ValueError, "ArgumentError": TypeError,
             "ModelStateError": RuntimeError, "AdapterNotFoundError": KeyError, "MissingFileError": FileNotFoundError,
             "StorageError": OSError, "NonFiniteWeightsError": FloatingPointError}
    assert set(errors.__all__) == {*kinds, "ShineError"}
    for name, builtin in kinds.items():
        error = getattr(errors, name)
        assert issubclass(error, errors.ShineError) and issubclass(error, builtin), name
        assert getattr(peft_shine, name) is error  # all exported at the top level


BUILTIN_ERRORS = {name for name in dir(builtins) if isinstance(getattr(builtins, name), type)
                  and issubclass(getattr(builtins, name), BaseException)}
ALLOWED_RAISES = {"SystemExit", "NotImplementedError"}  # a script's exit status; an abstract method


def bare_builtin_raises(source: str) -> list[tuple[int, str]]:
    """``(line, name)`` of every ``raise Builtin(...)`` / ``raise Builtin`` in ``source``, except `ALLOWED_RAISES`
    and ``AttributeError`` in a ``__getattr__`` (Python's protocol asks for exactly that)."""
    tree = ast.parse(source)
    getattr_lines = {line for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == "__getattr__"
                     for line in range(node.lineno, node.end_lineno + 1)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            raised = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if not isinstance(raised, ast.Name) or raised.id not in BUILTIN_ERRORS - ALLOWED_RAISES:
                continue
            if not (raised.id == "AttributeError" and node.lineno in getattr_lines):
                found.append((node.lineno, raised.id))
    return sorted(found)


def test_no_module_raises_a_bare_builtin_error() -> None:
    """Every error raised on purpose is a `ShineError` (each also its builtin): catching ``ShineError`` catches
    everything peft-shine refuses. Re-raising (``raise``, ``raise error``, ``raise type(error)(...)``) is fine."""
    bare = [f"{path.relative_to(PACKAGE)}:{line}: raise {name}" for path in sorted(PACKAGE.rglob("*.py"))
            for line, name in bare_builtin_raises(path.read_text())]
    assert not bare, "raise a peft_shine.errors class instead of a builtin:\n" + "\n".join(bare)


def test_a_bare_builtin_raise_would_be_found() -> None:
    source = ("def f(x):\n    if x:\n        raise ValueError('no')\n    raise ConfigError('fine')\n"
              "def __getattr__(name):\n    raise AttributeError(name)\n"
              "def g():\n    try:\n        f(1)\n    except ValueError as error:\n        raise error\n"
              "    raise KeyError\n")
    assert bare_builtin_raises(source) == [(3, "ValueError"), (12, "KeyError")]
