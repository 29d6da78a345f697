"""PgBouncer 1.25.2 on a configuration, then poold on `poold migrate`'s conversion of it: same results.

The configuration is tests/fixtures/pgbouncer/e2e.ini (a transaction-mode entry,
a session-mode entry, a '*' fallback; SCRAM clients from an auth file; client
TLS). PgBouncer is built from the reference tarball when it is not cached
(scripts/pgbouncer_ref.py) and runs as the clusters' unprivileged OS user. The
same pgbench script runs through each, in turn, on the same port: a counter
per pooler, bumped in a transaction, and a row per transaction.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import trustme

from poold.migrate import NOT_APPLICABLE
from tests.conftest import APP_PASSWORD, ROOT, Poold, pgcluster, wait_until
from tests.e2e.test_http import scrape, value

sys.path.insert(0, str(ROOT / "scripts"))
import pgbouncer_ref  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "pgbouncer" / "e2e.ini"
OTHER_DB = "migrate_other"  # reached through the '*' entry
SCRIPT = """\
BEGIN;
UPDATE migrate_tally SET n = n + 1 WHERE target = :target;
INSERT INTO migrate_hits (target, client) VALUES (:target, :client_id);
END;
SELECT n FROM migrate_tally WHERE target = :target;
"""
#: (database, pgbench query mode, clients, transactions per client)
RUNS = [("appdb", "extended", 4, 50), ("appdb", "simple", 4, 50), ("app_session", "extended", 2, 30),
        (OTHER_DB, "simple", 3, 20)]
TARGETS = {"pgbouncer": 1, "poold": 2}


@pytest.fixture(scope="module")
def pgbouncer_binary() -> Path:
    return pgbouncer_ref.ensure_pgbouncer()


@pytest.fixture
def workdir(tmp_path: Path, pg: pgcluster.Cluster, pgbouncer_binary: Path) -> Path:
    """The PgBouncer directory: its ini, auth file, HBA file, certificate; readable by its OS user."""
    d = tmp_path / "pgbouncer"
    d.mkdir()
    cert = trustme.CA().issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(d / "server.crt"))
    cert.private_key_pem.write_to_path(str(d / "server.key"))
    (d / "userlist.txt").write_text(f'"app" "{APP_PASSWORD}"\n')
    (d / "hba.conf").write_text("host all all 127.0.0.1/32 scram-sha-256\n")
    ini = FIXTURE.read_text().format(pg_port=pg.port, port=pgcluster.free_port(), dir=d, password=APP_PASSWORD)
    if pgbouncer_ref.version(pgbouncer_binary) < (1, 21):  # the distribution's, where the reference is absent
        ini = re.sub(r"(?m)^max_prepared_statements = .*\n", "", ini)  # a 1.21 key that 1.18 refuses
    (d / "pgbouncer.ini").write_text(ini)
    (d / "bench.sql").write_text(SCRIPT)
    os.chmod(tmp_path, 0o755)
    if pg.os_user:
        for p in [d, *d.iterdir()]:
            shutil.chown(p, pg.os_user, pg.os_user)
    return d


@pytest.fixture
def tables(pg: pgcluster.Cluster) -> None:
    if not pg.psql(f"SELECT 1 FROM pg_database WHERE datname = '{OTHER_DB}'"):
        pg.psql(f"CREATE DATABASE {OTHER_DB} OWNER app")
    for db in ("app", OTHER_DB):
        pg.psql("DROP TABLE IF EXISTS migrate_tally, migrate_hits;"
                "CREATE TABLE migrate_tally (target int PRIMARY KEY, n int NOT NULL);"
                "CREATE TABLE migrate_hits (target int NOT NULL, client int NOT NULL);"
                f"INSERT INTO migrate_tally VALUES {', '.join(f'({t}, 0)' for t in TARGETS.values())};"
                "ALTER TABLE migrate_tally OWNER TO app; ALTER TABLE migrate_hits OWNER TO app", dbname=db)


def listen_port(ini: Path) -> int:
    m = re.search(r"(?m)^listen_port = (\d+)$", ini.read_text())
    assert m
    return int(m.group(1))


def wait_port(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def pgbench(port: int, workdir: Path, target: int) -> list[tuple[str, str, int, int]]:
    """Each run's (database, mode, transactions processed, failed) through the pooler on ``port``."""
    results = []
    env = dict(os.environ, PGPASSWORD=APP_PASSWORD, PGSSLMODE="require")  # client TLS carried too
    for db, mode, clients, xacts in RUNS:
        out = subprocess.run(
            [pgcluster.client_tool("pgbench"), "-n", "-f", str(workdir / "bench.sql"), "-D", f"target={target}",
             "-c", str(clients), "-j", "2", "-t", str(xacts), "-M", mode, "-h", "127.0.0.1", "-p", str(port),
             "-U", "app", db], env=env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout + out.stderr
        processed = re.search(r"number of transactions actually processed: (\d+)/(\d+)", out.stdout)
        failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
        assert processed and failed, out.stdout
        results.append((db, mode, int(processed.group(1)), int(failed.group(1))))
    return results


def database_effects(pg: pgcluster.Cluster, target: int) -> list[tuple[str, str]]:
    return [(pg.psql(f"SELECT n FROM migrate_tally WHERE target = {target}", dbname=db),
             pg.psql(f"SELECT count(*) FROM migrate_hits WHERE target = {target}", dbname=db))
            for db in ("app", OTHER_DB)]


def test_pgbench_through_pgbouncer_then_poold_on_the_converted_file(
    pg: pgcluster.Cluster, pgbouncer_binary: Path, workdir: Path, tables: None, tmp_path: Path
) -> None:
    ini = workdir / "pgbouncer.ini"
    port = listen_port(ini)
    bouncer = subprocess.Popen([str(pgbouncer_binary), str(ini)], user=pg.os_user, cwd=workdir,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: wait_port(port) or bouncer.poll() is not None, timeout=30)
        assert bouncer.poll() is None, bouncer.stderr.read().decode()  # type: ignore[union-attr]
        via_pgbouncer = pgbench(port, workdir, TARGETS["pgbouncer"])
    finally:
        bouncer.send_signal(signal.SIGINT)  # PgBouncer's safe shutdown
        bouncer.wait(30)
    wait_until(lambda: not wait_port(port), timeout=30)

    converted = tmp_path / "poold.toml"
    migrate = subprocess.run([sys.executable, "-m", "poold", "migrate", str(ini), "-o", str(converted)],
                             capture_output=True, text=True, timeout=60)
    assert migrate.returncode == 0, migrate.stderr
    assert "max_prepared_statements" not in migrate.stderr  # carried
    assert "auth_query" not in migrate.stderr and 'user = "app"' in converted.read_text()  # auth_user carried
    check = subprocess.run([sys.executable, "-m", "poold", "--check-config", str(converted)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    (tmp_path / "poold").mkdir()
    # Only what the converted file cannot know: where this test's control socket and HTTP go.
    p = Poold(tmp_path / "poold", pg, environ={"POOLD_CONTROL__SOCKET": str(tmp_path / "control.sock"),
                                               "POOLD_HTTP__PORT": str(pgcluster.free_port())})
    p.http_port = int(p.settings["environ"]["POOLD_HTTP__PORT"])  # type: ignore[index]
    p.config_path = converted
    p.port = port
    p.start()
    try:
        via_poold = pgbench(port, workdir, TARGETS["poold"])
        samples = scrape(p)
        assert value(samples, "poold_pool_max_size", pool="appdb.app") == 4  # the entry's pool_size
        assert value(samples, "poold_pool_max_size", pool="app_session.app") == 2
        assert value(samples, "poold_pool_max_size", pool=f"{OTHER_DB}.app") == 3  # default_pool_size
    finally:
        assert p.stop() == 0

    expected = [(db, mode, clients * xacts, 0) for db, mode, clients, xacts in RUNS]
    assert via_pgbouncer == expected
    assert via_poold == via_pgbouncer
    app_xacts = sum(c * x for db, _, c, x in RUNS if db != OTHER_DB)
    other_xacts = sum(c * x for db, _, c, x in RUNS if db == OTHER_DB)
    assert database_effects(pg, TARGETS["pgbouncer"]) == [(str(app_xacts),) * 2, (str(other_xacts),) * 2]
    assert database_effects(pg, TARGETS["poold"]) == database_effects(pg, TARGETS["pgbouncer"])


def test_the_release_sample_converts_and_passes_check_config(tmp_path: Path) -> None:
    """PgBouncer 1.25.2's etc/pgbouncer.ini, taken from the release tarball itself (the unit
    tests' copy must be the same file), through the command line."""
    sample = (ROOT / "tests" / "fixtures" / "pgbouncer" / "sample-1.25.2.ini").read_text()
    try:
        tarball = pgbouncer_ref.reference_dir() / pgbouncer_ref.TARBALL
    except pgbouncer_ref.PgBouncerMissing:
        tarball = None  # a machine without the reference: the copy in the tree is the sample
    if tarball is not None:
        with tarfile.open(tarball) as tar:
            member = tar.extractfile("pgbouncer-1.25.2/etc/pgbouncer.ini")
            assert member is not None
            assert member.read().decode() == sample
    ini, out = tmp_path / "pgbouncer.ini", tmp_path / "poold.toml"
    ini.write_text(sample)
    migrate = subprocess.run([sys.executable, "-m", "poold", "migrate", str(ini), "-o", str(out)],
                             capture_output=True, text=True, timeout=60)
    assert migrate.returncode == 0, migrate.stderr
    assert migrate.stderr.splitlines() == [
        "poold migrate: logfile: not-applicable: " + NOT_APPLICABLE["logfile"],
        "poold migrate: pidfile: not-applicable: " + NOT_APPLICABLE["pidfile"],
    ]
    check = subprocess.run([sys.executable, "-m", "poold", "--check-config", str(out)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
