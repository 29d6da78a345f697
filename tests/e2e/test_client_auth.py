"""Client authentication against a real PostgreSQL: empty passwords, the hba file, auth_query.

Logins are driven by real clients (psycopg, psql) where they can express the case,
and by a raw protocol client with scramp's SCRAM client where they cannot (libpq
never sends an empty password).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
import scramp

from tests.conftest import APP_PASSWORD, Poold, RawClient, pgcluster

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


# -- the hba file ----------------------------------------------------------------

HBA = """\
# poold's hba file: first match wins
local   all  app                      trust
host    all  trustme  127.0.0.1/32    trust
host    all  app      127.0.0.1/32    scram-sha-256
host    all  md5user  10.0.0.0/8      trust          # not loopback: falls through
host    all  md5user  127.0.0.0 255.0.0.0 md5
host    all  masked   10.0.0.0/8      trust          # the only rule for masked
host    all  pwuser   127.0.0.1/32    password
host    all  rejected all             reject
"""


def hba_raw(hba_path: object, extra: str = "") -> str:
    return f'hba_file = "{hba_path}"\n{extra}'


def start_hba(poold_factory: Callable[..., Poold], tmp_path: object, environ: dict[str, str],
              hba: str = HBA, tls: str = "") -> Poold:
    from pathlib import Path

    hba_path = Path(str(tmp_path)) / "hba.conf"
    hba_path.write_text(hba)
    # [auth] is written by the fixture; a second [auth] table is invalid TOML, so the
    # keys go through the environment overrides, as an operator may set them.
    env = environ | {"POOLD_AUTH__HBA_FILE": str(hba_path)}
    p = poold_factory(auth_type="hba", environ=env, raw=tls)
    userlist = p.tmp / "userlist.txt"
    userlist.write_text(userlist.read_text() + '"pwuser" "pw-secret"\n')
    assert p.poolctl("reload").returncode == 0
    return p


@pytest.mark.parametrize("environ", CORES)
def test_hba_trust_for_one_user_scram_for_another(poold_factory: Callable[..., Poold], tmp_path: object,
                                                  environ: dict[str, str]) -> None:
    import psycopg

    p = start_hba(poold_factory, tmp_path, environ)
    # trustme is in no auth file: trust admits it with any password
    with psycopg.connect(p.dsn(user="trustme", password="anything"), prepare_threshold=None) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app",)  # the DSN's server user
    # app is SCRAM over TCP: the right password in, a wrong one out (twice: the second
    # login meets a kept plan)
    for _ in range(2):
        with psycopg.connect(p.dsn(), prepare_threshold=None) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        err = raw_login(p.port, "app", "wrong")
        assert err is not None and (err["S"], err["C"]) == ("FATAL", "28P01"), err
        assert 'password authentication failed for user "app"' in err["M"]


@pytest.mark.parametrize("environ", CORES)
def test_hba_reject_no_entry_and_masks(poold_factory: Callable[..., Poold], tmp_path: object,
                                       environ: dict[str, str]) -> None:
    p = start_hba(poold_factory, tmp_path, environ)
    err = raw_login(p.port, "rejected", APP_PASSWORD)
    assert err is not None and err["C"] == "28000", err
    assert 'pg_hba.conf rejects connection for host "127.0.0.1", user "rejected", database "app"' in err["M"]
    err = raw_login(p.port, "nobody", APP_PASSWORD)
    assert err is not None and err["C"] == "28000", err
    assert 'no pg_hba.conf entry for host "127.0.0.1", user "nobody", database "app", no encryption' in err["M"]
    # 10.0.0.0/8 does not hold 127.0.0.1: masked has no entry, md5user falls to its md5 rule
    err = raw_login(p.port, "masked", "x")
    assert err is not None and err["C"] == "28000" and "no pg_hba.conf entry" in err["M"], err
    err = raw_login(p.port, "md5user", "wrong")
    assert err is not None and err["C"] == "28P01", err
    assert raw_login(p.port, "md5user", APP_PASSWORD) is None


@pytest.mark.parametrize("environ", CORES)
def test_hba_decides_by_origin_for_the_same_startup_packet(poold_factory: Callable[..., Poold], tmp_path: object,
                                                           environ: dict[str, str]) -> None:
    """The same startup packet is trust on the Unix socket and SCRAM over TCP: a decision
    kept for one origin must not serve the other."""
    import psycopg

    p = start_hba(poold_factory, tmp_path, environ)
    for _ in range(2):
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(p.dsn(password="wrong"))
        with psycopg.connect(f"host={p.sockdir} port={p.port} dbname=app user=app password=wrong",
                             prepare_threshold=None) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("environ", CORES)
def test_hba_password_method_and_empty_password_at_login(poold_factory: Callable[..., Poold], tmp_path: object,
                                                         environ: dict[str, str]) -> None:
    import psycopg

    p = start_hba(poold_factory, tmp_path, environ)
    with psycopg.connect(p.dsn(user="pwuser", password="pw-secret"), prepare_threshold=None) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert raw_login(p.port, "pwuser", "pw-secret") is None
    for password in ("wrong", ""):  # PostgreSQL refuses an empty password sent in clear
        err = raw_login(p.port, "pwuser", password)
        assert err is not None and err["C"] == "28P01", (password, err)


def test_hba_cert_method(poold_factory: Callable[..., Poold], tmp_path: object) -> None:
    from pathlib import Path

    import psycopg
    import trustme

    base = Path(str(tmp_path))
    authority = trustme.CA()
    server = authority.issue_cert("127.0.0.1")
    paths = {name: base / f"{name}.pem" for name in ("ca", "server", "key", "good", "goodkey", "bad", "badkey")}
    authority.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["server"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    for name, cn in (("good", "certuser"), ("bad", "someone")):
        leaf = authority.issue_cert("client", common_name=cn)
        leaf.cert_chain_pems[0].write_to_path(str(paths[name]))
        leaf.private_key_pem.write_to_path(str(paths[f"{name}key"]))
        paths[f"{name}key"].chmod(0o600)
    tls = (f'\n[tls]\ncert_file = "{paths["server"]}"\nkey_file = "{paths["key"]}"\n'
           f'ca_file = "{paths["ca"]}"\n')
    p = start_hba(poold_factory, tmp_path, {}, hba=HBA + "hostssl all certuser 127.0.0.1/32 cert\n", tls=tls)
    good = p.dsn(user="certuser", password="x", sslmode="require", sslcert=str(paths["good"]),
                 sslkey=str(paths["goodkey"]))
    with psycopg.connect(good, prepare_threshold=None) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    bad = p.dsn(user="certuser", password="x", sslmode="require", sslcert=str(paths["bad"]),
                sslkey=str(paths["badkey"]))
    with pytest.raises(psycopg.OperationalError, match='certificate authentication failed for user "certuser"'):
        psycopg.connect(bad)
    with pytest.raises(psycopg.OperationalError, match="requires a valid client certificate"):
        psycopg.connect(p.dsn(user="certuser", password="x", sslmode="require", sslcert=str(base / "none.pem")))
    with pytest.raises(psycopg.OperationalError, match="no pg_hba.conf entry"):
        psycopg.connect(p.dsn(user="certuser", password="x", sslmode="disable"))


def test_hba_file_errors_name_the_line(poold_factory: Callable[..., Poold], tmp_path: object) -> None:
    p = start_hba(poold_factory, tmp_path, {})
    hba_path = p.tmp.parent / "hba.conf"
    hba_path.write_text(HBA + "host all all 127.0.0.1/32 ldap\n")
    reload = p.poolctl("reload")
    assert reload.returncode != 0
    assert "auth.hba_file" in reload.stdout + reload.stderr and "line 10" in reload.stdout + reload.stderr
    r = subprocess.run([sys.executable, "-m", "poold", "--check-config", str(p.config_path)], capture_output=True,
                       text=True, timeout=30, env=dict(os.environ, POOLD_AUTH__HBA_FILE=str(hba_path)))
    assert r.returncode == 2 and "line 10: authentication method 'ldap' is not supported" in r.stderr, r.stderr
    assert raw_login(p.port, "trustme", "x") is None  # the old rules keep serving


# -- auth_query and SCRAM pass-through, against a SCRAM-only PostgreSQL ----------------


@pytest.fixture(scope="module")
def scram_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pgcluster.Cluster]:
    """A cluster that asks every TCP login but the superuser's for SCRAM: a server
    login without the right credentials fails there."""
    import os

    base = tmp_path_factory.mktemp("scram_pg")
    os.chmod(base, 0o755)
    for parent in base.parents:  # the cluster's OS user must reach its directory
        if str(parent).startswith(str(tmp_path_factory.getbasetemp().parent)):
            os.chmod(parent, os.stat(parent).st_mode | 0o711)
    cluster = pgcluster.Cluster(base=str(base / "cluster"))
    cluster.init("password_encryption = 'scram-sha-256'")
    (cluster.datadir / "pg_hba.conf").write_text(
        "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
    cluster.start()
    cluster.create_role_and_db("app", APP_PASSWORD)
    # PgBouncer's recommended auth_query set-up: a login role that may only call a
    # SECURITY DEFINER function over pg_authid
    cluster.psql("CREATE ROLE poold_auth LOGIN PASSWORD 'auth-pw'")
    cluster.psql("CREATE FUNCTION public.poold_lookup(i_username text, OUT usename name, OUT passwd text) "
                 "RETURNS record LANGUAGE sql SECURITY DEFINER AS "
                 "$$ SELECT rolname, rolpassword FROM pg_catalog.pg_authid WHERE rolname = i_username $$; "
                 "REVOKE ALL ON FUNCTION public.poold_lookup(text) FROM public; "
                 "GRANT EXECUTE ON FUNCTION public.poold_lookup(text) TO poold_auth", dbname="app")
    yield cluster
    cluster.destroy()


def passthrough_db(cluster: pgcluster.Cluster) -> str:
    """A database whose DSN names no user and no password: the client's user logs in."""
    return f'\n[databases.pt]\ndsn = "host={cluster.host} port={cluster.port} dbname=app"\n'


