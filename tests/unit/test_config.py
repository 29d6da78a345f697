"""Configuration: defaults, environment overrides, and errors that name the key."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from poold.config import ConfigError, load_config, parse_env_file

BASE = """
[databases.app]
dsn = "host=127.0.0.1 port=5432 dbname=app"
"""


def write(tmp_path: Path, text: str, env_file: str | None = None) -> Path:
    p = tmp_path / "poold.toml"
    p.write_text(text)
    if env_file is not None:
        (tmp_path / "poold.env").write_text(env_file)
    return p


def errors_of(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ or {})
    return info.value.errors


def test_formula_defaults(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, BASE), {})
    cpus = os.cpu_count() or 1
    assert c.pool.db_cpu_count == cpus
    assert c.pool.max_size == cpus * 2 + 4
    assert c.pool.min_size == math.ceil(c.pool.max_size * 0.25)
    assert (c.pool.acquire_timeout, c.pool.idle_timeout) == (60, 10)
    assert (c.pool.statement_timeout, c.pool.query_timeout) == (15, 15)
    assert c.listen.port == 6432 and c.pool.mode == "transaction"


def test_db_cpu_count_drives_the_formula(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, "[pool]\ndb_cpu_count = 16\n" + BASE), {})
    assert (c.pool.max_size, c.pool.min_size) == (36, 9)
    assert c.databases["app"].pool.max_size == 36


def test_short_env_names(tmp_path: Path) -> None:
    env = {"DB_POOL_MAX": "8", "DB_POOL_MIN": "3", "DB_ACQUIRE_TIMEOUT": "7",
           "DB_IDLE_TIMEOUT": "4", "DB_STATEMENT_TIMEOUT": "2500"}
    c = load_config(write(tmp_path, BASE), env)
    p = c.databases["app"].pool
    assert (p.max_size, p.min_size, p.acquire_timeout, p.idle_timeout) == (8, 3, 7, 4)
    assert p.statement_timeout == 2.5  # milliseconds in the variable
    assert c.overrides["pool.max_size"].startswith("DB_POOL_MAX")


def test_min_follows_an_overridden_max(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, BASE), {"DB_POOL_MAX": "12"})
    assert c.pool.min_size == 3


def test_poold_section_key_scheme(tmp_path: Path) -> None:
    env = {"POOLD_LISTEN__PORT": "7000", "POOLD_POOL__MODE": "session",
           "POOLD_DATABASES__APP__MAX_SIZE": "3", "POOLD_DATABASES__OTHER__DSN": "host=/tmp dbname=x"}
    c = load_config(write(tmp_path, BASE), env)
    assert c.listen.port == 7000
    assert c.databases["app"].pool.mode == "session"
    assert c.databases["app"].pool.max_size == 3
    assert c.databases["other"].conninfo["dbname"] == "x"


def test_env_file_wins_over_process_environment(tmp_path: Path) -> None:
    path = write(tmp_path, BASE, env_file="# comment\nDB_POOL_MAX=9\nexport POOLD_LISTEN__PORT='7001'\n")
    c = load_config(path, {"DB_POOL_MAX": "4"})
    assert c.pool.max_size == 9 and c.listen.port == 7001
    assert c.env_file == str(tmp_path / "poold.env")


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        ("[pool]\nmax_size = 3\nmin_size = 5\n", {}, "pool.min_size: must be <= max_size (3)"),
        ("", {"DB_POOL_MAX": "2", "DB_POOL_MIN": "4"}, "pool.min_size: must be <= max_size (2)"),
        ("", {"DB_POOL_MAX": "lots"}, "pool.max_size: must be an integer"),
        ("", {"DB_STATEMENT_TIMEOUT": "soon"}, "pool.statement_timeout: DB_STATEMENT_TIMEOUT"),
        ("[pool]\nmode = 'statement'\n", {}, "pool.mode: must be one of session, transaction"),
        ("[pool]\nacquire_timeout = 0\n", {}, "pool.acquire_timeout: must be > 0"),
        ("[pool]\npressure_threshold = 1.5\n", {}, "pool.pressure_threshold: must be in (0, 1]"),
        ("[pool]\nmax_prepared_statements = -1\n", {}, "pool.max_prepared_statements: must be >= 0"),
        ("[pool]\nmax_sise = 3\n", {}, "pool.max_sise: unknown key"),
        ("[listen]\nport = 70000\n", {}, "listen.port: must be in 1..65535"),
        ("[listen]\nport = 'x'\n", {}, "listen.port: must be an integer"),
        ("[auth]\ntype = 'password'\n", {}, "auth.type: must be one of"),
        ("[clients]\nmax_client_conn = 0\n", {}, "clients.max_client_conn: must be >= 1"),
        ("[auth]\ntype = 'hba'\n", {}, 'auth.hba_file: required by auth.type = "hba"'),
        ("[auth]\nuser = 'pgbouncer'\nquery = 'SELECT 1'\n", {}, "auth.query: must take the user name as $1"),
        ("[auth]\nquery_ttl = -1\n", {}, "auth.query_ttl: must be >= 0"),
        ("[tls]\nca_file = '/nonexistent/ca.pem'\n", {}, "tls.ca_file: needs cert_file and key_file"),
        ("[clients]\nmax_login_conn = 0\n", {}, "clients.max_login_conn: must be >= 1"),
        ("[clients]\nauth_failure_delay = -1\n", {}, "clients.auth_failure_delay: must be in 0..login_timeout (60)"),
        ("[clients]\nlogin_timeout = 2\n", {"POOLD_CLIENTS__AUTH_FAILURE_DELAY": "3"},
         "clients.auth_failure_delay: must be in 0..login_timeout (2)"),
        ("[bogus]\n", {}, "bogus: unknown section"),
        ("", {"POOLD_POOL__IDLE_TIMEOUT": "-1"}, "pool.idle_timeout: must be > 0"),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, text: str, environ: dict[str, str], expected: str) -> None:
    errs = errors_of(tmp_path, text + BASE, environ)
    assert any(e.startswith(expected) for e in errs), errs


def test_database_errors(tmp_path: Path) -> None:
    errs = errors_of(tmp_path, "[databases.a]\ndsn = 'host=x sslmode=requir'\n[databases.b]\ndsn = 'nonsense'\n"
                     "[databases.c]\ndsn = 'host=x'\nmax_size = -2\n")
    assert any(e.startswith('databases.a.dsn: invalid sslmode value: "requir"') for e in errs), errs
    assert any(e.startswith("databases.b.dsn: invalid connection string") for e in errs)
    assert "databases.c.max_size: must be >= 1" in errs


def test_server_leg_sslmode_is_libpqs(tmp_path: Path) -> None:
    """No sslmode in the DSN: libpq's default (prefer) decides, poold forces nothing;
    every libpq sslmode is accepted. GSS encryption stays off (the relay cannot carry it)."""
    c = load_config(write(tmp_path, BASE), {})
    info = c.databases["app"].conninfo
    assert "sslmode" not in info and info["gssencmode"] == "disable"
    for mode in ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"):
        text = f"[databases.a]\ndsn = 'host=x sslmode={mode}'\n"
        assert load_config(write(tmp_path, text), {}).databases["a"].conninfo["sslmode"] == mode


def test_server_tls_files_are_checked(tmp_path: Path) -> None:
    """A TLS file the DSN names must be there, and a private key others may read is
    refused, as libpq refuses it (0600 or less for its owner)."""
    key = tmp_path / "client.key"
    key.write_text("key")
    key.chmod(0o644)
    text = f"[databases.a]\ndsn = 'host=x sslmode=verify-full sslrootcert={tmp_path}/none.pem sslkey={key}'\n"
    errs = errors_of(tmp_path, text)
    assert any(e.startswith(f'databases.a.dsn: sslrootcert: cannot read "{tmp_path}/none.pem"') for e in errs), errs
    assert any(e.startswith(f'databases.a.dsn: sslkey: private key file "{key}" has group or world access')
               for e in errs), errs
    key.chmod(0o600)
    (tmp_path / "none.pem").write_text("ca")
    assert load_config(write(tmp_path, text), {}).databases["a"].conninfo["sslmode"] == "verify-full"


def test_sslnegotiation_is_checked_as_libpq_checks_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sslnegotiation=direct (libpq 17+) takes an sslmode of require or stronger, the
    DSN's or PGSSLMODE's: libpq refuses a weaker one at every connect, poold at config
    check, in libpq's words. An unknown value is refused too."""
    for name in ("PGSSLMODE", "PGSSLNEGOTIATION", "PGSSLROOTCERT"):
        monkeypatch.delenv(name, raising=False)
    errs = errors_of(tmp_path, "[databases.a]\ndsn = 'host=x sslnegotiation=direct'\n"
                     "[databases.b]\ndsn = 'host=x sslnegotiation=direct sslmode=allow'\n"
                     "[databases.c]\ndsn = 'host=x sslnegotiation=drect sslmode=require'\n")
    weak = 'weak sslmode "{}" may not be used with sslnegotiation=direct (use "require", "verify-ca", or "verify-full")'
    assert f"databases.a.dsn: {weak.format('prefer')}" in errs, errs
    assert f"databases.b.dsn: {weak.format('allow')}" in errs, errs
    assert 'databases.c.dsn: invalid sslnegotiation value: "drect" (one of postgres, direct)' in errs, errs
    for mode in ("require", "verify-ca", "verify-full"):
        text = f"[databases.a]\ndsn = 'host=x sslnegotiation=direct sslmode={mode}'\n"
        assert load_config(write(tmp_path, text), {}).databases["a"].conninfo["sslnegotiation"] == "direct"
    monkeypatch.setenv("PGSSLMODE", "require")  # libpq takes it where the DSN names no sslmode
    text = "[databases.a]\ndsn = 'host=x sslnegotiation=direct'\n"
    assert load_config(write(tmp_path, text), {}).databases["a"].conninfo["sslnegotiation"] == "direct"
    text = "[databases.a]\ndsn = 'host=x sslnegotiation=postgres sslmode=prefer'\n"
    assert load_config(write(tmp_path, text), {}).databases["a"].conninfo["sslnegotiation"] == "postgres"
    monkeypatch.delenv("PGSSLMODE")
    # sslrootcert=system makes libpq's default sslmode verify-full: direct may go with it
    text = "[databases.a]\ndsn = 'host=x sslnegotiation=direct sslrootcert=system'\n"
    assert load_config(write(tmp_path, text), {}).databases["a"].conninfo["sslnegotiation"] == "direct"
    monkeypatch.setenv("PGSSLNEGOTIATION", "direct")  # libpq takes it where the DSN names none
    assert f"databases.a.dsn: {weak.format('prefer')}" in errors_of(tmp_path, "[databases.a]\ndsn = 'host=x'\n")


