"""No import circle among gallop's modules: a module's imports name what it builds on,
and nothing it builds on imports it back.

The graph holds every import of a gallop module by another: module-level ones, those
under `if TYPE_CHECKING:` (a circle only types see is still a circle in the design), and
those inside functions (an import moved into a function to dodge a circle still leaves
the circle). Imports inside functions that exist to keep a cold start lean or an optional
library optional are fine and common (the predict path imports no SQLAlchemy); none of
them closes a circle today. Should one ever have to, name it in LAZY with the reason,
and it is left out of the graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "shared" / "gallop"

# (importing module, imported module): function-local imports left out of the graph
LAZY: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in paths}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from package import module` imports the module
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                # a name imported from a module is an edge to the module
                while target and target not in graph:
                    target = target.rpartition(".")[0]
                inside = not target or target == name or name.startswith(target + ".")
                if not inside and (name, target) not in LAZY:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One path round each circle found (depth first, every module a root once)."""
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(node: str, path: list[str], on_path: set[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in on_path:
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in done:
                on_path.add(nxt)
                visit(nxt, [*path, nxt], on_path)
                on_path.discard(nxt)
        done.add(node)

    for root in sorted(graph):
        if root not in done:
            visit(root, [root], {root})
    return found


def test_the_graph_sees_gallops_imports() -> None:
    graph = import_graph()
    assert "gallop.storage" in graph["gallop.ingest.service"]
    assert "gallop.layout" in graph["gallop.serving.model"]
    # a TYPE_CHECKING import is an edge, and so is a function's
    assert "gallop.features.plan" in graph["gallop.features.state"]
    assert "gallop.metadata.db" in graph["gallop.serving.registry"]
    assert "gallop.serving.explain" in graph["gallop.serving.predict"]


def test_the_finder_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_among_gallops_modules() -> None:
    found = cycles(import_graph())
    assert found == [], "import circles:\n" + "\n".join(" -> ".join(c) for c in found)
