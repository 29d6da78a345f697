"""Client authentication against a real PostgreSQL: empty passwords, the hba file, auth_query.

Logins are driven by real clients (psycopg, psql) where they can express the case,
and by a raw protocol client with scramp's SCRAM client where they cannot (libpq
never sends an empty password).
"""

from __future__ import annotations

import struct
import subprocess
import sys
from collections.abc import Callable

import pytest
import scramp

from tests.conftest import APP_PASSWORD, Poold, RawClient

CORES = [pytest.param({}, id="c-core"),
         pytest.param({"POOLD_RELAY_CORE": "python", "POOLD_SOCKET_IO": "asyncio"}, id="python-core")]


def raw_login(port: int, user: str, password: str, database: str = "app") -> dict[str, str] | None:
    """Log in with a raw client, answering SCRAM, md5 or a cleartext request with
    ``password``; None when poold says ReadyForQuery, else the ErrorResponse's fields."""
    import hashlib

    raw = RawClient(port)
    try:
        raw.startup(user=user, database=database)
        client: scramp.ScramClient | None = None
        while True:
            t, body = raw.read_message()
            if t == b"E":
                return {chr(f[0]): f[1:].decode() for f in body.split(b"\0") if f}
            if t == b"Z":
                return None
            if t != b"R":
                continue
            code = struct.unpack_from("!I", body)[0]
            if code == 10:  # AuthenticationSASL
                client = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
                first = client.get_client_first().encode()
                raw.send(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first)
            elif code == 11:  # SASLContinue
                assert client is not None
                client.set_server_first(body[4:].decode())
                raw.send(b"p", client.get_client_final().encode())
            elif code == 5:  # MD5Password
                inner = hashlib.md5((password + user).encode()).hexdigest()
                raw.send(b"p", b"md5" + hashlib.md5(inner.encode() + body[4:8]).hexdigest().encode() + b"\0")
            elif code == 3:  # CleartextPassword
                raw.send(b"p", password.encode() + b"\0")
    finally:
        raw.close()


def check_config(p: Poold) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "poold", "--check-config", str(p.config_path)],
                          capture_output=True, text=True, timeout=30)


# -- empty passwords -------------------------------------------------------------


@pytest.mark.parametrize("environ", CORES)
def test_empty_password_in_the_auth_file_is_refused_at_load(poold_factory: Callable[..., Poold],
                                                            environ: dict[str, str]) -> None:
    p = poold_factory(environ=environ)
    userlist = p.tmp / "userlist.txt"
    good = userlist.read_text()
    userlist.write_text(good + '"nopw" ""\n')  # line 3
    r = check_config(p)
    assert r.returncode != 0, r.stdout
    assert "auth.file" in r.stderr and "line 3" in r.stderr and "empty password" in r.stderr, r.stderr
    # a reload is refused whole, naming the line; the old auth file keeps serving
    reload = p.poolctl("reload")
    assert reload.returncode != 0 and "line 3" in reload.stdout + reload.stderr
    assert raw_login(p.port, "app", APP_PASSWORD) is None
    err = raw_login(p.port, "nopw", "")
    assert err is not None and err["C"] == "28P01", err
    # nor does the daemon start with it
    p.stop()
    start = subprocess.run([sys.executable, "-m", "poold", "-c", str(p.config_path)],
                           capture_output=True, text=True, timeout=30)
    assert start.returncode == 78 and "line 3" in start.stderr, start.stderr


def test_md5_hash_of_the_empty_password_is_refused_at_load(poold_factory: Callable[..., Poold]) -> None:
    import hashlib

    p = poold_factory()
    userlist = p.tmp / "userlist.txt"
    userlist.write_text(userlist.read_text() + f'"nopw" "md5{hashlib.md5(b"nopw").hexdigest()}"\n')
    r = check_config(p)
    assert r.returncode != 0 and "line 3" in r.stderr and "empty password" in r.stderr, r.stderr
