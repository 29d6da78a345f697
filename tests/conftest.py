"""Shared fixtures: a real PostgreSQL cluster and the real poold process.

PostgreSQL runs from a temporary directory on a free loopback port, as a
dedicated OS user when the tests run as root. A missing PostgreSQL is a failure,
never a skip.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import pgcluster  # noqa: E402
from tests import tlsca  # noqa: E402

#: POOLD_TEST_SERVER_TLS=1 (make test-server-tls): the session's cluster speaks TLS and every
#: poold started on it reaches it with sslmode=verify-full, so each test runs through TLS legs
SERVER_TLS = os.environ.get("POOLD_TEST_SERVER_TLS") == "1"

APP_PASSWORD = "app-secret-pw"

#: under `make test-sanitize`: the sanitizer runtimes this interpreter was started with,
#: passed on to poold alone (PostgreSQL and its tools do not run under them)
SANITIZER_PRELOAD = os.environ.pop("LD_PRELOAD") if "libasan" in os.environ.get("LD_PRELOAD", "") else ""

#: what AddressSanitizer and UBSan write to poold's stderr (its log here) when they
#: find something: under `make test-sanitize`, poold's C extensions are built with them
SANITIZER_REPORT = re.compile(r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|\.[ch]:\d+:\d+: runtime error:")


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05) -> object:
    """Poll until predicate() is truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pgcluster.Cluster]:
    base = tmp_path_factory.mktemp("pg")
    os.chmod(base, 0o755)
    for parent in base.parents:  # the cluster's OS user must reach its directory
        if str(parent).startswith(str(tmp_path_factory.getbasetemp().parent)):
            os.chmod(parent, os.stat(parent).st_mode | 0o711)
    cluster = pgcluster.Cluster(base=str(base / "cluster"))
    tlsca.init(cluster, base / "tls", SERVER_TLS)
    cluster.start()
    cluster.create_role_and_db("app", APP_PASSWORD)
    yield cluster
    cluster.destroy()


