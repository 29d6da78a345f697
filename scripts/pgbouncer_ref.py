"""The reference PgBouncer (1.25.2), built once from the source tarball and cached.

Tests that compare poold with PgBouncer call ``ensure_pgbouncer()``: it finds
``pgbouncer-1.25.2.tar.gz`` and ``build-pgbouncer.sh`` in the shared reference
directory (``POOLD_PGBOUNCER_REFERENCE``, else ``shared/reference`` beside or
above the checkout), builds into a directory keyed on the tarball's SHA-256
(so a different tarball never reuses an old build), under a lock so that
concurrent test runs build it once. The cache sits under /tmp, where the
unprivileged OS user PgBouncer runs as (it refuses root) can execute it.
A missing tarball is an error, never a skip.

``python scripts/pgbouncer_ref.py`` builds it ahead of a test run and prints the path.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARBALL = "pgbouncer-1.25.2.tar.gz"
BUILD_SCRIPT = "build-pgbouncer.sh"


class PgBouncerMissing(RuntimeError):
    """No reference tarball, or its build failed."""


def reference_dir() -> Path:
    env = os.environ.get("POOLD_PGBOUNCER_REFERENCE")
    candidates = [Path(env)] if env else [p / "shared" / "reference" for p in (ROOT, *ROOT.parents)]
    for c in candidates:
        if (c / TARBALL).is_file() and (c / BUILD_SCRIPT).is_file():
            return c
    raise PgBouncerMissing(f"{TARBALL} and {BUILD_SCRIPT} not found in {', '.join(map(str, candidates))} "
                           "(set POOLD_PGBOUNCER_REFERENCE)")


def cache_prefix(tarball: Path) -> Path:
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()[:12]
    base = Path(os.environ.get("POOLD_PGBOUNCER_CACHE", "/tmp"))
    return base / f"poold-pgbouncer-{digest}" / "prefix"


def ensure_pgbouncer(timeout: float = 900) -> Path:
    """The path of the reference pgbouncer binary, built on first use (about a minute)."""
    ref = reference_dir()
    prefix = cache_prefix(ref / TARBALL)
    binary = prefix / "bin" / "pgbouncer"
    if binary.is_file():
        return binary
    prefix.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(prefix.parent, 0o755)
    with open(prefix.parent.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building it right now
        if not binary.is_file():
            out = subprocess.run(["bash", str(ref / BUILD_SCRIPT), str(prefix)], capture_output=True, text=True,
                                 timeout=timeout)
            if out.returncode or not binary.is_file():
                raise PgBouncerMissing(f"building PgBouncer failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return binary


if __name__ == "__main__":
    print(ensure_pgbouncer())
