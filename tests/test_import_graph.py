"""No import cycle between ``answer``, ``engines``, ``eval`` and ``kb``: read from the source with ``ast``
(lazy imports inside functions count for the packages, module-level ones for the modules), and each
package imported alone in a fresh interpreter."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGES = ("answer", "engines", "eval", "kb")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in (SRC / "qihuang").rglob("*.py")}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(module, at_module_level)`` for every ``qihuang`` module the file imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                     for a in node.names]
        else:
            continue
        out += [(n, id(node) in top) for n in names if n.split(".")[0] == "qihuang" and n in MODULES]
    return out


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGES else None


def graphs() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(modules of the four packages -> modules they import at module level, package -> packages)."""
    modules: dict[str, set[str]] = {}
    packages: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for name, path in MODULES.items():
        pkg = _package(name)
        if pkg is None:
            continue
        for target, top in _imports(path):
            if top and _package(target) is not None:
                modules.setdefault(name, set()).add(target)
            if _package(target) not in (None, pkg):
                packages[pkg].add(_package(target))
    return modules, packages


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"b"}}) is None


def test_no_cycle_between_the_packages_lazy_imports_included():
    _, packages = graphs()
    assert find_cycle(packages) is None, packages
    assert "eval" not in packages["answer"] and not packages["engines"] - {"kb"}


def test_no_module_level_import_cycle():
    modules, _ = graphs()
    assert len(modules) > 30  # the graph was read
    assert find_cycle(modules) is None


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_alone(package):
    done = subprocess.run([sys.executable, "-c", f"import qihuang.{package}"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(SRC)}, timeout=120)
    assert done.returncode == 0, done.stderr


def test_kb_never_imports_datagen():
    """Question understanding reads the phrasebook from ``qihuang.phrasebook``, not from data generation:
    no kb module imports datagen (lazy imports included), and training the intent detector's examples loads none."""
    found = [(name, target) for name, path in MODULES.items() if _package(name) == "kb"
             for target, _ in _imports(path) if target.split(".")[:2] == ["qihuang", "datagen"]]
    assert found == []
    code = ("import sys, qihuang.kb.intent as intent; intent.training_examples(); "
            "sys.exit(sorted(m for m in sys.modules if m.startswith('qihuang.datagen')) or 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(SRC)}, timeout=120)
    assert done.returncode == 0, done.stderr
