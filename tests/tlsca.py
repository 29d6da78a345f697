"""A test certificate authority (trustme) and a PostgreSQL cluster that speaks TLS with it.

``issue(dir, os_user)`` writes the CA, the server's certificate and key (for
``127.0.0.1`` and ``localhost``) and a client certificate for the role
``certuser``; ``enable(cluster, files)`` turns ``ssl`` on in the cluster and puts
``hostssl ... cert`` for ``certuser`` first in its pg_hba.conf. Files PostgreSQL
reads belong to its OS user, keys are 0600, as both PostgreSQL and libpq demand.
"""

from __future__ import annotations

import datetime
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

CERT_ROLE = "certuser"


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    authority: trustme.CA


def issue(directory: Path, os_user: str | None, authority: trustme.CA | None = None,
          not_after: datetime.datetime | None = None) -> TlsFiles:
    """A CA (``authority`` or a new one) and the certificates the tests use, in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    ca = authority or trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost", not_after=not_after)
    client = ca.issue_cert(CERT_ROLE, common_name=CERT_ROLE)
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key",
                     directory / "client.pem", directory / "client.key", ca)
    ca.cert_pem.write_to_path(str(files.ca))
    server.cert_chain_pems[0].write_to_path(str(files.server_cert))
    server.private_key_pem.write_to_path(str(files.server_key))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    for path in (files.server_key, files.client_key):
        os.chmod(path, 0o600)
    if os_user:
        for path in (files.ca, files.server_cert, files.server_key):
            shutil.chown(path, os_user, os_user)
    return files


def server_conf(files: TlsFiles) -> list[str]:
    """postgresql.conf lines for TLS with ``files``."""
    return ["ssl = on", f"ssl_cert_file = '{files.server_cert}'", f"ssl_key_file = '{files.server_key}'",
            f"ssl_ca_file = '{files.ca}'"]


def require_cert_for(datadir: Path, role: str = CERT_ROLE) -> None:
    """``hostssl ... cert`` for ``role`` ahead of initdb's trust lines (and no plain
    connection for it)."""
    hba = datadir / "pg_hba.conf"
    text = hba.read_text()
    hba.write_text(f"hostssl all {role} 127.0.0.1/32 cert\nhostnossl all {role} 127.0.0.1/32 reject\n" + text)


def dsn_params(files: TlsFiles, sslmode: str = "verify-full") -> str:
    """The libpq parameters of a server DSN that verifies the server with ``files``."""
    return f"sslmode={sslmode} sslrootcert={files.ca}"


def init(cluster: Any, directory: Path, tls: bool) -> TlsFiles | None:
    """initdb ``cluster`` (a pgcluster.Cluster), speaking TLS with new files in
    ``directory`` when ``tls``; a DSN for it then carries ``cluster.tls_params``."""
    if not tls:
        cluster.init()
        return None
    files = issue(directory, cluster.os_user)
    cluster.init(*server_conf(files))
    require_cert_for(cluster.datadir)
    cluster.tls_params = dsn_params(files)
    return files
