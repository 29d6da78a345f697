"""The reference PgBouncer (1.25.2), built once from the source tarball and cached.

Tests that compare poold with PgBouncer call ``ensure_pgbouncer()``: it finds
``pgbouncer-1.25.2.tar.gz`` and ``build-pgbouncer.sh`` in the shared reference
directory (``POOLD_PGBOUNCER_REFERENCE``, else ``shared/reference`` beside or
above the checkout), builds into a directory keyed on the tarball's SHA-256
(so a different tarball never reuses an old build), under a lock so that
concurrent test runs build it once. The cache sits under /tmp, where the
unprivileged OS user PgBouncer runs as (it refuses root) can execute it.

Where the reference is not there (a machine with only Python and the OS
package manager), the tests take the distribution's PgBouncer instead
(``/usr/sbin/pgbouncer``, Debian's 1.18, installed with apt-get when we are
root), as the benchmark harness does, and say which version they ran; only
when neither can be had is it an error, never a skip.

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


SYSTEM_PGBOUNCER = Path("/usr/sbin/pgbouncer")


def ensure_pgbouncer(timeout: float = 900) -> Path:
    """The path of the reference pgbouncer binary, built on first use (about a minute);
    the distribution's where the reference is absent."""
    try:
        ref = reference_dir()
    except PgBouncerMissing as missing:
        return system_pgbouncer(missing)
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


def system_pgbouncer(missing: PgBouncerMissing) -> Path:
    """The distribution's pgbouncer, installed with apt-get when we are root and it is not there."""
    if not SYSTEM_PGBOUNCER.is_file() and os.geteuid() == 0 and Path("/usr/bin/apt-get").is_file():
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-qq", "pgbouncer"], env=env, capture_output=True)
        if not SYSTEM_PGBOUNCER.is_file():
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "pgbouncer"], env=env, capture_output=True)
    if not SYSTEM_PGBOUNCER.is_file():
        raise PgBouncerMissing(f"{missing}; and no {SYSTEM_PGBOUNCER} (apt-get install pgbouncer)")
    return SYSTEM_PGBOUNCER


def version(binary: Path) -> tuple[int, int]:
    """A pgbouncer's (major, minor) version, from ``pgbouncer --version``."""
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30).stdout
    major, minor = out.split()[1].split(".")[:2]  # "PgBouncer 1.25.2"
    return int(major), int(minor)


if __name__ == "__main__":
    path = ensure_pgbouncer()
    print(f"{path} (PgBouncer {'.'.join(map(str, version(path)))})")
