"""The PgBouncer converter: fixtures in, a poold.toml that load_config accepts and notes out."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import trustme

from poold.config import Config, load_config
from poold.migrate import CARRIED, NOT_APPLICABLE, UNSUPPORTED, IniError, Migration, convert, parse_connstr

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pgbouncer"
SAMPLE = (FIXTURES / "sample-1.25.2.ini").read_text()
E2E = (FIXTURES / "e2e.ini").read_text()

#: every setting of PgBouncer 1.25.2's [pgbouncer] section (the CF_ABS table of src/main.c)
PGBOUNCER_KEYS = """
admin_users application_name_add_host auth_dbname auth_file auth_hba_file auth_ident_file auth_ldap_options
auth_query auth_type auth_user autodb_idle_timeout cancel_wait_timeout client_idle_timeout client_login_timeout
client_tls13_ciphers client_tls_ca_file client_tls_cert_file client_tls_ciphers client_tls_dheparams
client_tls_ecdhcurve client_tls_key_file client_tls_protocols client_tls_sslmode conffile default_pool_size
disable_pqexec dns_max_ttl dns_nxdomain_ttl dns_zone_check_period idle_transaction_timeout
ignore_startup_parameters job_name listen_addr listen_backlog listen_port log_connections log_disconnections
log_pooler_errors log_stats logfile max_client_conn max_db_client_connections max_db_connections max_packet_size
max_prepared_statements max_user_client_connections max_user_connections min_pool_size peer_id pidfile pkt_buf
pool_mode query_timeout query_wait_notify query_wait_timeout reserve_pool_size reserve_pool_timeout resolv_conf
sbuf_loopcnt scram_iterations server_check_delay server_check_query server_connect_timeout server_fast_close
server_idle_timeout server_lifetime server_login_retry server_reset_query server_reset_query_always
server_round_robin server_tls13_ciphers server_tls_ca_file server_tls_cert_file server_tls_ciphers
server_tls_key_file server_tls_protocols server_tls_sslmode service_name so_reuseport stats_period stats_users
suspend_timeout syslog syslog_facility syslog_ident tcp_defer_accept tcp_keepalive tcp_keepcnt tcp_keepidle
tcp_keepintvl tcp_socket_buffer tcp_user_timeout track_extra_parameters transaction_timeout unix_socket_dir
unix_socket_group unix_socket_mode user verbose
""".split()


def check(result: Migration, tmp_path: Path) -> Config:
    """What `poold --check-config` does to the converted file."""
    path = tmp_path / "poold.toml"
    path.write_text(result.toml)
    return load_config(path, {})


def notes(result: Migration) -> dict[str, tuple[str, str]]:
    return {n.key: (n.kind, n.reason) for n in result.notes}


def e2e_ini(directory: Path) -> str:
    return E2E.format(pg_port=5499, port=6499, dir=directory, password="app-secret-pw")


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    cert = trustme.CA().issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.crt"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    return tmp_path


#: PgBouncer 1.25.2's auth_query when the ini sets auth_user alone (src/main.c)
PGBOUNCER_AUTH_QUERY = ("SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END "
                        "FROM pg_authid WHERE rolname=$1 AND rolcanlogin")


def test_every_pgbouncer_setting_has_a_fate() -> None:
    known = CARRIED | set(UNSUPPORTED) | set(NOT_APPLICABLE)
    assert sorted(set(PGBOUNCER_KEYS) - known) == []
    assert not CARRIED & set(UNSUPPORTED) and not CARRIED & set(NOT_APPLICABLE)


def test_pgbouncer_sample_converts_to_its_effective_settings(tmp_path: Path) -> None:
    result = convert(SAMPLE, "/etc/pgbouncer")
    config = check(result, tmp_path)
    assert config.listen.host == "localhost" and config.listen.port == 6432
    assert config.listen.unix_socket_dir == "/tmp" and config.listen.unix_socket_mode == 0o777
    assert config.listen.backlog == 128
    assert (config.auth.type, config.auth.file) == ("md5", "/etc/pgbouncer/userlist.txt")
    assert config.clients.max_client_conn == 100 and config.clients.login_timeout == 60
    p = config.pool
    assert (p.mode, p.max_size, p.min_size) == ("session", 20, 0)
    assert (p.acquire_timeout, p.idle_timeout, p.max_lifetime) == (120, 600, 3600)
    assert (p.query_timeout, p.statement_timeout) == (0, 0)
    assert config.databases == {}
    assert notes(result) == {
        "logfile": ("not-applicable", NOT_APPLICABLE["logfile"]),
        "pidfile": ("not-applicable", NOT_APPLICABLE["pidfile"]),
    }
    assert result.not_carried == []


def uncomment_every_setting(text: str) -> str:
    """The sample with each commented-out ``;key = value`` line enabled (its examples)."""
    return re.sub(r"(?m)^;\s*([A-Za-z0-9_*]+\s*=.*)$", r"\1", text)


def test_sample_with_every_example_enabled_accounts_for_every_key(tmp_path: Path) -> None:
    text = uncomment_every_setting(SAMPLE).replace("<system default>", "/etc/ssl/certs/ca-certificates.crt")
    result = convert(text, "/etc/pgbouncer")
    config = check(result, tmp_path)
    written = set(re.findall(r"#\s*([a-z_]+)", result.toml))
    noted = {n.key.split(":")[0].split(" ")[0] for n in result.notes}
    settings = set(re.findall(r"(?m)^([a-z_0-9]+)\s*=", text.split("[pgbouncer]", 1)[1]))
    assert settings - written - noted == set()
    got = notes(result)
    # the ones people ask about, each with its reason
    for key in ("auth_dbname", "reserve_pool_size",
                "max_db_connections", "client_idle_timeout", "idle_transaction_timeout", "server_check_query"):
        assert got[key] == ("unsupported", UNSUPPORTED[key])
    # auth_type = md5: no hba file read; auth_query without a global auth_user: only foodb's would use it
    assert got["auth_hba_file"][0] == got["auth_query"][0] == "not-applicable"
    assert config.auth.user == "" and config.auth.hba_file == ""
    assert got["client_tls_ca_file"][0] == "not-applicable"  # client_tls_sslmode = disable
    assert got["users.user1"][0] == "unsupported"
    assert got["databases.nondefaultdb.reserve_pool_size"][0] == "unsupported"
    assert got["databases.forcedb.connect_query"][0] == "unsupported"
    assert got["databases.foodb.auth_user"][0] == "unsupported"
    assert got["ignore_startup_parameters: extra_float_digits"][0] == "carried"
    assert "extra_float_digits" in config.clients.ignored_startup_parameters  # dropped unread, as PgBouncer does
    assert got["track_extra_parameters: IntervalStyle"][0] == "carried"
    assert got["server_tls_sslmode"] == ("carried", "sslmode=prefer in each database's DSN")
    # the databases, as libpq will read them
    forcedb = config.databases["forcedb"].conninfo
    assert (forcedb["host"], forcedb["port"], forcedb["user"], forcedb["password"]) == ("localhost", "300", "baz", "foo")
    assert forcedb["client_encoding"] == "UNICODE" and forcedb["options"] == "-c DateStyle=ISO"
    # bardb and foodb are defined twice: the second definition replaces the first, as in PgBouncer
    assert config.databases["bardb"].conninfo["dbname"] == "bardb"
    assert config.databases["bardb"].conninfo["host"] == "/tmp"
    assert got["databases.bardb.auth_dbname"][0] == "unsupported"
    assert config.databases["nondefaultdb"].pool.max_size == 50
    assert config.databases["*"].conninfo["host"] == "testserver"
    assert config.databases["foodb"].conninfo["host"] == "/tmp"  # PgBouncer's own socket directory
    assert config.listen.unix_socket_mode == 0o777 and config.daemon.log_level == "info"


def test_e2e_config_carries_each_setting(certs: Path) -> None:
    result = convert(e2e_ini(certs), str(certs))
    config = check(result, certs)
    assert (config.listen.host, config.listen.port, config.listen.unix_socket_dir) == ("127.0.0.1", 6499, str(certs))
    assert (config.auth.type, config.auth.file) == ("scram-sha-256", str(certs / "userlist.txt"))
    assert config.clients.max_client_conn == 50
    assert (config.tls.cert_file, config.tls.key_file, config.tls.require) == (
        str(certs / "server.crt"), str(certs / "server.key"), False)
    p = config.pool
    assert (p.mode, p.max_size, p.min_size) == ("transaction", 3, 1)
    assert (p.max_lifetime, p.idle_timeout, p.query_timeout, p.acquire_timeout) == (1800, 300, 60, 30)
    appdb, session, wild = (config.databases[n] for n in ("appdb", "app_session", "*"))
    assert (appdb.pool.mode, appdb.pool.max_size, appdb.pool.min_size) == ("transaction", 4, 1)
    assert (session.pool.mode, session.pool.max_size, session.pool.min_size) == ("session", 2, 1)
    assert wild.pool.max_size == 3
    assert dict(appdb.conninfo) | {} == {
        "host": "127.0.0.1", "port": "5499", "dbname": "app", "user": "app", "password": "app-secret-pw",
        "connect_timeout": "15", "sslmode": "disable", "gssencmode": "disable"}
    assert session.conninfo["password"] == "app-secret-pw"
    assert config.database("other") is not None and config.database("other").conninfo["dbname"] == "other"  # type: ignore[union-attr]
    got = notes(result)
    assert {k for k, (kind, _) in got.items() if kind == "unsupported"} == {
        "reserve_pool_size", "client_tls_ciphers"}
    assert {k for k, (kind, _) in got.items() if kind == "changed"} == {"query_timeout"}
    assert {k for k, (kind, _) in got.items() if kind == "not-applicable"} == {"logfile", "pidfile", "auth_hba_file"}
    # auth_user and auth_query: users userlist.txt lacks are looked up, at every login as PgBouncer does
    assert (config.auth.user, config.auth.query) == ("app", "SELECT usename, passwd FROM pg_shadow WHERE usename=$1")
    assert config.auth.query_ttl == 0
    assert (config.auth.admin_users, config.auth.stats_users) == ("app", "app,stats")  # the admin console's
    assert "max_prepared_statements" not in got  # carried, as it is


@pytest.mark.parametrize(("ini", "key", "expected"), [
    ("listen_addr = *", "listen.host", "0.0.0.0,::"),
    ("listen_addr = 127.0.0.1, ::1", "listen.host", "127.0.0.1,::1"),
    ("unix_socket_mode = 0700", "listen.unix_socket_mode", 0o700),
    ("client_login_timeout = 2.5", "clients.login_timeout", 2.5),
    ("max_packet_size = 1048576", "clients.max_message_size", 1048576),
    ("verbose = 2", "daemon.log_level", "debug"),
    ("pool_mode = statement", "pool.mode", "transaction"),
    ("auth_type = any", "auth.type", "trust"),
    ("auth_type = hba\nauth_hba_file = /etc/pgbouncer/hba.conf", "auth.type", "hba"),
    ("auth_type = hba\nauth_hba_file = /etc/pgbouncer/hba.conf", "auth.hba_file", "/etc/pgbouncer/hba.conf"),
    ("auth_type = cert", "auth.type", "scram-sha-256"),
    ("auth_user = pgbouncer", "auth.user", "pgbouncer"),
    ("auth_user = pgbouncer", "auth.query", PGBOUNCER_AUTH_QUERY),
    ("auth_user = pgbouncer\nauth_query = SELECT * FROM lookup($1)", "auth.query", "SELECT * FROM lookup($1)"),
    ("auth_user = pgbouncer", "auth.query_ttl", 0.0),
    ("auth_query = SELECT * FROM lookup($1)", "auth.query", None),
    ("default_pool_size = 2\nmin_pool_size = 5", "pool.min_size", 2),
    ("server_lifetime = 0", "pool.max_lifetime", None),
    ("max_prepared_statements = 50", "pool.max_prepared_statements", 50),
    ("max_prepared_statements = 0", "pool.max_prepared_statements", 0),
    ("pool_mode = transaction", "pool.max_prepared_statements", None),  # PgBouncer's default is poold's
])
def test_single_settings(ini: str, key: str, expected: object) -> None:
    result = convert(f"[pgbouncer]\nlisten_addr = 127.0.0.1\n{ini}\n")
    table, name = key.split(".")
    assert tomllib.loads(result.toml).get(table, {}).get(name) == expected


def test_hba_file_is_carried_and_read_by_check_config(tmp_path: Path) -> None:
    (tmp_path / "userlist.txt").write_text('"app" "secret"\n')
    (tmp_path / "hba.conf").write_text("local all all trust\nhost app app 127.0.0.1/32 scram-sha-256\n")
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text("[pgbouncer]\nlisten_addr = 127.0.0.1\nauth_type = hba\nauth_hba_file = hba.conf\n"
                   "auth_file = userlist.txt\n")
    result = convert(ini.read_text(), str(tmp_path))
    config = check(result, tmp_path)
    assert (config.auth.type, config.auth.hba_file) == ("hba", str(tmp_path / "hba.conf"))
    assert notes(result)["auth_hba_file"][0] == "changed"  # what poold refuses in it is named at load
    out = tmp_path / "poold.toml"
    checked = subprocess.run([sys.executable, "-m", "poold", "--check-config", str(out)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    # PgBouncer's peer method is not poold's: --check-config names the line, as the note says
    (tmp_path / "hba.conf").write_text("local all all peer\n")
    checked = subprocess.run([sys.executable, "-m", "poold", "--check-config", str(out)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode != 0 and "hba.conf" in checked.stderr and "peer" in checked.stderr


def test_hba_without_a_file_is_refused() -> None:
    # PgBouncer starts, and refuses every login: no poold configuration means that.
    with pytest.raises(IniError, match="auth_hba_file"):
        convert("[pgbouncer]\nlisten_addr = 127.0.0.1\nauth_type = hba\n")


def test_auth_query_must_take_the_user_name() -> None:
    with pytest.raises(IniError, match=r"\$1"):
        convert("[pgbouncer]\nlisten_addr = 127.0.0.1\nauth_user = a\nauth_query = SELECT 'x', 'y'\n")


def test_a_databases_own_auth_user_and_query_are_reported() -> None:
    result = convert("[pgbouncer]\nlisten_addr = 127.0.0.1\nauth_user = a\n[databases]\n"
                     "x = host=db auth_user=b auth_query='SELECT u, p FROM f($1)' auth_dbname=y\n")
    got = notes(result)
    assert [got[f"databases.x.{k}"][0] for k in ("auth_user", "auth_query", "auth_dbname")] == ["unsupported"] * 3
    assert tomllib.loads(result.toml)["auth"]["user"] == "a"


def test_client_ca_file_is_carried_with_tls(certs: Path, tmp_path: Path) -> None:
    (certs / "ca.pem").write_text((certs / "server.crt").read_text())
    result = convert("[pgbouncer]\nlisten_addr = 127.0.0.1\nclient_tls_sslmode = verify-full\n"
                     "client_tls_cert_file = server.crt\nclient_tls_key_file = server.key\n"
                     "client_tls_ca_file = ca.pem\n", str(certs))
    config = check(result, tmp_path)
    assert (config.tls.ca_file, config.tls.require) == (str(certs / "ca.pem"), True)
    assert notes(result)["client_tls_sslmode"][0] == "changed"  # a certificate is not required


def test_trust_is_reported_as_more_permissive() -> None:
    result = convert("[pgbouncer]\nlisten_addr = 127.0.0.1\nauth_type = trust\n")
    assert tomllib.loads(result.toml)["auth"]["type"] == "trust"
    assert notes(result)["auth_type"][0] == "changed"


def test_last_value_wins_and_values_run_to_the_end_of_the_line() -> None:
    result = convert("[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = 1\nlisten_port = 7000\n"
                     "[databases]\nx = host=h dbname=a;b application_name='it''s here'\n")
    raw = tomllib.loads(result.toml)
    assert raw["listen"]["port"] == 7000
    assert raw["databases"]["x"]["dsn"] == "host=h dbname=a;b application_name='it\\'s here' connect_timeout=15"


def test_connection_strings_as_pgbouncer_reads_them() -> None:
    assert parse_connstr(" host=a  port = 5 password='x y''z' ") == [("host", "a"), ("port", "5"),
                                                                     ("password", "x y'z")]
    with pytest.raises(IniError):
        parse_connstr("host='open")
    with pytest.raises(IniError, match="unrecognized connection parameter: colour"):
        convert("[pgbouncer]\nlisten_addr = 127.0.0.1\n[databases]\nx = colour=blue\n")


def test_files_pgbouncer_refuses_are_refused() -> None:
    for bad in ("[pgbouncer]\nlisten_port\n", "[nonsense]\n", "[pgbouncer]\npool_mode = sometimes\n",
                "[pgbouncer]\nlisten_port = many\n", "listen_port = 1\n"):
        with pytest.raises(IniError):
            convert(bad)


def test_server_tls_settings_go_into_each_dsn(tmp_path: Path) -> None:
    """PgBouncer's server_tls_* become the libpq parameters of every converted DSN:
    verify-full without a CA file verifies with the system's bundle, as PgBouncer does."""
    result = convert("[pgbouncer]\nlisten_addr = 127.0.0.1\nserver_tls_sslmode = verify-full\n"
                     "[databases]\nx = host=db\n")
    assert 'dsn = "host=db connect_timeout=15 sslmode=verify-full sslrootcert=system"' in result.toml, result.toml
    assert notes(result)["server_tls_sslmode"][0] == "carried"
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("x")
    (tmp_path / "client.key").chmod(0o600)
    result = convert("[pgbouncer]\nlisten_addr = 127.0.0.1\nserver_tls_sslmode = require\n"
                     "server_tls_ca_file = ca.pem\nserver_tls_cert_file = client.pem\nserver_tls_key_file = client.key\n"
                     "server_tls_protocols = tlsv1.3\nserver_tls_ciphers = HIGH\n[databases]\nx = host=db\n",
                     str(tmp_path))
    info = check(result, tmp_path).databases["x"].conninfo
    assert (info["sslmode"], info["sslrootcert"], info["sslcert"], info["sslkey"], info["ssl_min_protocol_version"]) \
        == ("require", f"{tmp_path}/ca.pem", f"{tmp_path}/client.pem", f"{tmp_path}/client.key", "TLSv1.3")
    got = notes(result)
    assert {got[k][0] for k in ("server_tls_ca_file", "server_tls_cert_file", "server_tls_key_file",
                                "server_tls_protocols")} == {"carried"}
    assert got["server_tls_ciphers"][0] == "unsupported"


def test_cli_writes_the_file_and_prints_what_it_could_not_carry(certs: Path) -> None:
    ini = certs / "pgbouncer.ini"
    ini.write_text(e2e_ini(certs))
    out = certs / "poold.toml"
    run = subprocess.run([sys.executable, "-m", "poold", "migrate", str(ini), "-o", str(out)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    assert "auth_hba_file: not-applicable: auth_type = scram-sha-256" in run.stderr
    assert "auth_query" not in run.stderr and "auth_user" not in run.stderr  # carried
    assert "max_prepared_statements" not in run.stderr  # carried
    checked = subprocess.run([sys.executable, "-m", "poold", "--check-config", str(out)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert "configuration OK (3 databases)" in checked.stdout
    missing = subprocess.run([sys.executable, "-m", "poold", "migrate", str(certs / "absent.ini")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "cannot read" in missing.stderr


def test_the_migration_guide_lists_every_carried_key() -> None:
    guide = (FIXTURES.parents[2] / "docs" / "migrating-from-pgbouncer.md").read_text()
    assert sorted(k for k in CARRIED if f"`{k}`" not in guide) == []
