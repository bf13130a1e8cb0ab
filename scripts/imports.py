"""The project's import graph, read from the source with `ast`: `python scripts/imports.py`.

Prints each module's imports of the project's own modules (`ablation`, `analysis`, `hydra_plugins`, `benchmarks`),
at module level or inside functions alike, then the import loops (strongly connected components of more than one
module) and the imports that cross a seam the wrong way. Exit status 1 if there is either. tests/test_seams.py
runs the same checks.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
PACKAGES = ("ablation", "analysis", "hydra_plugins", "benchmarks")
# What analysis/ may import from ablation/: the contract and the metric definitions, and the store's plumbing that
# every command opening the store shares (checking it, holding a signal around its calls, ending a run, sending what
# jobs could not); never training, its data or its models.
ANALYSIS_MAY_IMPORT = {
    *("ablation.contract", "ablation.metrics"),
    *("ablation.store", "ablation.interrupts", "ablation.tracking", "ablation.outbox"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((PROJECT / package).rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports, anywhere in it (`from a import b` counts as a.b where a.b is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    found.discard(module_name(path))
    return {name for name in found if "." in name or name not in PACKAGES}  # a bare package's __init__ is empty


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(path, set(found)) for name, path in found.items()}


def loops(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def wrong_way(edges: dict[str, set[str]]) -> list[str]:
    """Imports across a seam: ablation/ into analysis/ or hydra_plugins/, analysis/ into ablation/ internals."""
    crossings = []
    for source, targets in sorted(edges.items()):
        for target in sorted(targets):
            if source.startswith("ablation.") and target.startswith(("analysis", "hydra_plugins")):
                crossings.append(f"{source} -> {target}")
            if source.startswith("analysis") and target.startswith("ablation") and target not in ANALYSIS_MAY_IMPORT:
                crossings.append(f"{source} -> {target}")
    return crossings


def main() -> int:
    edges = graph()
    for source in sorted(edges):
        print(f"{source}: {', '.join(sorted(edges[source])) or '-'}")
    cycles, crossings = loops(edges), wrong_way(edges)
    print(f"\nimport loops: {len(cycles)}")
    for cycle in cycles:
        print("  " + " <-> ".join(cycle))
    print(f"imports across a seam the wrong way: {len(crossings)}")
    for crossing in crossings:
        print("  " + crossing)
    return 1 if cycles or crossings else 0


if __name__ == "__main__":
    sys.exit(main())
