"""The admin console: `psql -U admin pgbouncer` (or database poold) over poold's own
listeners answers PgBouncer 1.25.2's SHOW and control commands.

Column names and types are compared, SHOW by SHOW, with a real PgBouncer 1.25.2
(scripts/pgbouncer_ref.py) asked the same; the numbers with `poolctl --json`
asked at the same moment. Each behaviour runs on the C core and on the Python
twins (the console's login is the Python login's: the C login must hand it over).
Debian's prometheus-pgbouncer-exporter, pointed at poold, exports what poolctl says.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import APP_PASSWORD, Poold, pgcluster, wait_until
from tests.e2e.test_http import scrape

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import pgbouncer_ref  # noqa: E402

PYTHON_TWINS = {"POOLD_RELAY_CORE": "python", "POOLD_SOCKET_IO": "asyncio", "POOLD_FRAME_SCANNER": "python"}
STATS_PASSWORD = "stats-secret-pw"
#: every SHOW whose columns are compared with PgBouncer's
SHOWS = ["POOLS", "CLIENTS", "SERVERS", "STATS", "STATS_TOTALS", "STATS_AVERAGES", "DATABASES", "USERS", "CONFIG",
         "VERSION", "LISTS", "STATE", "TOTALS", "MEM", "DNS_HOSTS", "DNS_ZONES", "PEERS", "PEER_POOLS", "SOCKETS",
         "ACTIVE_SOCKETS"]
#: columns of older PgBouncers that poold adds after 1.25's, for tools that read them (adminviews.py)
LEGACY = {"STATS": [("total_requests", 1700), ("total_received", 1700), ("total_sent", 1700)],
          "DATABASES": [("reserve_pool", 23)]}
EXPORTER = "/usr/bin/prometheus-pgbouncer-exporter"


class Result:
    """A simple-query result: columns as (name, type OID), rows as dicts of text."""

    def __init__(self, res: Any) -> None:
        self.columns = [(res.fname(i).decode(), res.ftype(i)) for i in range(res.nfields)]
        names = [n for n, _ in self.columns]
        self.rows = [
            {n: (v.decode() if (v := res.get_value(r, i)) is not None else None) for i, n in enumerate(names)}
            for r in range(res.ntuples)
        ]
        self.tag = (res.command_status or b"").decode()


def console(port: int, user: str = "app", password: str = APP_PASSWORD, dbname: str = "pgbouncer",
            host: str = "127.0.0.1") -> psycopg.Connection[Any]:
    return psycopg.connect(host=host, port=port, user=user, password=password, dbname=dbname, autocommit=True,
                           connect_timeout=10)


def run(conn: psycopg.Connection[Any], sql: str) -> Result:
    """One query over the simple query protocol (the console's only one), raising on an error."""
    res = conn.pgconn.exec_(sql.encode())
    if res.status == psycopg.pq.ExecStatus.FATAL_ERROR:
        sqlstate = res.error_field(psycopg.pq.DiagnosticField.SQLSTATE)
        message = res.error_message.decode()
        raise psycopg.errors.lookup(sqlstate.decode())(message) if sqlstate else psycopg.OperationalError(message)
    return Result(res)


def poolctl(p: Poold, *args: str) -> Any:
    out = p.poolctl("--json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(params=["c-core", "python-twins"])
def admin_poold(request: pytest.FixtureRequest, tmp_path: Path, pg: pgcluster.Cluster) -> Iterator[Poold]:
    """poold with app as an admin, md5user and watcher as stats users, nobody as neither."""
    environ = {"POOLD_AUTH__ADMIN_USERS": "app", "POOLD_AUTH__STATS_USERS": "md5user, watcher"}
    if request.param == "python-twins":
        environ |= PYTHON_TWINS
    (tmp_path / "poold").mkdir()
    p = Poold(tmp_path / "poold", pg, environ=environ, mode="transaction", max_size=3, min_size=1)
    with (p.tmp / "userlist.txt").open("a") as f:
        f.write(f'"watcher" "{STATS_PASSWORD}"\n"nobody" "{STATS_PASSWORD}"\n')
    p.start()
    yield p
    p.stop()


# -- PgBouncer's columns --------------------------------------------------------------

#: what PgBouncer 1.25.2 answered, recorded by this module from the live 1.25.2 build
#: (``pgbouncer_columns`` checks the record against it wherever that build exists)
RECORDED = Path(__file__).with_name("pgbouncer-1.25.2-show.json")


class Recorded:
    """A recorded SHOW answer: its columns, tag, and rows (the LISTS/STATE/TOTALS keys only)."""

    def __init__(self, columns: list[list[Any]], tag: str, rows: list[dict[str, Any]]) -> None:
        self.columns = [(name, oid) for name, oid in columns]
        self.tag = tag
        self.rows = rows


def _record(answers: dict[str, Result]) -> dict[str, Any]:
    keys = {"LISTS": "list", "STATE": "key", "TOTALS": "name"}
    return {what: {"columns": [list(c) for c in r.columns], "tag": r.tag,
                   "rows": [{keys[what]: row[keys[what]]} for row in r.rows] if what in keys else []}
            for what, r in answers.items()}


@pytest.fixture(scope="module")
def pgbouncer_columns(tmp_path_factory: pytest.TempPathFactory, pg: pgcluster.Cluster) -> dict[str, Any]:
    """What a real PgBouncer 1.25.2 answers to each SHOW: its columns, and the LISTS and STATE keys.

    Asked live when the 1.25.2 build is at hand (and the record must match it);
    where only an older PgBouncer is (the distribution's 1.18), the record answers."""
    recorded = {what: Recorded(**r) for what, r in json.loads(RECORDED.read_text()).items()}
    binary = pgbouncer_ref.ensure_pgbouncer()
    if pgbouncer_ref.version(binary) != (1, 25):
        return recorded
    live = _ask_pgbouncer(binary, tmp_path_factory, pg)
    assert _record(live) == json.loads(RECORDED.read_text()), f"{RECORDED.name} differs from {binary}'s answers"
    return live


def _ask_pgbouncer(binary: Path, tmp_path_factory: pytest.TempPathFactory, pg: pgcluster.Cluster) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("pgbouncer")
    os.chmod(base, 0o755)
    d = base / "run"
    d.mkdir()
    port = pgcluster.free_port()
    (d / "userlist.txt").write_text(f'"app" "{APP_PASSWORD}"\n')
    (d / "pgbouncer.ini").write_text(f"""\
[databases]
app = host={pg.host} port={pg.port} dbname=app

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {d}/userlist.txt
admin_users = app
pool_mode = transaction
""")
    if pg.os_user:
        for path in [d, *d.iterdir()]:
            shutil.chown(path, pg.os_user, pg.os_user)
    bouncer = subprocess.Popen([str(binary), str(d / "pgbouncer.ini")], user=pg.os_user, cwd=d,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _listening(port) or bouncer.poll() is not None, timeout=30)
        assert bouncer.poll() is None, bouncer.stderr.read().decode()  # type: ignore[union-attr]
        with psycopg.connect(host="127.0.0.1", port=port, user="app", password=APP_PASSWORD, dbname="app",
                             autocommit=True) as app:
            app.execute("SELECT 1")  # a pool, a server connection and a client to list
            with console(port) as admin:
                answers = {what: run(admin, f"SHOW {what}") for what in SHOWS}
    finally:
        bouncer.send_signal(signal.SIGINT)
        bouncer.wait(30)
    return answers


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_each_show_has_pgbouncers_columns(admin_poold: Poold, pgbouncer_columns: dict[str, Result]) -> None:
    with psycopg.connect(admin_poold.dsn(), autocommit=True) as app:
        app.execute("SELECT 1")
        with console(admin_poold.port) as admin:
            for what in SHOWS:
                ours, theirs = run(admin, f"SHOW {what}"), pgbouncer_columns[what]
                assert ours.columns == theirs.columns + LEGACY.get(what, []), what
                assert ours.tag == theirs.tag == "SHOW", what
            assert [r["list"] for r in run(admin, "SHOW LISTS").rows] == \
                [r["list"] for r in pgbouncer_columns["LISTS"].rows]
            assert [r["key"] for r in run(admin, "SHOW STATE").rows] == \
                [r["key"] for r in pgbouncer_columns["STATE"].rows]
            assert [r["name"] for r in run(admin, "SHOW TOTALS").rows] == \
                [r["name"] for r in pgbouncer_columns["TOTALS"].rows]
            # lower case, a trailing semicolon, and PgBouncer's SELECT spelling
            assert run(admin, "show pools;").columns == pgbouncer_columns["POOLS"].columns
            assert run(admin, "  Show Version ; ").rows[0]["version"].endswith("(PgBouncer 1.25.2 compatible)")


# -- the numbers -----------------------------------------------------------------------

def test_numbers_agree_with_poolctl_over_tcp_and_the_unix_socket(admin_poold: Poold, pg: pgcluster.Cluster) -> None:
    p = admin_poold
    with psycopg.connect(p.dsn(), autocommit=True) as idle, psycopg.connect(p.dsn()) as busy:
        idle.execute("SELECT 1")
        (busy_pid,) = busy.execute("SELECT pg_backend_pid()").fetchone()  # type: ignore[misc]  # in a transaction: one server connection active
        for host, dbname in (("127.0.0.1", "pgbouncer"), (str(p.sockdir), "poold")):
            with console(p.port, host=host, dbname=dbname) as admin:
                pools, servers, clients = (run(admin, f"SHOW {w}").rows for w in ("POOLS", "SERVERS", "CLIENTS"))
                databases, lists, stats = (run(admin, f"SHOW {w}").rows for w in ("DATABASES", "LISTS", "STATS"))
                ctl_pools, ctl_servers = poolctl(p, "pools"), poolctl(p, "servers")
                ctl_clients, status = poolctl(p, "clients"), poolctl(p, "status")
                samples = scrape(p)
            (row,) = [r for r in pools if r["database"] == "app"]
            (ctl,) = ctl_pools
            assert (int(row["cl_active"]), int(row["cl_waiting"])) == (ctl["clients"] - ctl["waiting"], ctl["waiting"]) == (2, 0)
            assert int(row["sv_active"]) == ctl["active"] == 1
            assert int(row["sv_idle"]) + int(row["sv_being_canceled"]) == ctl["idle"]
            assert row["pool_mode"] == ctl["mode"] == "transaction"
            assert sorted(int(r["remote_pid"]) for r in servers) == sorted(r["pid"] for r in ctl_servers)
            assert len(servers) == ctl["total"] == status["server_connections"]
            ages = {r["pid"]: r["age"] for r in ctl_servers}  # connect_time is whole seconds, local time
            for r in servers:
                connected = time.mktime(time.strptime(r["connect_time"][:19], "%Y-%m-%d %H:%M:%S"))
                assert abs(time.time() - connected - ages[int(r["remote_pid"])]) < 3, (r, ages)
            assert sorted(r["state"] for r in servers if r["state"] == "active") == ["active"]
            assert busy_pid in {int(r["remote_pid"]) for r in servers if r["state"] == "active"}
            app_clients = [r for r in clients if r["database"] == "app"]
            assert sorted(int(r["id"]) for r in app_clients) == sorted(c["id"] for c in ctl_clients)
            assert sorted(r["state"] for r in app_clients) == ["active", "idle"]
            (admin_row,) = [r for r in clients if r["database"] == "pgbouncer"]
            assert admin_row["user"] == "app"
            (db,) = [r for r in databases if r["name"] == "app"]
            assert (int(db["pool_size"]), int(db["current_connections"])) == (ctl["max_size"], ctl["total"])
            assert int(db["current_client_connections"]) == ctl["clients"]
            items = {r["list"]: int(r["items"]) for r in lists}
            if dbname == "pgbouncer":  # SHOW CONFIG: PgBouncer's names first, then poold's own
                with console(p.port) as admin:
                    shown = {r["key"]: r["value"] for r in run(admin, "SHOW CONFIG").rows}
                in_force = poolctl(p, "config", "show")
                assert shown["max_client_conn"] == str(in_force["clients.max_client_conn"]) == "1000"
                assert shown["default_pool_size"] == shown["pool.max_size"] == str(in_force["pool.max_size"]) == "3"
                assert shown["listen_port"] == str(p.port) and shown["max_user_connections"] == "0"
                assert shown["admin_users"] == shown["auth.admin_users"] == "app"
            assert items["used_servers"] == status["server_connections"]
            assert items["pools"] == status["pools"] + 1  # and the console's own, as PgBouncer lists it
            (st,) = [r for r in stats if r["database"] == "app"]
            assert int(st["total_xact_count"]) == samples[("poold_transactions_total", (("pool", "app.app"),))]
            assert int(st["total_query_count"]) == samples[("poold_queries_total", (("pool", "app.app"),))]
            assert int(st["total_received"]) == samples[("poold_bytes_total", (("direction", "in"), ("pool", "app.app")))]
        busy.commit()


# -- the control commands --------------------------------------------------------------

def _in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(fn())
        except Exception as exc:  # reported by the assertion that reads it
            out.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def test_pause_waits_for_the_transaction_and_holds_new_ones_until_resume(admin_poold: Poold) -> None:
    p = admin_poold
    with console(p.port) as admin, psycopg.connect(p.dsn()) as inside, psycopg.connect(p.dsn(), autocommit=True) as later:
        later.execute("SELECT 1")
        inside.execute("SELECT 1")  # a transaction holds a server connection
        pausing, paused = _in_thread(lambda: run(admin, "PAUSE").tag)
        pausing.join(1.0)
        assert pausing.is_alive(), "PAUSE answered while a transaction held a server connection"
        inside.commit()
        pausing.join(10)
        assert paused == ["PAUSE"]
        with console(p.port) as watcher:
            assert run(watcher, "SHOW STATE").rows[1] == {"key": "paused", "value": "yes"}
            querying, answer = _in_thread(lambda: later.execute("SELECT 42").fetchone())
            wait_until(lambda: int(_pool(watcher)["cl_waiting"]) == 1, timeout=10)
            assert poolctl(p, "pools")[0]["waiting"] == 1
            assert querying.is_alive()
            assert run(watcher, "RESUME").tag == "RESUME"
            querying.join(10)
            assert answer == [(42,)]
            assert run(watcher, "SHOW STATE").rows[0] == {"key": "active", "value": "yes"}
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="not paused"):
                run(watcher, "RESUME")


def _pool(admin: psycopg.Connection[Any], database: str = "app") -> dict[str, Any]:
    (row,) = [r for r in run(admin, "SHOW POOLS").rows if r["database"] == database]
    return row


def test_kill_client_reconnect_and_reload(admin_poold: Poold) -> None:
    p = admin_poold
    with console(p.port) as admin, psycopg.connect(p.dsn(), autocommit=True) as victim:
        victim.execute("SELECT 1")
        (row,) = [r for r in run(admin, "SHOW CLIENTS").rows if r["database"] == "app"]
        assert run(admin, f"KILL_CLIENT {row['id']}").tag == "KILL_CLIENT"
        with pytest.raises(psycopg.OperationalError, match="administrator command"):
            victim.execute("SELECT 1")
        wait_until(lambda: not poolctl(p, "clients"), timeout=10)
        with pytest.raises(psycopg.errors.UndefinedObject, match="client not found"):
            run(admin, f"KILL_CLIENT {row['id']}")
    with console(p.port) as admin, psycopg.connect(p.dsn(), autocommit=True) as app:
        before = app.execute("SELECT pg_backend_pid()").fetchone()
        old = {int(r["remote_pid"]) for r in run(admin, "SHOW SERVERS").rows}
        assert before is not None and before[0] in old
        assert run(admin, "RECONNECT app").tag == "RECONNECT"
        assert run(admin, "WAIT_CLOSE app").tag == "WAIT_CLOSE"
        after = app.execute("SELECT pg_backend_pid()").fetchone()
        assert after is not None and after[0] not in old
        # RELOAD: the file's new max_size is in force, as after poolctl reload
        p.config_path.write_text(p.config_path.read_text().replace("max_size = 3", "max_size = 4"))
        assert run(admin, "RELOAD").tag == "RELOAD"
        assert poolctl(p, "pools")[0]["max_size"] == 4
        assert int(_pool_size(admin)) == 4
        p.config_path.write_text(p.config_path.read_text().replace("max_size = 4", "max_size = 0\nmin_size = 9"))
        with pytest.raises(psycopg.errors.ConfigFileError, match="RELOAD failed"):
            run(admin, "RELOAD")


def _pool_size(admin: psycopg.Connection[Any]) -> str:
    (row,) = [r for r in run(admin, "SHOW DATABASES").rows if r["name"] == "app"]
    return str(row["pool_size"])


def test_disable_refuses_new_clients_until_enable(admin_poold: Poold) -> None:
    p = admin_poold
    with console(p.port) as admin:
        with psycopg.connect(p.dsn(), autocommit=True) as first:
            first.execute("SELECT 1")  # a kept login plan (the C login's) must not let the next one in
        assert run(admin, "DISABLE app").tag == "DISABLE"
        with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
            psycopg.connect(p.dsn(), connect_timeout=10)
        (db,) = [r for r in run(admin, "SHOW DATABASES").rows if r["name"] == "app"]
        assert db["disabled"] == "1"
        assert run(admin, "ENABLE app").tag == "ENABLE"
        with psycopg.connect(p.dsn(), autocommit=True) as again:
            assert again.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.errors.InvalidCatalogName, match="no such database: nosuch"):
            run(admin, "DISABLE nosuch")


