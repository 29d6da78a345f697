"""Layering rules: protocol/ is standard library only; poolctl never imports the daemon."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_protocol_imports_only_the_standard_library() -> None:
    files = list((ROOT / "daemon/poold/protocol").glob("*.py"))
    assert files
    for f in files:
        third_party = {n for n in imports(f) if n not in sys.stdlib_module_names and n != "__future__"}
        assert not third_party, f"{f.name} imports {third_party}"
        assert "asyncio" not in imports(f), f"{f.name} imports asyncio"


def test_poolctl_uses_only_the_standard_library() -> None:
    files = list((ROOT / "ctl/poolctl").glob("*.py"))
    assert files
    for f in files:
        third_party = {n for n in imports(f) if n not in sys.stdlib_module_names and n not in ("__future__", "poolctl")}
        assert not third_party, f"{f.name} imports {third_party}"


def test_only_backend_touches_psycopg_connection_internals() -> None:
    for f in (ROOT / "daemon/poold").rglob("*.py"):
        if f.name != "backend.py":
            text = f.read_text()
            assert ".pgconn" not in text and "_expire_at" not in text, f.name
