"""Client TLS: 'S' and a TLS session when configured, 'N' otherwise; a test CA from trustme."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import trustme

from tests.conftest import Poold, pgcluster, wait_until
from tests.e2e.test_http import scrape, value


@pytest.fixture
def ca(tmp_path: Path) -> tuple[trustme.CA, Path, Path, Path]:
    authority = trustme.CA()
    cert = authority.issue_cert("localhost", "127.0.0.1")
    ca_pem, cert_pem, key_pem = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    authority.cert_pem.write_to_path(str(ca_pem))
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_pem), append=True)
    cert.private_key_pem.write_to_path(str(key_pem))
    return authority, ca_pem, cert_pem, key_pem


def tls_raw(cert: Path, key: Path, require: bool = False) -> str:
    return f'\n[tls]\ncert_file = "{cert}"\nkey_file = "{key}"\nrequire = {"true" if require else "false"}\n'


def test_tls_with_require_and_verify_full(poold_factory: Callable[..., Poold], ca: tuple) -> None:  # type: ignore[type-arg]
    _authority, ca_pem, cert_pem, key_pem = ca
    p = poold_factory(raw=tls_raw(cert_pem, key_pem))
    with psycopg.connect(p.dsn(sslmode="require"), prepare_threshold=None) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)
    verify = p.dsn(sslmode="verify-full", sslrootcert=str(ca_pem)).replace("host=127.0.0.1", "host=localhost")
    with psycopg.connect(verify, prepare_threshold=None) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 'verified'").fetchone() == ("verified",)
    r = subprocess.run([pgcluster.client_tool("psql"), "-X", "-c", "\\conninfo", "-c", "SELECT 42"],
                       env=p.env() | {"PGSSLMODE": "verify-full", "PGSSLROOTCERT": str(ca_pem), "PGHOST": "localhost"},
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "SSL connection (protocol: TLSv1." in r.stdout and "42" in r.stdout
    # a client that does not ask for TLS still gets in (require = false)
    with psycopg.connect(p.dsn(sslmode="disable"), prepare_threshold=None) as conn:
        assert not conn.pgconn.ssl_in_use


def test_wrong_ca_is_refused_by_the_client(poold_factory: Callable[..., Poold], ca: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    _authority, _ca_pem, cert_pem, key_pem = ca
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    p = poold_factory(raw=tls_raw(cert_pem, key_pem))
    for _ in range(3):
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            psycopg.connect(p.dsn(sslmode="verify-full", sslrootcert=str(other)).replace("host=127.0.0.1", "host=localhost"))
    # a failed handshake leaves no client behind (each would count against max_client_conn),
    # and no error in the log: the client went away
    assert wait_until(lambda: value(scrape(p), "poold_clients", state="login") == 0)
    assert "never retrieved" not in p.log_text()
    with psycopg.connect(p.dsn(sslmode="require"), prepare_threshold=None):
        assert value(scrape(p), "poold_clients", state="idle") == 1


def test_require_refuses_plain_clients(poold_factory: Callable[..., Poold], ca: tuple) -> None:  # type: ignore[type-arg]
    _authority, _ca_pem, cert_pem, key_pem = ca
    p = poold_factory(raw=tls_raw(cert_pem, key_pem, require=True))
    with pytest.raises(psycopg.OperationalError, match="TLS is required"):
        psycopg.connect(p.dsn(sslmode="disable"))
    with psycopg.connect(p.dsn(sslmode="require"), prepare_threshold=None) as conn:
        assert conn.pgconn.ssl_in_use


def test_without_tls_the_answer_is_n(poold_factory: Callable[..., Poold]) -> None:
    p = poold_factory()
    with pytest.raises(psycopg.OperationalError, match="does not support SSL"):
        psycopg.connect(p.dsn(sslmode="require"))
    with psycopg.connect(p.dsn(sslmode="prefer"), prepare_threshold=None) as conn:
        assert not conn.pgconn.ssl_in_use
