"""The package's import graph has no circles: every module of slimprune/ can be read bottom-up."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parent.parent / "slimprune"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_graph() -> nx.DiGraph:
    """Edges module -> imported slimprune module, for every import statement anywhere in a module."""
    modules = _modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in targets:
                # ``import a.b.c`` imports a, a.b and a.b.c; the deepest known one is the edge
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph.add_edge(name, target)
    return graph


def test_import_graph_sees_the_known_edges() -> None:
    graph = import_graph()
    assert graph.has_edge("slimprune", "slimprune._prune")
    assert graph.has_edge("slimprune._graph", "slimprune.rules")
    assert graph.has_edge("slimprune.rules", "slimprune.rules.layers")


def test_no_module_of_slimprune_imports_a_module_that_imports_it_back() -> None:
    cycles = list(nx.simple_cycles(import_graph()))
    assert not cycles, "import circles in slimprune/:\n" + "\n".join(" -> ".join(c + [c[0]]) for c in cycles)


def test_docs_concepts_says_where_every_module_lives() -> None:
    text = (PACKAGE.parent / "docs" / "concepts.md").read_text()
    unnamed = [p.relative_to(PACKAGE).as_posix() for p in sorted(PACKAGE.rglob("*.py"))
               if p.name not in ("__init__.py", "__main__.py") and p.name not in text]
    assert not unnamed, f"docs/concepts.md does not say what these modules hold: {unnamed}"
