"""TLS on the server legs: a PostgreSQL with ssl=on and a test CA (trustme), every
libpq sslmode, client certificates, large results and COPY through the TLS session,
cancel and query_timeout, verification failures, a reload to a new CA, and what
``poolctl servers`` says. Each relay test runs on both twins: the C transport
(``_servertls.c`` in ``_sockio``) and the Python reference (``servertls.TlsTransport``,
``POOLD_SOCKET_IO=asyncio``, with the Python relay core).

``sslnegotiation=direct`` runs against PostgreSQL 18 (scripts/pg_npm.py: the
distribution's PostgreSQL is older than 17, which brought it).

The whole e2e tier also runs through TLS legs: ``POOLD_TEST_SERVER_TLS=1``
(``make test`` does, see the Makefile) gives the session's cluster ssl=on and
every poold DSN ``sslmode=verify-full``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from tests import tlsca
from tests.conftest import APP_PASSWORD, Poold, pgcluster, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import pg_npm  # noqa: E402

TWINS = {
    "c": {},
    "python": {"POOLD_SOCKET_IO": "asyncio", "POOLD_RELAY_CORE": "python", "POOLD_FRAME_SCANNER": "python"},
    # the system's libpq (Debian's libpq5, with the system's libssl) through psycopg's ctypes binding
    "system-libpq": {"PSYCOPG_IMPL": "python"},
}

SSL_OF_BACKEND = "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def start_tls_cluster(authority: trustme.CA | None = None, not_after: datetime.datetime | None = None,
                      bindir: Path | None = None, conf: tuple[str, ...] = ()
                      ) -> tuple[pgcluster.Cluster, tlsca.TlsFiles]:
    """A cluster with ssl=on in a short temporary directory (a Unix socket path has
    at most 107 bytes), of the PostgreSQL in ``bindir`` (pgcluster's by default), with
    ``conf``'s lines in its postgresql.conf; destroy() removes it."""
    base = Path(tempfile.mkdtemp(prefix="poold-tls-"))
    os.chmod(base, 0o755)
    cluster = pgcluster.Cluster(base=str(base), bindir=bindir)
    tls = tlsca.issue(base / "tls", cluster.os_user, authority, not_after)
    cluster.init(*tlsca.server_conf(tls), *conf)
    tlsca.require_cert_for(cluster.datadir)
    cluster.tls_params = tlsca.dsn_params(tls)
    cluster.start()
    cluster.create_role_and_db("app", APP_PASSWORD)
    cluster.psql(f"CREATE ROLE {tlsca.CERT_ROLE} LOGIN; GRANT CONNECT ON DATABASE app TO {tlsca.CERT_ROLE}")
    return cluster, tls


@pytest.fixture(scope="module")
def tls_pg() -> Iterator[tuple[pgcluster.Cluster, tlsca.TlsFiles]]:
    cluster, files = start_tls_cluster()
    yield cluster, files
    cluster.destroy()


@pytest.fixture(params=sorted(TWINS))
def twin(request: pytest.FixtureRequest) -> dict[str, str]:
    return TWINS[request.param]


def server_dsn(cluster: pgcluster.Cluster, **params: str) -> str:
    base = {"host": "127.0.0.1", "port": str(cluster.port), "dbname": "app", "user": "app",
            "password": APP_PASSWORD} | params
    return " ".join(f"{k}={v}" for k, v in base.items())


def databases(**dsns: str) -> str:
    return "".join(f'\n[databases.{name}]\ndsn = "{dsn}"\n' for name, dsn in dsns.items())


def encrypted_key(files: tlsca.TlsFiles, directory: Path, password: bytes) -> Path:
    key = serialization.load_pem_private_key(files.client_key.read_bytes(), None)
    path = directory / "client-encrypted.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(password)))
    path.chmod(0o600)
    return path


def test_every_sslmode_and_client_certificates(poold_factory: Callable[..., Poold], tls_pg: tuple,  # type: ignore[type-arg]
                                               twin: dict[str, str], tmp_path: Path) -> None:
    """Each libpq sslmode as libpq defines it (allow tries plain first, prefer TLS
    first), ssl_min_protocol_version, and certificate authentication (hostssl ...
    cert) with a plain and an encrypted key (sslpassword)."""
    cluster, files = tls_pg
    ca = str(files.ca)
    cert = {"user": tlsca.CERT_ROLE, "sslmode": "verify-full", "sslrootcert": ca, "sslcert": str(files.client_cert)}
    raw = databases(
        m_disable=server_dsn(cluster, sslmode="disable"),
        m_allow=server_dsn(cluster, sslmode="allow"),
        m_prefer=server_dsn(cluster, sslmode="prefer"),
        m_default=server_dsn(cluster),
        m_require=server_dsn(cluster, sslmode="require"),
        m_verify_ca=server_dsn(cluster, sslmode="verify-ca", sslrootcert=ca),
        m_verify_full=server_dsn(cluster, sslmode="verify-full", sslrootcert=ca),
        m_tls13=server_dsn(cluster, sslmode="verify-full", sslrootcert=ca, ssl_min_protocol_version="TLSv1.3"),
        m_cert=server_dsn(cluster, **cert, sslkey=str(files.client_key)),
        m_cert_pw=server_dsn(cluster, **cert, sslkey=str(encrypted_key(files, tmp_path, b"k3y-pw")),
                             sslpassword="k3y-pw"),
    )
    p = poold_factory(raw=raw, environ=twin | {"POOLD_AUTH__ADMIN_USERS": "app"}, min_size=0)
    expected = {"m_disable": False, "m_allow": False, "m_prefer": True, "m_default": True, "m_require": True,
                "m_verify_ca": True, "m_verify_full": True, "m_tls13": True, "m_cert": True, "m_cert_pw": True}
    for name, tls in expected.items():
        with psycopg.connect(p.dsn(dbname=name), prepare_threshold=None, autocommit=True) as conn:
            ssl, version = conn.execute(SSL_OF_BACKEND).fetchone()  # type: ignore[misc]
            assert ssl is tls, name
            if name == "m_tls13":
                assert version == "TLSv1.3"
            user = conn.execute("SELECT current_user").fetchone()[0]  # type: ignore[index]
            assert user == (tlsca.CERT_ROLE if name.startswith("m_cert") else "app")
            # a few round trips, and a statement error that leaves the leg in sync
            for i in range(20):
                assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1/0")
            assert conn.execute("SELECT 'after'").fetchone() == ("after",)
    ready = next(json.loads(line) for line in p.log_text().splitlines() if '"ready"' in line)
    assert ("psycopg_binary" in ready["libpq"]) is ("PSYCOPG_IMPL" not in twin), ready["libpq"]
    rows = json.loads(p.poolctl("--json", "servers").stdout)
    by_pool = {r["pool"]: r for r in rows}
    assert by_pool["m_disable.app"]["tls"] == "no"
    assert by_pool["m_tls13.app"]["tls"] == "TLSv1.3"
    assert by_pool["m_verify_full.app"]["tls"].startswith("TLSv1.")
    table = p.poolctl("servers").stdout
    assert table.splitlines()[0].split()[-1] == "TLS" and "TLSv1.3" in table
    # the admin console's SHOW SERVERS: PgBouncer's tls column, empty for a plain leg
    with psycopg.connect(p.dsn(dbname="pgbouncer"), autocommit=True) as console:
        res = console.pgconn.exec_(b"SHOW SERVERS")
        names = [res.fname(i).decode() for i in range(res.nfields)]  # type: ignore[union-attr]
        shown = {res.get_value(r, names.index("database")).decode():  # type: ignore[union-attr]
                 (res.get_value(r, names.index("tls")) or b"").decode() for r in range(res.ntuples)}
    assert shown["m_disable"] == "" and shown["m_tls13"] == "TLSv1.3"


def test_large_results_and_copy_both_ways(poold_factory: Callable[..., Poold], tls_pg: tuple,  # type: ignore[type-arg]
                                          twin: dict[str, str]) -> None:
    """100k rows / 20 MB through the TLS leg, COPY out and in of 20 MB, and pipelined
    queries: the bytes arrive whole and in order (records larger than a read, and
    decrypted bytes OpenSSL holds while the socket is quiet, are not stranded)."""
    cluster, files = tls_pg
    raw = databases(tls=server_dsn(cluster, sslmode="verify-full", sslrootcert=str(files.ca)))
    p = poold_factory(environ=twin, raw=raw, min_size=0)
    with psycopg.connect(p.dsn(dbname="tls"), prepare_threshold=None, autocommit=True) as conn:
        assert conn.execute(SSL_OF_BACKEND).fetchone()[0] is True  # type: ignore[index]
        large_results_and_copy(conn, f"copy_in_{os.getpid()}_{len(twin)}")


def large_results_and_copy(conn: psycopg.Connection[Any], table: str) -> None:
    """100k rows / 20 MB, COPY out and in of 20 MB, and 50 pipelined queries on ``conn``,
    checked byte for byte; ``table`` is created and dropped."""
    rows = conn.execute("SELECT g, repeat(md5(g::text), 7) FROM generate_series(1, 100000) g").fetchall()
    assert len(rows) == 100000 and sum(len(r[1]) for r in rows) == 100000 * 224
    assert rows[-1][0] == 100000 and rows[4242][1] == hashlib.md5(b"4243").hexdigest() * 7
    out = bytearray()
    with conn.cursor().copy("COPY (SELECT g, repeat(md5(g::text), 7) FROM generate_series(1, 100000) g) "
                            "TO STDOUT") as copy:
        for chunk in copy:
            out += chunk
    assert len(out) > 20_000_000
    expected = b"".join(b"%d\t%s\n" % (g, hashlib.md5(b"%d" % g).hexdigest().encode() * 7)
                        for g in range(1, 100001))
    assert hashlib.sha256(out).digest() == hashlib.sha256(expected).digest()
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"CREATE TABLE {table} (g int, t text)")
    with conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
        for start in range(0, len(expected), 1 << 20):
            copy.write(expected[start:start + (1 << 20)])
    count, total, digest = conn.execute(  # type: ignore[misc]
        f"SELECT count(*), sum(length(t)), md5(string_agg(t, '' ORDER BY g)) FROM {table}").fetchone()
    assert (count, total) == (100000, 100000 * 224)
    want = hashlib.md5(b"".join(hashlib.md5(b"%d" % g).hexdigest().encode() * 7 for g in range(1, 100001)))
    assert digest == want.hexdigest()
    conn.execute(f"DROP TABLE {table}")
    with conn.pipeline():
        curs = [conn.execute("SELECT %s::int, repeat('z', 40000)", (i,)) for i in range(50)]
    assert [c.fetchone()[0] for c in curs] == list(range(50))  # type: ignore[index]