def test_stats_users_may_show_only_and_others_are_refused(admin_poold: Poold) -> None:
    p = admin_poold
    for user, password in (("watcher", STATS_PASSWORD), ("md5user", APP_PASSWORD)):
        with console(p.port, user=user, password=password) as stats:
            assert [r["database"] for r in run(stats, "SHOW POOLS").rows][-1] == "pgbouncer"
            for command in ("PAUSE", "RESUME", "KILL_CLIENT 1", "RELOAD", "SHUTDOWN"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="admin access needed"):
                    run(stats, command)
            assert run(stats, "SHOW STATE").rows[0] == {"key": "active", "value": "yes"}
    with pytest.raises(psycopg.OperationalError, match="not allowed"):
        console(p.port, user="nobody", password=STATS_PASSWORD)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed|authentication failed"):
        console(p.port, user="app", password="wrong")
    with console(p.port) as admin:
        with pytest.raises(psycopg.errors.SyntaxError, match="invalid command 'SHOW NOSUCH', use SHOW HELP;"):
            run(admin, "SHOW NOSUCH")
        # the extended query protocol: PgBouncer's error, then the connection ends
        res = admin.pgconn.exec_params(b"SHOW POOLS", [])  # Parse, Bind, Describe, Execute, Sync
        assert res.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"08P01", res.error_message
        assert b"extended query protocol not supported by admin console" in res.error_message
        assert admin.pgconn.status == psycopg.pq.ConnStatus.BAD or admin.pgconn.exec_(b"SHOW STATE").status == \
            psycopg.pq.ExecStatus.FATAL_ERROR
    # a SHUTDOWN from an admin stops poold as SIGTERM does
    with console(p.port) as admin:
        assert run(admin, "SHUTDOWN WAIT_FOR_CLIENTS").tag == "SHUTDOWN"
    assert p.proc is not None and p.proc.wait(30) == 0


