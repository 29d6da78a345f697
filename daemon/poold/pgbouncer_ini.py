"""PgBouncer's configuration file format, read as PgBouncer 1.25.2 reads it.

``parse_ini`` follows lib/usual/cfparser.c (comment lines, values to the end of
the line, 'quoted' keys, ``%include``) and ``parse_connstr`` the [databases]
connection strings of src/loader.c. Used by ``migrate``; pure, no I/O.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field


class IniError(ValueError):
    """A pgbouncer.ini that PgBouncer itself would refuse to load."""


@dataclass
class Ini:
    """The parsed file: sections of (key, value, line number), in file order."""

    sections: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)
    includes: list[str] = field(default_factory=list)


def parse_ini(text: str) -> Ini:
    """PgBouncer's own INI rules (lib/usual/cfparser.c): ``;`` and ``#`` comment lines,
    values run to the end of the line (no inline comments), keys may be 'quoted'."""
    ini = Ini()
    section: list[tuple[str, str, int]] | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("%include") and line[8:9].isspace():
            ini.includes.append(line[8:].strip())
            continue
        if line.startswith("["):
            if "]" not in line:
                raise IniError(f"line {lineno}: unterminated section header")
            name = line[1 : line.index("]")].strip().lower()
            section = ini.sections.setdefault(name, [])
            continue
        m = re.match(r"'([^']+)'|([A-Za-z0-9_.*-]+)", line)
        rest = line[m.end():].lstrip(" \t") if m else ""
        if m is None or not rest.startswith("="):
            raise IniError(f"line {lineno}: expected key = value")
        if section is None:
            raise IniError(f"line {lineno}: key outside a section")
        section.append((m.group(1) or m.group(2), rest[1:].strip(), lineno))
    return ini


def parse_connstr(text: str) -> list[tuple[str, str]]:
    """A [databases] value, as PgBouncer's cstr_get_pair reads it: key=value pairs,
    values either bare (up to a space) or in single quotes with '' for a quote."""
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return pairs
        m = re.compile(r"([A-Za-z0-9_]+)\s*=\s*").match(text, i)
        if m is None:
            raise IniError(f"syntax error in connection string near {text[i:]!r}")
        key, i = m.group(1).lower(), m.end()
        if i < n and text[i] == "'":
            i += 1
            value = []
            while True:
                if i >= n:
                    raise IniError(f"unterminated quote in connection string for {key}")
                if text[i] == "'":
                    if text[i + 1 : i + 2] == "'":
                        i += 1
                    else:
                        i += 1
                        break
                value.append(text[i])
                i += 1
            val = "".join(value)
        else:
            j = i
            while j < n and text[j] != " ":
                j += 1
            val, i = text[i:j], j
        if not val:
            raise IniError(f"empty value for {key} in connection string")
        pairs.append((key, val))


def int_value(value: str, key: str) -> int:
    """An integer as C's strtol(base 0) reads it: 0x.. hex, 0.. octal."""
    v = value.strip()
    try:
        if v.lower().startswith("0x"):
            return int(v, 16)
        if len(v) > 1 and v.startswith("0"):
            return int(v, 8)
        return int(v)
    except ValueError:
        raise IniError(f"{key}: not an integer: {value!r}") from None


def seconds(value: str, key: str) -> float:
    """A time setting: seconds, fractions allowed (cf_set_time_usec)."""
    try:
        v = float(value)
    except ValueError:
        raise IniError(f"{key}: not a number of seconds: {value!r}") from None
    if v < 0 or not math.isfinite(v):
        raise IniError(f"{key}: not a number of seconds: {value!r}")
    return v
