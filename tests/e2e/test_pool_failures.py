"""A server that refuses a pool, or refuses only its new connections.

- A login the server refuses for good (a database or role it does not have)
  gets the server's own error at once, not a login timeout; such a pool does not
  make /health say down, and one made only for that name is not kept.
- A pool whose new connects fail while its connections still work keeps
  serving its waiting clients from those connections.
- DROP DATABASE and CREATE DATABASE ... TEMPLATE see what they see direct,
  although poold held idle server connections to that database.

Each test compares poold with a direct connection on the same assertions where
the direct one has something to say, and runs on the C core and the Python one.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable

import psycopg
import pytest

from tests.conftest import APP_PASSWORD, Poold, RawClient, pgcluster, wait_until
from tests.e2e.test_database_outage import own_pg  # noqa: F401  (fixture)

CORES = {
    "c": {},
    "python": {"POOLD_RELAY_CORE": "python", "POOLD_SOCKET_IO": "asyncio", "POOLD_FRAME_SCANNER": "python"},
}


def login_error(port: int, user: str, database: str) -> tuple[dict[str, str], float]:
    """A trust login's ErrorResponse fields (skipping AuthenticationOk), and how long it took."""
    start = time.monotonic()
    client = RawClient(port, timeout=90)
    try:
        client.startup(user=user, database=database)
        while True:
            t, _body = client.read_message()
            if t == b"E":
                break
            assert t == b"R", t  # AuthenticationOk only: the login must not succeed
        fields = {chr(f[0]): f[1:].decode() for f in _body.split(b"\0") if f}
        return fields, time.monotonic() - start
    finally:
        client.close()


def pools(p: Poold) -> dict[str, dict[str, object]]:
    status, body = p.http("/health")
    return {pool["pool"]: pool for pool in json.loads(body)["pools"]}


@pytest.mark.parametrize("core", CORES)
def test_refused_login_gets_the_servers_error_at_once(
    poold_factory: Callable[..., Poold], pg: pgcluster.Cluster, core: str
) -> None:
    raw = (
        f'[databases."*"]\ndsn = "host={pg.host} port={pg.port} user=app password={APP_PASSWORD}"\n'
        f'[databases.ghost]\ndsn = "host={pg.host} port={pg.port} dbname=app user=ghost"\n'
    )
    p = poold_factory(auth_type="trust", raw=raw, breaker_failures=3, environ=CORES[core])
    cases = [  # (poold's database, direct's user and database)
        ("nosuch_db", "app", "nosuch_db"),  # 3D000 through the "*" entry
        ("ghost", "ghost", "app"),  # 28000: the DSN's role does not exist
    ]
    for database, direct_user, direct_db in cases:
        direct, direct_seconds = login_error(pg.port, direct_user, direct_db)
        took = []
        # More attempts than breaker_failures: a refusal is not an outage, every client gets the refusal.
        for _ in range(5):
            got, seconds = login_error(p.port, "app", database)
            assert (got["V"], got["C"], got["M"]) == (direct["V"], direct["C"], direct["M"]), (got, direct)
            assert seconds < 1, f"{database}: refused after {seconds:.2f} s"
            took.append(seconds)
        print(f"{database}: {direct['C']} direct in {direct_seconds * 1000:.0f} ms, through poold in "
              + ", ".join(f"{t * 1000:.0f}" for t in took) + " ms")
    assert direct["C"] == "28000" and got["M"] == 'role "ghost" does not exist'
    # A client's typo does not take poold out of service, and leaves no pool behind.
    with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True) as conn:
        conn.execute("SELECT 1")
    status, body = p.http("/health")
    assert status == 200, body
    assert p.http("/health/database")[0] == 200
    assert p.http("/health/ready")[0] == 200
    wait_until(lambda: "nosuch_db.app" not in pools(p), timeout=5)
    assert pools(p)["ghost.ghost"]["state"] == "refused"  # configured: kept, and says why
    assert "ghost" in str(pools(p)["ghost.ghost"]["last_error"])