def test_wildcard_database(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, "[databases.'*']\ndsn = 'host=127.0.0.1'\n"), {})
    db = c.database("anything")
    assert db is not None and db.conninfo["dbname"] == "anything"


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", {})
    assert "invalid TOML" in errors_of(tmp_path, "[pool\n")[0]


def test_env_file_syntax() -> None:
    assert parse_env_file('A=1\n# x\nB="two words"\n') == {"A": "1", "B": "two words"}
    with pytest.raises(ValueError, match="line 1"):
        parse_env_file("not a pair\n")


def test_check_config_cli(tmp_path: Path) -> None:
    good = write(tmp_path, BASE)
    run = [sys.executable, "-m", "poold", "--check-config", str(good)]
    ok = subprocess.run(run, capture_output=True, text=True)
    assert ok.returncode == 0 and "configuration OK" in ok.stdout
    bad = subprocess.run(run, capture_output=True, text=True, env=dict(os.environ, DB_POOL_MAX="x"))
    assert bad.returncode == 2 and "pool.max_size: must be an integer" in bad.stderr


def test_env_file_copies_in_the_environment_are_the_files(tmp_path: Path) -> None:
    """What EnvironmentFile= copied into the environment belongs to the file; the rest stays."""
    from poold.config import without_env_file_copies

    env_file = tmp_path / "poold.env"
    env_file.write_text("DB_POOL_MAX=5\nDB_POOL_MIN=2\n")
    environ = {"DB_POOL_MAX": "5", "DB_POOL_MIN": "3", "PATH": "/bin"}
    assert without_env_file_copies(environ, str(env_file)) == {"DB_POOL_MIN": "3", "PATH": "/bin"}
    assert without_env_file_copies(environ, "") == environ


def test_every_error_at_once_an_unknown_key_hides_nothing(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, """
[pool]
bogus = 1
min_size = 10
max_size = 2
acquire_timeout = -5
max_lifetime = "soon"
[databases.app]
dsn = "host=127.0.0.1 dbname=app"
typo = 2
max_size = 1
min_size = 3
""")
    assert errors == [
        "pool.bogus: unknown key",
        "pool.max_lifetime: must be a number, got 'soon'",
        "pool.min_size: must be <= max_size (2)",
        "pool.acquire_timeout: must be > 0",
        "databases.app.typo: unknown key",
        "databases.app.min_size: must be <= max_size (1)",
    ]
