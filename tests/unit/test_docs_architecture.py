"""docs/architecture.md keeps up with the code: every module, C file and twin switch is in it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "daemon" / "poold"
DOC = (ROOT / "docs" / "architecture.md").read_text()


def test_every_module_and_c_file_is_named() -> None:
    files = [p for p in PACKAGE.rglob("*") if p.suffix in (".py", ".c") and p.name != "__init__.py"]
    assert len(files) > 20
    missing = [str(p.relative_to(PACKAGE)) for p in files
               if f"`{p.relative_to(PACKAGE)}`" not in DOC and f"`{p.name}`" not in DOC]
    assert missing == []


def test_every_implementation_switch_is_named() -> None:
    switches = set()
    for p in PACKAGE.rglob("*.py"):
        switches |= set(re.findall(r"os\.environ\.get\(\"(POOLD_[A-Z_]+)\"\)", p.read_text()))
    assert {"POOLD_RELAY_CORE", "POOLD_FRAME_SCANNER", "POOLD_SOCKET_IO"} <= switches
    assert [s for s in sorted(switches) if s not in DOC] == []


def test_named_identifiers_are_in_the_code() -> None:
    """Each `Class.method`, `module.function` or `name` the doc names is one the code defines or calls
    (a function, class, attribute, C function, keyword argument or log event), so a rename shows here."""
    code = "\n".join(p.read_text() for p in PACKAGE.rglob("*") if p.suffix in (".py", ".c"))
    known = set(re.findall(r"(?:def|class) (\w+)", code))  # Python definitions
    known |= set(re.findall(r"(?m)^\s*(?:self\.)?(\w+)(?::[^=\n]+)? = ", code))  # attributes and names
    known |= set(re.findall(r"\.(\w+)\(", code))  # methods called (psycopg's, asyncio's)
    known |= set(re.findall(r"\b(\w+)=", code))  # keyword arguments: log fields
    known |= set(re.findall(r"\"(\w+)\"", code))  # log events, slot names
    known |= set(re.findall(r"(?m)^(\w+)\(", code))  # C functions (name at the start of a line)
    known |= {p.stem for p in PACKAGE.rglob("*.c")}  # the C extension modules
    named = set(re.findall(r"`(?:[A-Za-z_]+\.)?([a-z_][a-z0-9_]*)`", DOC))
    named = {n for n in named if not n.startswith(("poold_", "db_")) and "_" in n}  # metrics; plain words
    assert len(named) > 40
    assert sorted(named - known) == []