@pytest.mark.parametrize("block", ["connection_limit", "nologin"])
def test_pool_keeps_serving_waiters_while_new_connects_fail(
    poold_factory: Callable[..., Poold], own_pg: pgcluster.Cluster, block: str  # noqa: F811
) -> None:
    p = poold_factory(mode="transaction", max_size=6, min_size=2, breaker_failures=2, breaker_reset=30,
                      acquire_timeout=20, cluster=own_pg)
    wait_until(lambda: pools(p).get("app.app", {}).get("total") == 2, timeout=10)
    # New connects fail from now on; the two open ones keep working.
    if block == "connection_limit":
        own_pg.psql("ALTER ROLE app CONNECTION LIMIT 2")  # 53300 too many connections for role
    else:
        own_pg.psql("ALTER ROLE app NOLOGIN")  # 28000 not permitted to log in
    errors: list[str] = []
    done = [0]
    lock = threading.Lock()

    def client() -> None:
        try:
            with psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True, connect_timeout=30) as conn:
                for _ in range(8):
                    conn.execute("SELECT pg_sleep(0.05)")
                    with lock:
                        done[0] += 1
        except psycopg.Error as exc:
            with lock:
                errors.append(str(exc))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    own_pg.psql("ALTER ROLE app CONNECTION LIMIT -1 LOGIN")
    assert not errors, errors[:3]
    assert done[0] == 64
    failed = pools(p)["app.app"]
    assert failed["total"] >= 2


@pytest.mark.parametrize("core", CORES)
def test_drop_and_create_database_with_idle_server_connections(
    poold_factory: Callable[..., Poold], pg: pgcluster.Cluster, core: str
) -> None:
    raw = f'[databases."*"]\ndsn = "host={pg.host} port={pg.port} user=app password={APP_PASSWORD}"\n'
    p = poold_factory(mode="transaction", max_size=4, min_size=1, raw=raw, environ=CORES[core])
    name = f"scratch_{uuid.uuid4().hex[:8]}"
    pg.psql("ALTER ROLE app CREATEDB")  # for CREATE DATABASE ... TEMPLATE
    direct = psycopg.connect(pg.dsn("app", "app"), autocommit=True)
    via = psycopg.connect(p.dsn(), prepare_threshold=None, autocommit=True)
    try:
        for conn, label in ((direct, "direct"), (via, "poold")):
            # The same path for both: a client used the database and left (through poold, poold
            # keeps its server connection idle), then DROP and CREATE ... TEMPLATE are sent.
            user_dsn = pg.dsn(name, "app") if label == "direct" else p.dsn(dbname=name)
            conn.execute(f"CREATE DATABASE {name} OWNER app")
            with psycopg.connect(user_dsn, prepare_threshold=None, autocommit=True) as user:
                user.execute("SELECT 1")
            if label == "poold":
                wait_until(lambda: pools(p).get(f"{name}.app", {}).get("total", 0) >= 1, timeout=5)
            start = time.monotonic()
            conn.execute(f"CREATE DATABASE {name}_copy TEMPLATE {name}")  # the template must be unused
            print(f"{label}: CREATE DATABASE ... TEMPLATE {(time.monotonic() - start) * 1000:.0f} ms")
            conn.execute(f"DROP DATABASE {name}_copy")
            with psycopg.connect(user_dsn, prepare_threshold=None, autocommit=True) as user:
                user.execute("SELECT 1")
            # Extended protocol (psycopg), a comment first.
            start = time.monotonic()
            conn.execute(f"/* late */ DROP DATABASE {name}")
            print(f"{label}: DROP DATABASE after a comment {(time.monotonic() - start) * 1000:.0f} ms")
            assert not pg.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'"), label
            # A client still inside the database makes DROP fail with 55006, direct and through poold.
            conn.execute(f"CREATE DATABASE {name} OWNER app")
            with psycopg.connect(user_dsn, prepare_threshold=None, autocommit=True) as user:
                user.execute("BEGIN")
                user.execute("SELECT 1")
                with pytest.raises(psycopg.errors.ObjectInUse):
                    conn.execute(f"DROP DATABASE {name}")
                user.execute("COMMIT")
            # Simple query protocol (psql's), after the database was used again.
            run = subprocess.run([pgcluster.client_tool("psql"), "-X", "-v", "ON_ERROR_STOP=1", "-d",
                                  pg.dsn("app", "app") if label == "direct" else p.dsn(),
                                  "-c", f"DROP DATABASE {name}"], capture_output=True, text=True, timeout=30,
                                 env=dict(os.environ, PGPASSWORD=APP_PASSWORD))
            assert run.returncode == 0, (label, run.stderr)
    finally:
        direct.close()
        via.close()
        p.stop()  # its idle server connections must not keep the cleanup from dropping
        pg.psql(f"DROP DATABASE IF EXISTS {name}_copy")
        pg.psql(f"DROP DATABASE IF EXISTS {name}")
        pg.psql("ALTER ROLE app NOCREATEDB")