# -- PgBouncer's tools -------------------------------------------------------------------

def test_prometheus_pgbouncer_exporter_reads_what_poolctl_says(admin_poold: Poold) -> None:
    """Debian's prometheus-pgbouncer-exporter 1.7 (apt), unchanged, pointed at poold. It reads
    SHOW STATS (total_requests, total_received, total_sent, total_query_time), SHOW POOLS
    (cl_active, cl_waiting), SHOW DATABASES (pool_size, reserve_pool) and SHOW LISTS."""
    assert os.path.exists(EXPORTER), "apt-get install prometheus-pgbouncer-exporter (.ci/run, make test)"
    p = admin_poold
    http_port = pgcluster.free_port()
    env = dict(os.environ, PGPASSWORD=APP_PASSWORD)
    exporter = subprocess.Popen([EXPORTER, "--host", "127.0.0.1", "--port", str(http_port), "--pgbouncer-host",
                                 "127.0.0.1", "--pgbouncer-port", str(p.port), "--pgbouncer-user", "app"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with psycopg.connect(p.dsn(), autocommit=True) as app, psycopg.connect(p.dsn()) as busy:
            for _ in range(5):
                app.execute("SELECT 1")
            busy.execute("SELECT 1")
            wait_until(lambda: _listening(http_port) or exporter.poll() is not None, timeout=30)
            assert exporter.poll() is None, exporter.stderr.read().decode()  # type: ignore[union-attr]
            exported = _exported(http_port)
            (ctl,) = poolctl(p, "pools")
            status = poolctl(p, "status")
            samples = scrape(p)
            busy.commit()
        labels = (("database", "app"), ("user", "app"))
        assert exported[("pgbouncer_active_clients", labels)] == ctl["clients"] - ctl["waiting"] == 2
        assert exported[("pgbouncer_waiting_clients", labels)] == ctl["waiting"] == 0
        assert exported[("pgbouncer_pool_size", (("database", "app"),))] == ctl["max_size"]
        assert exported[("pgbouncer_requests_total", (("database", "app"),))] == \
            samples[("poold_queries_total", (("pool", "app.app"),))] >= 6
        assert exported[("pgbouncer_received_bytes_total", (("database", "app"),))] == \
            samples[("poold_bytes_total", (("direction", "in"), ("pool", "app.app")))]
        assert exported[("pgbouncer_used_servers", ())] == status["server_connections"]
        assert exported[("pgbouncer_pools", ())] == status["pools"] + 1
    finally:
        exporter.terminate()
        exporter.wait(10)


def _exported(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_console_names_without_the_setting_are_ordinary_databases(tmp_path: Path, pg: pgcluster.Cluster) -> None:
    """Without admin_users or stats_users nobody reaches the console, and it costs nothing else."""
    (tmp_path / "p").mkdir()
    p = Poold(tmp_path / "p", pg)
    p.start()
    try:
        with pytest.raises(psycopg.OperationalError, match="not allowed"):
            console(p.port)
    finally:
        p.stop()


def test_the_pgbouncer_user_from_poolds_own_uid_on_the_unix_socket_is_an_admin(admin_poold: Poold) -> None:
    """PgBouncer's rule: user pgbouncer, over the Unix socket, from the OS user poold runs as
    (this test's), needs no password and may run every command; over TCP it is any user."""
    p = admin_poold
    with psycopg.connect(host=str(p.sockdir), port=p.port, user="pgbouncer", dbname="pgbouncer",
                         autocommit=True) as admin:
        assert run(admin, "PAUSE app").tag == "PAUSE"
        assert run(admin, "RESUME app").tag == "RESUME"
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        console(p.port, user="pgbouncer", password="any")


def test_pause_without_a_database_holds_pools_made_after_it(request: pytest.FixtureRequest, tmp_path: Path,
                                                             pg: pgcluster.Cluster) -> None:
    """PAUSE with no database pauses poold, as PgBouncer's: a pool made afterwards (a new
    database through the '*' entry) hands out nothing until RESUME either."""
    (tmp_path / "p").mkdir()
    wild = f'[databases."*"]\ndsn = "host={pg.host} port={pg.port} user=app password={APP_PASSWORD}"\n'
    p = Poold(tmp_path / "p", pg, raw=wild, environ={"POOLD_AUTH__ADMIN_USERS": "app"})
    p.start()
    try:
        with console(p.port) as admin:
            assert run(admin, "PAUSE").tag == "PAUSE"
            with psycopg.connect(p.dsn(dbname="postgres"), autocommit=True) as later:
                querying, answer = _in_thread(lambda: later.execute("SELECT 7").fetchone())
                wait_until(lambda: int(_pool(admin, "postgres")["cl_waiting"]) == 1, timeout=10)
                assert querying.is_alive()
                assert run(admin, "RESUME").tag == "RESUME"
                querying.join(10)
                assert answer == [(7,)]
    finally:
        p.stop()


def test_a_cancel_ends_a_waiting_pause_and_resumes(admin_poold: Poold) -> None:
    """Ctrl-C in psql during a PAUSE that waits (a CancelRequest with the console's key):
    the PAUSE ends with PostgreSQL's 57014 and poold is not left paused."""
    p = admin_poold
    with console(p.port) as admin, psycopg.connect(p.dsn()) as inside:
        inside.execute("SELECT 1")  # a transaction holds a server connection: the PAUSE waits
        pausing, paused = _in_thread(lambda: run(admin, "PAUSE"))
        wait_until(lambda: poolctl(p, "pools")[0]["paused"], timeout=10)
        assert pausing.is_alive()
        admin.cancel()
        pausing.join(10)
        assert len(paused) == 1 and isinstance(paused[0], psycopg.errors.QueryCanceled), paused
        assert run(admin, "SHOW STATE").rows[0] == {"key": "active", "value": "yes"}
        assert not poolctl(p, "pools")[0]["paused"]
        assert inside.execute("SELECT 2").fetchone() == (2,)
        inside.commit()
