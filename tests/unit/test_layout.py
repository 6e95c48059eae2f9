"""The bucket layout has one home, gallop.layout: no other source file spells a key prefix
or an artifact's file name, so that moving one is a change in one place."""

from __future__ import annotations

import ast
from pathlib import Path

from gallop import layout

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("shared", "functions", "training_jobs", "infra")
HOME = ROOT / "shared" / "gallop" / "layout.py"

PREFIXES = [
    v for k, v in vars(layout).items() if k.endswith("_PREFIX") or k == "QUARANTINED_UPLOAD"
]
FILES = [v for k, v in vars(layout).items() if k.endswith("_FILE")]


def spells_layout(text: str) -> bool:
    """A string that is (or builds) a key or a file name of the layout: one that starts
    with a prefix, is a file name, or ends in one (`prefix + "/manifest.json"`)."""
    return (
        any(text.startswith(prefix) for prefix in PREFIXES)
        or any(text == name or text.endswith("/" + name) for name in FILES)
        or text.endswith(".explain.json")
    )


def docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def layout_literals(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skip = docstrings(tree)
    return [
        f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in skip
        and spells_layout(node.value)
    ]


def test_the_layout_names_what_it_must() -> None:
    assert "raw/" in PREFIXES and "models/" in PREFIXES and "aliases/" in PREFIXES
    assert {"manifest.json", "model.onnx", "report.json", "data.parquet"} <= set(FILES)
    assert spells_layout("curated/") and spells_layout("manifest.json")
    assert not spells_layout("/v1/models/{id}") and not spells_layout("a model.onnx file")


def test_no_key_or_artifact_file_name_is_spelled_outside_the_layout_module() -> None:
    found = [
        literal
        for source in SOURCES
        for path in sorted((ROOT / source).rglob("*.py"))
        if path != HOME
        for literal in layout_literals(path)
    ]
    assert found == [], "use gallop.layout instead of:\n" + "\n".join(found)