AUTH_QUERY = {"POOLD_AUTH__USER": "poold_auth",
              "POOLD_AUTH__QUERY": "SELECT usename, passwd FROM public.poold_lookup($1)",
              "POOLD_AUTH__QUERY_TTL": "0"}


@pytest.mark.parametrize("environ", CORES)
def test_auth_query_with_a_scram_role_created_in_postgresql(poold_factory: Callable[..., Poold],
                                                            scram_pg: pgcluster.Cluster,
                                                            environ: dict[str, str]) -> None:
    import psycopg

    role = f"aq_{len(environ)}"
    scram_pg.psql(f"DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD 'aq-pw'")
    p = poold_factory(cluster=scram_pg, environ=environ | AUTH_QUERY, raw=passthrough_db(scram_pg))
    userlist = p.tmp / "userlist.txt"
    userlist.write_text(userlist.read_text() + '"poold_auth" "auth-pw"\n')
    assert p.poolctl("reload").returncode == 0
    # in no auth file: its SCRAM verifier comes from pg_authid
    with psycopg.connect(p.dsn(user=role, password="aq-pw"), prepare_threshold=None) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app",)  # the DSN's user
    # a wrong password and an unknown user get the same answer
    for user in (role, "ghost"):
        err = raw_login(p.port, user, "wrong")
        assert err is not None and (err["C"], err["M"]) == (
            "28P01", f'poold: password authentication failed for user "{user}"'), err
    # SCRAM pass-through: poold holds only the verifier, and the SCRAM-only server
    # admits the client's user with the key its login revealed
    for _ in range(2):
        with psycopg.connect(p.dsn(user=role, password="aq-pw", dbname="pt"), prepare_threshold=None) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)
    # query_ttl = 0: a changed password counts at the next login
    scram_pg.psql(f"ALTER ROLE {role} PASSWORD 'aq-pw-2'")
    err = raw_login(p.port, role, "aq-pw")
    assert err is not None and err["C"] == "28P01", err
    assert raw_login(p.port, role, "aq-pw-2") is None
    # no secret in the log: passwords, the verifier, the SCRAM keys passed through
    verifier = scram_pg.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'")
    log = p.log_text()
    assert all(secret not in log for secret in ("auth-pw", "aq-pw", verifier.split("$")[2], "scram_client_key"))
    # a dedicated connection per database (app and pt, whatever the logins), as the auth user
    assert scram_pg.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'poold_auth' "
                         "AND application_name = 'poold auth_query'") == "2"


