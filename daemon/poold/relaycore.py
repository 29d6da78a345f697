"""Which implementation of the relay's per-transaction path runs.

The hot path's state and steps live in four small base classes, each written
in Python next to the code that uses it (``stats.StatsCorePy`` and
``HistogramCorePy``, ``relay.ServerCorePy``, ``client.ClientCorePy``,
``pools.PoolCorePy``). ``_relaycore.c`` is the same four in C, for the common
case only; everything rare is Python in both. The C module is used when it was
built (``pip install`` builds it where a C compiler is found);
``POOLD_RELAY_CORE=python`` picks the Python classes anyway, as a diagnostic
and so that the tests can run both.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any


def _load() -> ModuleType | None:
    if os.environ.get("POOLD_RELAY_CORE") == "python":
        return None
    try:
        from . import _relaycore  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _relaycore


native = _load()
#: logged at startup
NAME = "c" if native is not None else "python"
#: the C core can call the native frame scanner through its C API rather than as methods
SCANNER_CAPI = bool(getattr(native, "SCANNER_CAPI", False))


def pick(name: str, reference: Any) -> Any:
    """The C type ``name`` when the C core runs, else its Python ``reference``."""
    return getattr(native, name) if native is not None else reference
