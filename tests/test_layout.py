"""The package's module graph: no import cycles among module-level imports."""

from __future__ import annotations

import ast
from pathlib import Path

import adact

ROOT = Path(adact.__file__).parent


def _module_name(path: Path) -> str:
    parts = ["adact", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """adact modules imported at module level (not inside functions or TYPE_CHECKING blocks)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def test_no_import_cycles() -> None:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {name: _imports(path, set(files)) - {name} for name, path in files.items()}
    # A package's __init__ may import its own submodules (they are its parts, not its dependencies).
    for name in graph:
        graph[name] = {dep for dep in graph[name] if not dep.startswith(name + ".")}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            assert state.get(dep) != 1, f"import cycle: {' -> '.join([*path, node, dep])}"
            if dep not in state:
                visit(dep, [*path, node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_fused_package_layout() -> None:
    from adact import fused
    from adact.fused import autograd, dispatch, inductor, native

    assert Path(fused.__file__).parent.name == "fused"
    assert (Path(native.__file__).parent / "csrc" / "adact_native.cpp").exists()
    assert dispatch.FusedKernelKey._fields == ("direction", "device", "dtype", "flags")
    assert callable(autograd.fused_adact) and callable(inductor.kernel_forward)