def test_cancel_and_query_timeout(poold_factory: Callable[..., Poold], tls_pg: tuple,  # type: ignore[type-arg]
                                  twin: dict[str, str]) -> None:
    cluster, files = tls_pg
    raw = databases(tls=server_dsn(cluster, sslmode="verify-full", sslrootcert=str(files.ca)))
    p = poold_factory(environ=twin, raw=raw, query_timeout=1, statement_timeout=0)
    with psycopg.connect(p.dsn(dbname="tls"), prepare_threshold=None, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(20)")  # poold's query_timeout cancels it
        assert conn.execute(SSL_OF_BACKEND).fetchone()[0] is True  # type: ignore[index]
        failures: list[BaseException] = []

        def cancel() -> None:
            try:
                conn.cancel_safe()
            except BaseException as exc:  # noqa: BLE001  # asserted below, in the test's thread
                failures.append(exc)

        timer = threading.Timer(0.5, cancel)
        timer.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(0.9)")  # the client's own cancel, before query_timeout
        finally:
            timer.join(timeout=10)
        assert failures == []  # the cancel itself succeeded: poold wrote nothing on its connection
        assert conn.execute("SELECT 'goes on'").fetchone() == ("goes on",)
    assert '"query_timeout"' in p.log_text()


def test_max_lifetime_recycles_tls_connections(poold_factory: Callable[..., Poold], tls_pg: tuple,  # type: ignore[type-arg]
                                               twin: dict[str, str]) -> None:
    """psycopg_pool closes an expired TLS connection through libpq after poold relayed
    on it (the session state is libpq's again), and its replacement is TLS too."""
    cluster, files = tls_pg
    raw = databases(tls=server_dsn(cluster, sslmode="verify-full", sslrootcert=str(files.ca)))
    p = poold_factory(environ=twin, raw=raw, max_lifetime=1, min_size=1, max_size=2)
    seen = set()
    with psycopg.connect(p.dsn(dbname="tls"), prepare_threshold=None, autocommit=True) as conn:
        deadline = time.monotonic() + 20
        while len(seen) < 3 and time.monotonic() < deadline:
            pid, ssl = conn.execute("SELECT pg_backend_pid(), ssl FROM pg_stat_ssl "
                                    "WHERE pid = pg_backend_pid()").fetchone()  # type: ignore[misc]
            assert ssl is True
            seen.add(pid)
            time.sleep(0.2)
    assert len(seen) >= 3
    # the expired ones were closed by libpq (a clean TLS close: no "could not receive data" on the server)
    wait_until(lambda: int(cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' "
                                         "AND backend_type = 'client backend'")) <= 3)


