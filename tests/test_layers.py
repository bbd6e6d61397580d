"""The layers contract: imports go one way, core <- convert <- runner <- bench <- command line and demo.

Every import of every module of the package is read from its source (ast: at module top and inside functions
alike; code handed to a child process as a string is not an import of the module) and checked against the layer
it may use:

    core     qrun/*.py (registry, settings, errors, fsutil, gguf_file, measure, ...)  -> core
    convert  convert/ (qrun.convert)                                                   -> core, convert
    runner   runner/ (qrun.runner)                                                     -> core, convert, runner
    bench    bench/ (qrun.bench: bench, report, score, tune)                           -> core, convert, runner, bench
    demo     qrun/demo/, and cli: qrun/cli.py, qrun/__main__.py                        -> anything
"""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
ALLOWED = {
    "core": {"core"},
    "convert": {"core", "convert"},
    "runner": {"core", "convert", "runner"},
    "bench": {"core", "convert", "runner", "bench"},
    "demo": {"core", "convert", "runner", "bench", "demo", "cli"},
    "cli": {"core", "convert", "runner", "bench", "demo", "cli"},
}
# Imports that break the layers today, listed exactly (importer, imported module) so nothing new slips in. Each is
# being removed; when one is gone, delete its line (the last test fails while a line names an import that no
# longer exists). The list is meant to end up empty.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def _source_files() -> dict[str, Path]:
    """{module name: source file} of every module setup.cfg installs."""
    options = configparser.ConfigParser()
    options.read(ROOT / "setup.cfg", encoding="utf-8")
    lines = [line.split("=") for line in options["options"]["package_dir"].split("\n") if line.strip()]
    mapped = {name.strip(): ROOT / folder.strip() for name, folder in lines}
    folders: dict[str, Path] = {}
    for package in options["options"]["packages"].split():
        parent, _, last = package.rpartition(".")
        folders[package] = mapped.get(package) or folders[parent] / last
    files = {}
    for package, folder in folders.items():
        for path in sorted(folder.glob("*.py")):
            files[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return files


def layer_of(module: str) -> str | None:
    """The layer of a qrun module name, None for anything outside qrun."""
    parts = module.split(".")
    if parts[0] != "qrun":
        return None
    if len(parts) == 1:
        return "core"
    if parts[1] in ("convert", "runner", "bench", "demo"):
        return parts[1]
    return "cli" if parts[1] in ("cli", "__main__") else "core"


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(module: str, path: Path, *, runtime_only: bool = False) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import in the file; `from pkg import name` counts as
    importing pkg.name where that is a module of the package, else pkg. runtime_only: leave out the imports under
    `if TYPE_CHECKING:` (annotations only: never executed, so never part of an import cycle)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if runtime_only and _is_type_checking(child):
                continue
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from the module's own package upwards
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in child.names:
                    name = f"{base}.{alias.name}"
                    found.append((name if name in MODULES else base, child.lineno, in_function))
            visit(child, inner)

    visit(tree, False)
    return found


MODULES = _source_files()
IMPORTS = {module: _imports(module, path) for module, path in MODULES.items()}


def _violations() -> list[tuple[str, str, int]]:
    return [
        (module, target, line)
        for module, found in IMPORTS.items()
        for target, line, _local in found
        if layer_of(target) is not None and layer_of(target) not in ALLOWED[layer_of(module)]
    ]


def _import_cycles() -> list[list[str]]:
    """Every group of qrun modules that import each other, directly or around a loop (strongly connected
    components of the runtime import graph, imports inside functions included)."""
    graph = {
        module: sorted(
            {
                target
                for target, _line, _local in _imports(module, path, runtime_only=True)
                if target in MODULES and target != module
            }
        )
        for module, path in MODULES.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def connect(module: str) -> None:  # Tarjan's algorithm
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                connect(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in graph:
        if module not in index:
            connect(module)
    return cycles


def test_no_import_cycle():
    assert _import_cycles() == [], "qrun modules that import each other (break the loop: move the shared part down)"


def test_every_layer_has_modules():
    assert {layer_of(m) for m in MODULES} == set(ALLOWED)
    assert len(MODULES) > 50 and sum(map(len, IMPORTS.values())) > 300


@pytest.mark.parametrize(
    "module, target, layer_ok",
    [
        ("qrun.runner.engine", "qrun.convert.manifest", True),
        ("qrun.convert.pipeline", "qrun.runner.engine", False),
        ("qrun.registry", "qrun.cli", False),
        ("qrun.bench.run", "qrun.runner.engine", True),
        ("qrun.demo.cli", "qrun.bench.run", True),
        ("qrun.settings", "qrun.errors", True),
        ("qrun.bench.profile", "qrun.demo.checkpoints", False),
    ],
)
def test_the_rule_itself(module, target, layer_ok):
    assert (layer_of(target) in ALLOWED[layer_of(module)]) is layer_ok


def test_imports_follow_the_layers():
    new = [
        f"{module} imports {target} (line {line})"
        for module, target, line in _violations()
        if (module, target) not in KNOWN_VIOLATIONS
    ]
    assert not new, "imports against the layers (core <- convert <- runner <- bench <- cli/demo):\n" + "\n".join(new)


def test_the_known_violations_still_exist():
    # an entry whose import is gone must leave the list, so the list only shrinks to empty
    gone = KNOWN_VIOLATIONS - {(module, target) for module, target, _line in _violations()}
    assert not gone, f"these imports no longer exist; delete them from KNOWN_VIOLATIONS: {sorted(gone)}"


def test_no_test_module_imports_another():
    # shared helpers live in tests/helpers.py (and tiny_models.py, tokenizer_corpus.py, reference_forward.py)
    test_modules = {p.stem for p in TESTS.glob("test_*.py")}
    offenders = [
        f"{path.name} imports {target}"
        for path in sorted(TESTS.glob("*.py"))
        for target, _line, _local in _imports(path.stem, path)
        if target.split(".")[0] in test_modules
    ]
    assert not offenders, offenders
