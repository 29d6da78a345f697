"""Throwaway PostgreSQL clusters for `make run` and the tests (standard library only).

Binaries come from $PG_BINDIR, a local installation (/usr/lib/postgresql/*/bin,
pg_config), or the `pgserver` wheel. initdb and postgres refuse to run as root,
so when we are root the cluster runs as a dedicated OS user created here.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

OS_USER = "poold-pg"


class ClusterError(RuntimeError):
    pass


def find_bindir() -> Path:
    env = os.environ.get("PG_BINDIR")
    candidates = [env] if env else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            candidates.append(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip())
        except OSError:
            pass
    try:
        import pgserver  # type: ignore[import-not-found]

        candidates.append(str(Path(pgserver.__file__).parent / "pginstall" / "bin"))
    except ImportError:
        pass
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "postgres").exists():
            return Path(c)
    raise ClusterError(
        "no PostgreSQL server binaries found: install postgresql (apt-get install postgresql) "
        "or the pgserver wheel, or set PG_BINDIR"
    )


def ensure_binaries() -> Path:
    """Find PostgreSQL, installing the pgserver wheel into this Python if there is none."""
    try:
        return find_bindir()
    except ClusterError:
        print("no local PostgreSQL binaries: installing the pgserver wheel ...", flush=True)
        import sys

        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "pgserver"], check=True)
        import importlib

        importlib.invalidate_caches()
        return find_bindir()


def _version_key(path: str) -> int:
    try:
        return int(Path(path).parent.name)
    except ValueError:
        return 0


def client_tool(name: str) -> str:
    """psql/pgbench: PATH first (Debian's wrappers), then the server's bindir."""
    found = shutil.which(name)
    if found:
        return found
    candidate = find_bindir() / name
    if candidate.exists():
        return str(candidate)
    raise ClusterError(f"{name} not found: install postgresql-client")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_os_user() -> str | None:
    """The user to run PostgreSQL as, creating it when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", OS_USER],
            check=True,
        )
    return OS_USER


class Cluster:
    """initdb + pg_ctl in a temporary directory, on a free loopback port."""

    def __init__(self, base: str | None = None, port: int | None = None, bindir: Path | None = None) -> None:
        #: the server's binaries: find_bindir()'s, or another PostgreSQL's (pg_npm.py)
        self.bindir = bindir or find_bindir()
        self.os_user = ensure_os_user()
        self.base = Path(base or tempfile.mkdtemp(prefix="poold-pg-"))
        self.datadir = self.base / "data"
        self.sockdir = self.base / "sock"
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.superuser = "postgres"
        self._started = False
        #: libpq parameters a DSN for this cluster carries (TLS ones, when it speaks TLS)
        self.tls_params = ""

    # -- lifecycle ---------------------------------------------------------

    def init(self, *extra_conf: str) -> None:
        self.sockdir.mkdir(parents=True, exist_ok=True)
        if self.os_user:
            for p in (self.base, self.sockdir):
                shutil.chown(p, self.os_user, self.os_user)
        self._run_as([str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", self.superuser,
                      "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"])
        conf = [
            f"port = {self.port}",
            f"listen_addresses = '{self.host}'",
            f"unix_socket_directories = '{self.sockdir}'",
            "max_connections = 300",
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "shared_buffers = 128MB",
            "log_min_messages = warning",
            *extra_conf,
        ]
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write("\n# poold test cluster\n" + "\n".join(conf) + "\n")

    def start(self) -> None:
        self._run_as([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.base / "server.log"),
                      "-w", "-t", "60", "start"])
        self._started = True

    def stop(self, mode: str = "fast") -> None:
        if self._started:
            self._run_as([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop"], check=False)
            self._started = False

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    # -- helpers -------------------------------------------------------------

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        return f"host={self.host} port={self.port} dbname={dbname} user={user or self.superuser}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        out = subprocess.run(
            [client_tool("psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", self.dsn(dbname), "-c", sql],
            capture_output=True, text=True, timeout=60,
        )
        if out.returncode:
            raise ClusterError(f"psql failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def create_role_and_db(self, name: str, password: str) -> None:
        self.psql(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        self.psql(f"CREATE DATABASE {name} OWNER {name}")

    def _run_as(self, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(cmd, capture_output=True, text=True, user=self.os_user, cwd=self.base, timeout=120)
        if check and out.returncode:
            raise ClusterError(f"{Path(cmd[0]).name} failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
        return out

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise ClusterError("PostgreSQL did not start listening")


if __name__ == "__main__":
    # `python scripts/pgcluster.py`: make sure PostgreSQL binaries are available.
    print(f"PostgreSQL binaries: {ensure_binaries()}")