def crl(files: tlsca.TlsFiles, path: Path, revoke: bool) -> Path:
    """A CRL of the test CA, revoking the server's certificate when ``revoke``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    ca_cert = x509.load_pem_x509_certificate(files.authority.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(files.authority.private_key_pem.bytes(), None)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject).last_update(now)
               .next_update(now + datetime.timedelta(days=1)))
    if revoke:
        serial = x509.load_pem_x509_certificate(files.server_cert.read_bytes()).serial_number
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
    path.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))  # type: ignore[arg-type]
    return path


def pool_row(p: Poold, pool: str) -> dict[str, object]:
    rows = json.loads(p.poolctl("--json", "pools").stdout)
    return next(r for r in rows if r["pool"] == pool)


def connect_error(p: Poold, dbname: str) -> psycopg.OperationalError:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(p.dsn(dbname=dbname), prepare_threshold=None, connect_timeout=10).close()
    return info.value


def test_verification_failures_are_told_and_open_the_breaker(
    poold_factory: Callable[..., Poold], tls_pg: tuple, pg: pgcluster.Cluster, tmp_path: Path  # type: ignore[type-arg]
) -> None:
    """A wrong CA, an expired server certificate and a server without TLS under
    require: the client gets a FATAL naming the pool and libpq's reason, no trace
    and no secret; the breaker opens; /health/database and poolctl pools say why."""
    cluster, files = tls_pg
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    expired, _ = start_tls_cluster(files.authority, datetime.datetime.now(datetime.UTC)
                                   - datetime.timedelta(days=1))
    try:
        plain_port = pg.port
        raw = databases(
            wrong_ca=server_dsn(cluster, sslmode="verify-full", sslrootcert=str(other_ca)),
            revoked=server_dsn(cluster, sslmode="verify-full", sslrootcert=str(files.ca),
                               sslcrl=str(crl(files, tmp_path / "revoked.crl", revoke=True))),
            crl_ok=server_dsn(cluster, sslmode="verify-full", sslrootcert=str(files.ca),
                              sslcrl=str(crl(files, tmp_path / "empty.crl", revoke=False))),
            expired=server_dsn(expired, sslmode="verify-full", sslrootcert=str(files.ca)),
            no_tls=server_dsn(pg, sslmode="require") if not pg.tls_params else
            f"host=127.0.0.1 port={plain_port} dbname=app user=app password={APP_PASSWORD} sslmode=disable",
        )
        p = poold_factory(raw=raw, min_size=0, breaker_failures=2, breaker_reset=30)
        with psycopg.connect(p.dsn(dbname="crl_ok"), prepare_threshold=None) as conn:  # a CRL that revokes nothing
            assert conn.execute(SSL_OF_BACKEND).fetchone()[0] is True  # type: ignore[index]
        reasons = {"wrong_ca": "certificate verify failed: self-signed certificate in certificate chain",
                   "revoked": "certificate verify failed: certificate revoked",
                   "expired": "certificate verify failed: certificate has expired",
                   "no_tls": "server does not support SSL, but SSL was required"}
        if pg.tls_params:  # the session cluster speaks TLS here: a plain-only server is not at hand
            reasons.pop("no_tls")
        for name, reason in reasons.items():
            first = connect_error(p, name)
            text = str(first)
            assert f"{name!r}" in text or f'"{name}"' in text, text
            assert reason in text, text
            assert "Traceback" not in text and APP_PASSWORD not in text
            assert "FATAL:  poold: " in text, text  # an ErrorResponse of poold's (libpq keeps no SQLSTATE at connect)
            second = connect_error(p, name)
            assert "unavailable (circuit breaker open" in str(second) and reason in str(second), str(second)
            row = pool_row(p, f"{name}.app")
            assert row["breaker"] == "open" and reason in str(row["last_error"]), row
            status, body = p.http("/health/database")
            assert status == 503
            health = json.loads(body)
            entry = next(e for e in (health["pools"] if isinstance(health, dict) and "pools" in health else health)
                         if e["pool"] == f"{name}.app")
            assert reason in json.dumps(entry), entry
        assert APP_PASSWORD not in p.log_text()
    finally:
        expired.destroy()


def test_reload_takes_a_new_ca_for_new_connections(poold_factory: Callable[..., Poold], tls_pg: tuple,  # type: ignore[type-arg]
                                                   tmp_path: Path) -> None:
    """The DSN's CA file changes on reload: new server connections verify with it;
    a session open before the reload keeps its connection until it ends."""
    cluster, files = tls_pg
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    good_ca = tmp_path / "good-ca.pem"
    shutil.copy(files.ca, good_ca)

    def raw(ca: Path) -> str:
        return databases(tls=server_dsn(cluster, sslmode="verify-full", sslrootcert=str(ca)))

    settings = {"mode": "session", "min_size": 0, "breaker_failures": 1, "breaker_reset": 30, "acquire_timeout": 3}
    p = poold_factory(raw=raw(other_ca), **settings)
    assert "certificate verify failed" in str(connect_error(p, "tls"))
    p.write_config(raw=raw(good_ca), **settings)
    assert p.poolctl("reload").returncode == 0

    def connects() -> psycopg.Connection[tuple[object, ...]] | None:
        try:
            return psycopg.connect(p.dsn(dbname="tls"), prepare_threshold=None, autocommit=True)
        except psycopg.OperationalError:
            return None  # (a reload that changes the DSN closes the breaker)

    held = wait_until(connects)
    assert isinstance(held, psycopg.Connection)
    try:
        assert held.execute(SSL_OF_BACKEND).fetchone()[0] is True  # type: ignore[index]
        p.write_config(raw=raw(other_ca), **settings)
        assert p.poolctl("reload").returncode == 0
        # a new server connection verifies with the new CA (the client waits for the
        # pool's working connection, held, up to acquire_timeout)
        assert "acquire_timeout" in str(connect_error(p, "tls"))
        assert "certificate verify failed" in str(pool_row(p, "tls.app")["last_error"])
        assert held.execute("SELECT 'old session goes on'").fetchone() == ("old session goes on",)
    finally:
        held.close()


# -- sslnegotiation=direct: PostgreSQL 17+ and libpq 17+ -----------------------


@pytest.fixture(scope="module")
def direct_pg() -> Iterator[tuple[pgcluster.Cluster, tlsca.TlsFiles]]:
    """PostgreSQL 18 (scripts/pg_npm.py) with ssl=on, logging how each connection
    negotiated TLS (trace_connection_negotiation, PostgreSQL 17+)."""
    cluster, files = start_tls_cluster(bindir=pg_npm.ensure_bindir(), conf=("trace_connection_negotiation = on",))
    yield cluster, files
    cluster.destroy()


def negotiated(cluster: pgcluster.Cluster, pid: int) -> list[str]:
    """How the server says backend ``pid`` negotiated TLS: "direct SSL connection
    accepted" (the handshake came first) or "SSLRequest accepted" (the round trip
    before it), from its log (log_line_prefix's "[%p]")."""
    log = (cluster.base / "server.log").read_text()
    return [line.split("LOG:  ", 1)[1] for line in log.splitlines()
            if f"[{pid}] LOG:  " in line and ("direct SSL" in line or "SSLRequest" in line)]


@pytest.mark.parametrize("twin", ["c", "python"], indirect=True)
def test_direct_negotiation_relays_through_the_session(poold_factory: Callable[..., Poold], direct_pg: tuple,  # type: ignore[type-arg]
                                                       twin: dict[str, str]) -> None:
    """A pool with sslnegotiation=direct (the TLS handshake without the SSLRequest round
    trip): the server's log says each of its server connections came direct, where a
    pool with sslnegotiation=postgres beside it came by SSLRequest; a large result,
    COPY both ways and a pipeline go through the relay on that session. (The system's
    libpq, 15, does not know the key: test_direct_negotiation_with_an_older_libpq.)"""
    cluster, files = direct_pg
    assert int(cluster.psql("SHOW server_version_num")) >= 170000
    tls = {"sslmode": "verify-full", "sslrootcert": str(files.ca)}
    raw = databases(direct=server_dsn(cluster, **tls, sslnegotiation="direct"),
                    request=server_dsn(cluster, **tls, sslnegotiation="postgres"))
    p = poold_factory(cluster, environ=twin, raw=raw, min_size=0)
    pids: dict[str, set[int]] = {"direct": set(), "request": set()}
    for name in pids:
        with psycopg.connect(p.dsn(dbname=name), prepare_threshold=None, autocommit=True) as conn:
            ssl, version = conn.execute(SSL_OF_BACKEND).fetchone()  # type: ignore[misc]
            assert (ssl, version) == (True, "TLSv1.3"), name
            if name == "direct":
                large_results_and_copy(conn, f"copy_direct_{os.getpid()}_{len(twin)}")
            for _ in range(3):
                pids[name].add(conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
    for pid in pids["direct"]:
        assert negotiated(cluster, pid) == ["direct SSL connection accepted"], pid
    for pid in pids["request"]:
        assert negotiated(cluster, pid) == ["SSLRequest accepted"], pid
    rows = {r["pool"]: r for r in json.loads(p.poolctl("--json", "servers").stdout)}
    assert rows["direct.app"]["tls"] == "TLSv1.3"


def test_direct_negotiation_with_an_older_libpq(tmp_path: Path, pg: pgcluster.Cluster) -> None:
    """The system's libpq (PSYCOPG_IMPL=python: Debian's 15) does not know sslnegotiation:
    poold's config check says so, naming the pool's DSN and the libpq it runs with."""
    config = Poold(tmp_path, pg, raw=databases(direct=server_dsn(
        pg, sslmode="require", sslnegotiation="direct"))).config_path
    env = {k: v for k, v in os.environ.items() if k != "POOLD_CONFIG"} | TWINS["system-libpq"]
    out = subprocess.run([sys.executable, "-m", "poold", "--check-config", str(config)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2, out
    assert ('databases.direct.dsn: invalid connection string: invalid connection option "sslnegotiation" '
            "(sslnegotiation needs libpq 17 or later; poold runs with libpq 15)") in out.stderr, out.stderr


def test_direct_negotiation_to_a_server_before_17(poold_factory: Callable[..., Poold], tls_pg: tuple  # type: ignore[type-arg]
                                                  ) -> None:
    """sslnegotiation=direct to PostgreSQL 15, which reads the TLS handshake as a bad
    startup packet and hangs up: a failed connect like a failed verification (the
    breaker counts it, then opens); the pool's client gets a FATAL naming the pool,
    libpq's words and what they mean here, and poolctl pools shows the same."""
    cluster, files = tls_pg
    assert int(cluster.psql("SHOW server_version_num")) < 170000
    raw = databases(direct=server_dsn(cluster, sslmode="verify-full", sslrootcert=str(files.ca),
                                      sslnegotiation="direct"))
    p = poold_factory(raw=raw, min_size=0, breaker_failures=2, breaker_reset=30)
    reason = ("SSL error: unexpected eof while reading (sslnegotiation=direct: the server closed the connection "
              "at the TLS handshake; direct needs PostgreSQL 17 or later, with ssl = on)")
    text = str(connect_error(p, "direct"))
    assert "FATAL:  poold: " in text and ("'direct'" in text or '"direct"' in text), text
    assert reason in text, text
    assert "Traceback" not in text and APP_PASSWORD not in text
    row = pool_row(p, "direct.app")
    assert row["breaker"] == "open" and reason in str(row["last_error"]), row
    assert "invalid length of startup packet" in (cluster.base / "server.log").read_text()
