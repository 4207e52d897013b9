"""The package's shape: every module imports alone in a fresh interpreter, the module graph has no cycle, imports
inside functions are rare and say why, and every error is a `ShineError` of the builtin kind it stands for."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import peft_shine
from peft_shine import errors


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
             "NonFiniteWeightsError": FloatingPointError}
    assert set(errors.__all__) == {*kinds, "ShineError"}
    for name, builtin in kinds.items():
        error = getattr(errors, name)
        assert issubclass(error, errors.ShineError) and issubclass(error, builtin), name
        assert getattr(peft_shine, name) is error  # all exported at the top level