class Poold:
    """The real poold process, started with a configuration written for one test."""

    def __init__(self, tmp: Path, pg: pgcluster.Cluster, **settings: object) -> None:
        self.tmp = tmp
        self.pg = pg
        self.port = pgcluster.free_port()
        self.sockdir = tmp / "sock"
        self.sockdir.mkdir(exist_ok=True)
        self.config_path = tmp / "poold.toml"
        self.log_path = tmp / "poold.log"
        self.control_path = tmp / "control.sock"
        self.http_port = pgcluster.free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.settings = settings
        self.write_config(**settings)

    def write_config(self, **settings: object) -> None:
        pool = {"mode": "transaction", "max_size": 5, "min_size": 1} | {
            k: v for k, v in settings.items() if k not in ("auth_type", "max_client_conn", "login_timeout", "raw", "environ")
        }
        pool_toml = "\n".join(f"{k} = {_toml(v)}" for k, v in pool.items())
        (self.tmp / "userlist.txt").write_text(
            f'"app" "{APP_PASSWORD}"\n"md5user" "md5{_md5(APP_PASSWORD + "md5user")}"\n'
        )
        self.config_path.write_text(
            f"""
[listen]
host = "127.0.0.1"
port = {self.port}
unix_socket_dir = "{self.sockdir}"

[auth]
type = "{settings.get('auth_type', 'scram-sha-256')}"
file = "userlist.txt"

[clients]
max_client_conn = {settings.get('max_client_conn', 1000)}
login_timeout = {settings.get('login_timeout', 60)}

[control]
socket = "{self.control_path}"

[http]
host = "127.0.0.1"
port = {self.http_port}

[daemon]
shutdown_timeout = 10
log_format = "json"

[pool]
{pool_toml}

[databases.app]
dsn = "host={self.pg.host} port={self.pg.port} dbname=app user=app password={APP_PASSWORD} {self.pg.tls_params}"
{settings.get('raw', '')}
"""
        )

    def start(self) -> Poold:
        notify_path = str(self.tmp / "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(notify_path)
        sock.settimeout(0.2)
        env = dict(os.environ, NOTIFY_SOCKET=notify_path)
        env.update(self.settings.get("environ") or {})  # type: ignore[call-overload]
        if SANITIZER_PRELOAD:
            env["LD_PRELOAD"] = SANITIZER_PRELOAD
        env.pop("POOLD_CONFIG", None)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "poold", "-c", str(self.config_path)], stdout=self.log, stderr=self.log, env=env
        )
        deadline = time.monotonic() + 20
        try:
            while time.monotonic() < deadline:
                try:
                    if b"READY=1" in sock.recv(4096):
                        return self
                except TimeoutError:
                    pass
                if self.proc.poll() is not None:
                    break
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGUSR1)  # stack dump into the log
                time.sleep(0.5)
            raise AssertionError(f"poold did not become ready:\n{self.log_path.read_text()}")
        finally:
            sock.close()

    def dsn(self, user: str = "app", password: str = APP_PASSWORD, dbname: str = "app", **extra: str) -> str:
        parts = [f"host=127.0.0.1 port={self.port} dbname={dbname} user={user} password={password}"]
        parts += [f"{k}={v}" for k, v in extra.items()]
        return " ".join(parts)

    def env(self) -> dict[str, str]:
        return dict(os.environ, PGPASSWORD=APP_PASSWORD, PGHOST="127.0.0.1", PGPORT=str(self.port),
                    PGUSER="app", PGDATABASE="app")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("poold did not exit in time") from None
        finally:
            self.log.close()

    def poolctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "poolctl", "--socket", str(self.control_path), *args],
                              capture_output=True, text=True, timeout=30)

    def http(self, path: str) -> tuple[int, str]:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def log_text(self) -> str:
        return self.log_path.read_text()

    def sanitizer_report(self) -> str | None:
        """The sanitizer report in poold's log, from its first line; None when there is none."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        found = SANITIZER_REPORT.search(text)
        if found is None:
            return None
        start = text.rfind("\n", 0, found.start()) + 1
        return text[start : start + 6000]


def _toml(v: object) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _md5(s: str) -> str:
    import hashlib

    return hashlib.md5(s.encode()).hexdigest()


@pytest.fixture
def poold_factory(tmp_path: Path, pg: pgcluster.Cluster) -> Iterator[Callable[..., Poold]]:
    started: list[Poold] = []

    def start(cluster: pgcluster.Cluster | None = None, **settings: object) -> Poold:
        sub = tmp_path / f"poold{len(started)}"
        sub.mkdir()
        p = Poold(sub, cluster or pg, **settings)
        started.append(p)
        return p.start()

    yield start
    for p in started:
        if p.proc is not None and p.proc.poll() is None:
            p.stop()
    reports = [report for p in started if (report := p.sanitizer_report()) is not None]
    if reports:
        pytest.fail("poold's log has a sanitizer report:\n" + "\n".join(reports), pytrace=False)


def server_backends(pg: pgcluster.Cluster, where: str = "") -> int:
    """Client backends of role app (poold's server connections) right now."""
    sql = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend'"
    return int(pg.psql(sql + (f" AND {where}" if where else "")))


class RawClient:
    """A hand-driven protocol client, for asserting exact SQLSTATEs and bytes."""

    def __init__(self, port: int, timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def startup(self, user: str = "app", database: str = "app") -> None:
        import struct

        body = struct.pack("!I", 196608) + f"user\0{user}\0database\0{database}\0\0".encode()
        self.sock.sendall(struct.pack("!I", len(body) + 4) + body)

    def send(self, t: bytes, body: bytes) -> None:
        import struct

        self.sock.sendall(t + struct.pack("!I", len(body) + 4) + body)

    def read_message(self) -> tuple[bytes, bytes]:
        import struct

        while len(self.buf) < 5 or len(self.buf) < 1 + struct.unpack_from("!I", self.buf, 1)[0]:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by poold")
            self.buf += chunk
        length = struct.unpack_from("!I", self.buf, 1)[0]
        t, body = self.buf[:1], self.buf[5 : 1 + length]
        self.buf = self.buf[1 + length :]
        return t, body

    def read_error(self) -> dict[str, str]:
        t, body = self.read_message()
        assert t == b"E", (t, body)
        return {chr(f[0]): f[1:].decode() for f in body.split(b"\0") if f}

    def close(self) -> None:
        self.sock.close()
