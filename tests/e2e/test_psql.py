"""psql through the real poold process: queries, transactions, errors, COPY."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from tests.conftest import Poold, RawClient, pgcluster


def psql(p: Poold, *args: str, input: str | None = None, host: str = "127.0.0.1") -> subprocess.CompletedProcess[str]:
    env = p.env()
    env["PGHOST"] = host
    return subprocess.run(
        [pgcluster.client_tool("psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", *args],
        env=env, input=input, capture_output=True, text=True, timeout=60,
    )


@pytest.fixture(params=["transaction", "session"])
def poold(request: pytest.FixtureRequest, poold_factory: Callable[..., Poold]) -> Poold:
    return poold_factory(mode=request.param)


def test_simple_queries_over_tcp_and_unix_socket(poold: Poold) -> None:
    tcp = psql(poold, "-c", "SELECT 40 + 2", "-c", "SELECT current_database(), current_user")
    assert tcp.returncode == 0, tcp.stderr
    assert tcp.stdout.splitlines() == ["42", "app|app"]
    unix = psql(poold, "-c", "SELECT 'via unix'", host=str(poold.sockdir))
    assert unix.returncode == 0, unix.stderr
    assert unix.stdout.strip() == "via unix"


def test_transaction_block_commits(poold: Poold) -> None:
    r = psql(poold, input="CREATE TEMP TABLE IF NOT EXISTS t_dummy(x int);\n"
             "DROP TABLE IF EXISTS psql_tx; CREATE TABLE psql_tx(x int);\n"
             "BEGIN;\nINSERT INTO psql_tx VALUES (1);\nINSERT INTO psql_tx VALUES (2);\nCOMMIT;\n"
             "SELECT sum(x) FROM psql_tx;\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "3"


def test_error_inside_transaction_then_rollback(poold: Poold) -> None:
    script = (
        "DROP TABLE IF EXISTS psql_err; CREATE TABLE psql_err(x int);\n"
        "BEGIN;\nINSERT INTO psql_err VALUES (1);\nSELECT 1/0;\nSELECT 'ignored';\nROLLBACK;\n"
        "SELECT count(*) FROM psql_err;\n"
    )
    r = subprocess.run(
        [pgcluster.client_tool("psql"), "-X", "-At"], env=poold.env(), input=script,
        capture_output=True, text=True, timeout=60,
    )
    assert "division by zero" in r.stderr
    assert "current transaction is aborted" in r.stderr
    assert r.stdout.strip().splitlines()[-1] == "0"


def test_copy_from_stdin_and_to_stdout(poold: Poold) -> None:
    rows = "".join(f"{i}\tname {i}\n" for i in range(5000))
    r = psql(poold, "-c", "DROP TABLE IF EXISTS psql_copy", "-c", "CREATE TABLE psql_copy(id int, name text)",
             "-c", "COPY psql_copy FROM STDIN", input=rows)
    assert r.returncode == 0, r.stderr
    out = psql(poold, "-c", "COPY (SELECT * FROM psql_copy ORDER BY id) TO STDOUT")
    assert out.returncode == 0, out.stderr
    assert out.stdout == rows


def test_wrong_password_unknown_database_and_md5_user(poold_factory: Callable[..., Poold]) -> None:
    p = poold_factory(auth_type="md5")
    env = p.env()
    bad = subprocess.run([pgcluster.client_tool("psql"), "-X", "-c", "SELECT 1"], env=env | {"PGPASSWORD": "nope"},
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and 'password authentication failed for user "app"' in bad.stderr
    nodb = subprocess.run([pgcluster.client_tool("psql"), "-X", "-d", "nosuchdb", "-c", "SELECT 1"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert nodb.returncode != 0 and 'database "nosuchdb" does not exist' in nodb.stderr
    md5 = subprocess.run([pgcluster.client_tool("psql"), "-X", "-At", "-U", "md5user", "-c", "SELECT current_user"],
                         env=env, capture_output=True, text=True, timeout=30)
    # md5user authenticates to poold; the server connection logs in as the DSN's user
    assert md5.returncode == 0, md5.stderr
    assert md5.stdout.strip() == "app"


def test_sqlstates_of_login_failures(poold_factory: Callable[..., Poold]) -> None:
    p = poold_factory(auth_type="md5")
    raw = RawClient(p.port)
    raw.startup(database="nosuchdb")
    assert raw.read_error()["C"] == "3D000"
    raw.close()
    raw = RawClient(p.port)
    raw.startup()
    t, body = raw.read_message()
    assert t == b"R" and body[:4] == b"\0\0\0\5"  # AuthenticationMD5Password
    raw.send(b"p", b"md5" + b"0" * 32 + b"\0")
    err = raw.read_error()
    assert (err["S"], err["C"]) == ("FATAL", "28P01")
    raw.close()