@pytest.mark.parametrize("environ", CORES)
def test_scram_pass_through_for_a_verifier_in_the_auth_file(poold_factory: Callable[..., Poold],
                                                            scram_pg: pgcluster.Cluster,
                                                            environ: dict[str, str]) -> None:
    import psycopg

    role = f"pt_{len(environ)}"
    scram_pg.psql(f"DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD 'pt-pw'")
    verifier = scram_pg.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'")
    p = poold_factory(cluster=scram_pg, environ=environ, raw=passthrough_db(scram_pg))
    userlist = p.tmp / "userlist.txt"
    userlist.write_text(userlist.read_text() + f'"{role}" "{verifier}"\n')
    assert p.poolctl("reload").returncode == 0
    for _ in range(3):  # the first login teaches poold the key; later ones may be the C login's
        with psycopg.connect(p.dsn(user=role, password="pt-pw", dbname="pt"), prepare_threshold=None) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)
    err = raw_login(p.port, role, "wrong", database="pt")
    assert err is not None and err["C"] == "28P01", err


def test_auth_query_default_query_reads_pg_shadow(poold_factory: Callable[..., Poold],
                                                  scram_pg: pgcluster.Cluster) -> None:
    """PgBouncer's default query, run as a superuser auth_user (pg_shadow is theirs only)."""
    import psycopg

    scram_pg.psql("DROP ROLE IF EXISTS aq_shadow; CREATE ROLE aq_shadow LOGIN PASSWORD 'shadow-pw'; "
                  "DROP ROLE IF EXISTS poold_su; CREATE ROLE poold_su LOGIN SUPERUSER PASSWORD 'su-pw'")
    p = poold_factory(cluster=scram_pg, environ={"POOLD_AUTH__USER": "poold_su"})
    userlist = p.tmp / "userlist.txt"
    userlist.write_text(userlist.read_text() + '"poold_su" "su-pw"\n')
    assert p.poolctl("reload").returncode == 0
    with psycopg.connect(p.dsn(user="aq_shadow", password="shadow-pw"), prepare_threshold=None) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    err = raw_login(p.port, "aq_shadow", "shadow-pw-wrong")
    assert err is not None and err["C"] == "28P01", err
