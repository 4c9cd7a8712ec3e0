"""The package's architecture, kept so: imports flow one way through the layers, with no cycles.

Every import counts, module-level or inside a function (a deferred import is still a
dependency; it only hides it from a reader), except those under ``if TYPE_CHECKING:``. The layer
of a module is that of the longest prefix in :data:`LAYERS`; a module may import from its own
layer or lower ones, never higher. The README's design notes draw the same map.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import adact

ROOT = Path(adact.__file__).parent

#: Lowest first. A module's layer is the entry with the longest matching prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("floor (no torch)", ("adact.errors", "adact.paper", "adact.dataspec", "adact.modelspec", "adact.lmconfig",
                          "adact.config")),
    ("leaf", ("adact.activations", "adact.reference")),
    ("kernels", ("adact.fused",)),
    ("core", ("adact.unit", "adact.act_factory", "adact.models", "adact.gpt", "adact.inputs", "adact.choice", "adact.surgery",
              "adact.data", "adact.model_zoo")),
    ("runs", ("adact.runs",)),
    ("training", ("adact.training",)),
    ("reporting", ("adact.reporting",)),
    ("experiments", ("adact.experiments",)),
    ("application", ("adact.cli", "adact._options", "adact.info", "adact.__main__", "adact")),
]

#: Modules allowed over 500 lines, each with its reason.
LONG_MODULES: dict[str, str] = {}

#: The floor is what ``adact --help`` reads: nothing heavy may be imported there.
FLOOR_STDLIB_ONLY = ("adact.errors", "adact.paper", "adact.dataspec", "adact.modelspec", "adact.lmconfig", "adact.config")


def _module_name(path: Path) -> str:
    parts = ["adact", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, outside ``if TYPE_CHECKING:`` blocks."""
    found: list[ast.Import | ast.ImportFrom] = []

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for orelse in child.orelse:
                    walk(orelse)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            walk(child)

    walk(tree)
    return found


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str | None:
    if node.level == 0:
        return node.module
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _deps(name: str, path: Path) -> tuple[set[str], set[str]]:
    """``(adact modules imported, top-level third-party packages imported)`` by module ``name``."""
    adact_deps: set[str] = set()
    external: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                target = a.name
                if target.split(".")[0] != "adact":
                    external.add(target.split(".")[0])
                    continue
                # "import adact.x.y" imports adact.x.y (and its parents, which are its packages).
                adact_deps.add(target if target in FILES else target.rsplit(".", 1)[0])
            continue
        base = _resolve(node, name, path.name == "__init__.py")
        if base is None:
            continue
        if base.split(".")[0] != "adact":
            external.add(base.split(".")[0])
            continue
        for a in node.names:
            # "from adact import fused" names the submodule; "from adact.x import f" the module adact.x.
            adact_deps.add(f"{base}.{a.name}" if f"{base}.{a.name}" in FILES else base)
    return adact_deps - {name}, external


GRAPH = {name: _deps(name, path)[0] for name, path in FILES.items()}


def _layer(module: str) -> int:
    best, index = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, index = len(prefix), i
    assert index >= 0, f"{module} is in no layer of tests/test_layout.py; add it to LAYERS"
    return index


def test_every_module_has_a_layer() -> None:
    for name in FILES:
        _layer(name)


def test_no_import_cycles_counting_deferred_imports() -> None:
    # A package's __init__ may import its own submodules (they are its parts, not its dependencies).
    graph = {n: {d for d in deps if not d.startswith(n + ".")} for n, deps in GRAPH.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            assert state.get(dep) != 1, f"import cycle: {' -> '.join([*path, node, dep])}"
            if dep not in state:
                visit(dep, [*path, node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_imports_follow_the_layer_order() -> None:
    wrong = [f"{name} ({LAYERS[_layer(name)][0]}) imports {dep} ({LAYERS[_layer(dep)][0]})"
             for name, deps in sorted(GRAPH.items()) for dep in sorted(deps)
             if _layer(dep) > _layer(name) and not dep.startswith(name + ".")]
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_the_floor_imports_only_the_standard_library() -> None:
    import sys

    for name in FLOOR_STDLIB_ONLY:
        _, external = _deps(name, FILES[name])
        heavy = sorted(e for e in external if e not in sys.stdlib_module_names and e != "__future__")
        assert not heavy, f"{name} imports {heavy}: the floor must stay light (adact --help reads it)"


@pytest.mark.parametrize("name", sorted(FILES))
def test_modules_stay_small(name: str) -> None:
    lines = len(FILES[name].read_text().splitlines())
    assert lines <= 500 or name in LONG_MODULES, f"{name} has {lines} lines; split it (or name it in LONG_MODULES)"


def test_the_checker_sees_deferred_imports(tmp_path: Path) -> None:
    """The checker itself: an import inside a function counts, one under TYPE_CHECKING does not."""
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from adact.cli import main\n"
                   "def f():\n    from adact.training import loop\n    import numpy\n")
    FILES.setdefault("adact.training.loop", ROOT / "training" / "loop.py")
    deps, external = _deps("adact.probe", src)
    assert deps == {"adact.training.loop"} and external == {"typing", "numpy"}


def test_fused_package_layout() -> None:
    from adact import fused
    from adact.fused import autograd, dispatch, inductor, native

    assert Path(fused.__file__).parent.name == "fused"
    assert (Path(native.__file__).parent / "csrc" / "adact_native.cpp").exists()
    assert dispatch.FusedKernelKey._fields == ("direction", "device", "dtype", "flags")
    assert callable(autograd.apply_fused) and callable(inductor.kernel_forward)
