"""The C login (_relaycore.c, client_login) against the Python login (_login_steps).

Each case runs the same client through a ClientSession twice: once as the
daemon runs it (the C core reads the login) and once with the C login off (the
Python generator reads it, as where no C compiler was found). The client is
written here from RFC 5802 with hashlib and hmac, and checks the server's
signature itself. Both runs must send the same messages (the nonce, the
signature and the cancel key differ by design) and the same errors, byte for
byte; and the C login must have done the common logins itself, not handed
them to the Python one.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poold import auth
from poold import client as client_module
from poold import login as login_module
from poold.auth import Secret, md5_secret
from poold.client import ClientSession
from poold.config import build_config
from poold.protocol import messages
from poold.runtime import Runtime

from .fake_session import Transport, open_pool

DEFAULTS = {"server_version": "15.0", "client_encoding": "UTF8"}
SALT, ITERATIONS = os.urandom(16), 4096


def verifier(password: str) -> str:
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), SALT, ITERATIONS)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    b64 = [base64.b64encode(x).decode() for x in (SALT, hashlib.sha256(client_key).digest(), server_key)]
    return f"SCRAM-SHA-256${ITERATIONS}:{b64[0]}${b64[1]}:{b64[2]}"


USERS = {
    "app": Secret("scram", verifier("secret")),
    "ünï": Secret("scram", verifier("secret")),  # outside printable ASCII: the C login hands it over
    "md5user": Secret("md5", md5_secret("md5user", "secret")),
}


class Session(ClientSession):
    """Counts the logins the C login handed to the Python one."""

    handed_over: list[int] = []
    entered: int = 0  # logins that went through _enter_pool (the Python login, or a pool to wait for)
    done_in_python: int = 0  # proofs checked by the C login whose welcome Python sent

    def _native_login_done(self, sasl_final: bytes, rest: bytes) -> None:
        Session.done_in_python += 1
        super()._native_login_done(sasl_final, rest)

    def _native_login_fallback(self, transcript: bytes, sent: int, nonce: str | None, negotiated: int) -> None:
        Session.handed_over.append(sent)
        super()._native_login_fallback(transcript, sent, nonce, negotiated)

    def _enter_pool(self, *args: Any) -> Any:
        Session.entered += 1
        return super()._enter_pool(*args)


def runtime(method: str = "scram-sha-256", dsn: str = "dbname=app") -> Runtime:
    # no auth_failure_delay: a refusal is answered at once (the delay runs on the event loop: tests/e2e)
    raw = {"auth": {"type": method}, "clients": {"auth_failure_delay": 0}, "databases": {"app": {"dsn": dsn}}}
    rt = Runtime(build_config(raw, Path("/nonexistent/poold.toml")), dict(USERS))
    pool = open_pool(DEFAULTS)
    for user in (*USERS, "nobody"):  # one open pool, found as the registry finds its pools
        rt.pools.pools[("app", user)] = pool
    return rt


RANDOM_AUTH = {struct.pack("!I", code) for code in (5, 11, 12)}  # md5 salt, SASLContinue, SASLFinal


def msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def split(data: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    while data:
        n = struct.unpack_from("!I", data, 1)[0]
        out.append((data[:1], data[5:1 + n]))
        data = data[1 + n:]
    return out


def startup(user: str, minor: int = 0) -> bytes:
    body = struct.pack("!I", 3 << 16 | minor) + f"user\0{user}\0database\0app\0\0".encode()
    return struct.pack("!I", len(body) + 4) + body


class Client:
    """A SCRAM-SHA-256 client, with hooks to send what libpq would not."""

    def __init__(self, user: str, password: str, **hooks: Callable[[bytes], bytes]) -> None:
        self.user, self.password, self.hooks = user, password, hooks
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.verified = False

    def hook(self, name: str, data: bytes) -> bytes:
        return self.hooks[name](data) if name in self.hooks else data

    def first(self) -> bytes:
        self.bare = f"n={self.user},r={self.nonce}"
        first = self.hook("client_first", f"n,,{self.bare}".encode())
        body = b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first
        return msg(b"p", self.hook("initial_body", body))

    def final(self, server_first: bytes) -> bytes:
        attrs = dict(a.split("=", 1) for a in server_first.decode().split(","))
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        cbind = self.hook("cbind", b"biws").decode()
        without_proof = f"c={cbind},r={attrs['r']}"
        self.auth_message = f"{self.bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.digest(hashlib.sha256(client_key).digest(), self.auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self.server_key = hmac.digest(salted, b"Server Key", "sha256")
        final = f"{without_proof},p={base64.b64encode(proof).decode()}".encode()
        return msg(b"p", self.hook("client_final", final))

    def check(self, server_final: bytes) -> None:
        expected = hmac.digest(self.server_key, self.auth_message, "sha256")
        self.verified = server_final == b"v=" + base64.b64encode(expected)


def connected(native: bool, method: str = "scram-sha-256") -> tuple[Session, Transport]:
    """A session just connected, its login read by the C login or (native=False) by the Python one."""
    session, transport = Session(runtime(method)), Transport()
    session.connection_made(transport)  # type: ignore[arg-type]
    if not native:  # as ClientCorePy.connection_made does
        session.native_login = False
        session._start_login()
    return session, transport


def login(native: bool, client: Client, method: str = "scram-sha-256", chunk: int = 0,
          first: bytes = b"") -> tuple[list[tuple[bytes, bytes]], ClientSession]:
    """Run one login; the server's messages, the nonce-bearing ones reduced to their kind."""
    session, transport = connected(native, method)

    def send(data: bytes) -> None:
        pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)] if chunk else [data]
        for piece in pieces:
            if not transport.closed:
                session.data_received(piece)

    seen: list[tuple[bytes, bytes]] = []

    def answers() -> list[tuple[bytes, bytes]]:
        data, transport.written = transport.written, b""
        if data == b"N":
            return [(b"N", b"")]
        got = split(data)
        seen.extend(got)
        return got

    if first:
        send(first)
        answers()
    send(startup(client.user))
    for kind, body in answers():
        if kind == b"R" and body[:4] == struct.pack("!I", 10):
            send(client.first())
    for kind, body in answers():
        if kind == b"R" and body[:4] == struct.pack("!I", 11):
            send(client.final(body[4:]))
    for kind, body in answers():
        if kind == b"R" and body[:4] == struct.pack("!I", 12):
            client.check(body[4:])
    # random by design: the cancel key, and the server nonce, the signature and the md5 salt
    reduced = [(k, b[:4] if k == b"R" and b[:4] in RANDOM_AUTH else b) if k != b"K" else (k, b"") for k, b in seen]
    return reduced, session


def both(make: Callable[[], Client], **kwargs: Any) -> tuple[list[tuple[bytes, bytes]], Client, list[int]]:
    Session.handed_over, Session.entered = [], 0
    python_client = make()
    expected, _ = login(False, python_client, **kwargs)
    native_client = make()
    native_client.nonce = python_client.nonce  # the same client, so that a mutation does the same to both
    got, session = login(True, native_client, **kwargs)
    assert got == expected
    assert native_client.verified == python_client.verified
    return got, native_client, list(Session.handed_over)


def kinds(messages_: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [k for k, _ in messages_]


def test_the_c_login_runs() -> None:
    assert client_module.NATIVE_LOGIN, "the C core (_relaycore) was not built"


@pytest.mark.parametrize("chunk", [0, 1, 7])
def test_the_common_login_is_the_c_logins_own(chunk: int) -> None:
    got, client, handed_over = both(lambda: Client("app", "secret"), chunk=chunk)
    assert kinds(got) == [b"R", b"R", b"R", b"R", b"S", b"S", b"K", b"Z"]
    assert client.verified  # the server's signature, checked by this client
    assert handed_over == []
    assert Session.entered == 1  # the Python login's; the C login's welcome found its pool open


def test_many_logins_agree_with_the_client_on_every_signature() -> None:
    # Different nonce lengths move AuthMessage across SHA-256's 64-byte blocks.
    for n in range(1, 80):
        def make(n: int = n) -> Client:
            c = Client("app", "secret")
            c.nonce = base64.b64encode(os.urandom(n)).decode().rstrip("=")
            return c
        got, client, handed_over = both(make)
        assert client.verified and handed_over == [], n


ERROR_CASES: dict[str, Callable[[], Client]] = {
    "wrong password": lambda: Client("app", "wrong"),
    "unknown user": lambda: Client("nobody", "secret"),
    "tampered nonce": lambda: Client("app", "secret", client_final=lambda b: b.replace(b",r=", b",r=x", 1)),
    "channel binding of another header": lambda: Client("app", "secret", cbind=lambda b: b"eSws"),
    "proof without padding": lambda: Client("app", "secret", client_final=lambda b: b.rstrip(b"=")),
    "proof not base64": lambda: Client("app", "secret", client_final=lambda b: b[:-3] + b"!!="),
    "short proof": lambda: Client("app", "secret", client_final=lambda b: b[:-8] + b"="),
    "extension in client-first": lambda: Client("app", "secret", client_first=lambda b: b + b",e=1"),
    "channel binding asked for": lambda: Client("app", "secret", client_first=lambda b: b"p=tls" + b[1:]),
    "authorization identity": lambda: Client("app", "secret", client_first=lambda b: b"n,a=x" + b[2:]),
    "space in the client nonce": lambda: Client("app", "secret", client_first=lambda b: b + b" x"),
    "another mechanism": lambda: Client("app", "secret", initial_body=lambda b: b"SCRAM-SHA-1" + b[13:]),
    "length that lies": lambda: Client("app", "secret", initial_body=lambda b: b[:14] + b"\0\0\0\x01" + b[18:]),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_every_refusal_is_the_python_logins(case: str) -> None:
    got, client, handed_over = both(ERROR_CASES[case])
    assert got[-1][0] == b"E", got
    assert not client.verified
    assert handed_over, "the C login decided a refusal itself"


def test_an_unknown_user_runs_the_c_login_as_far_as_a_wrong_password() -> None:
    # the same code up to the refusal, so the same cost: the proof is where both are refused
    assert both(ERROR_CASES["unknown user"])[2] == both(ERROR_CASES["wrong password"])[2] == [2]


@pytest.mark.parametrize("dsn", ["dbname=app password=server-pw", "dbname=app"])
def test_the_first_login_for_a_pool_waits_for_it_after_the_c_login(dsn: str) -> None:
    """With a server password the C login does the first login for a pool too; without,
    the server login passes the client's SCRAM key through (auth.server_credentials),
    which the first login learns in Python: the C login hands it over before its
    first message, and the pool it opens has the key."""
    rt = runtime(dsn=dsn)
    pool = rt.pools.pools[("app", "app")]
    rt.pools.pools.clear()
    opened: list[str] = []

    async def get(db: object, user: str, credentials: Any) -> Any:
        opened.append(user)
        assert credentials(db, user) if "password" not in dsn else True
        return pool

    rt.pools.get = get  # type: ignore[method-assign]

    async def main() -> tuple[bytes, bool]:
        session, transport = Session(rt), Transport()
        session.connection_made(transport)  # type: ignore[arg-type]
        client = Client("app", "secret")
        session.data_received(startup("app"))
        session.data_received(client.first())
        continue_ = split(transport.written)[-1][1][4:]
        transport.written = b""
        session.data_received(client.final(continue_))
        for _ in range(3):
            await asyncio.sleep(0)
        return transport.written, session.relaying

    Session.handed_over, Session.entered = [], 0
    written, relaying = asyncio.run(main())
    assert opened == ["app"] and relaying and Session.entered == 1
    assert Session.handed_over == ([] if "password" in dsn else [0])
    assert [k for k, _ in split(written)] == [b"R", b"R", b"S", b"S", b"K", b"Z"]
    if "password" not in dsn:
        assert set(auth.server_credentials(USERS["app"], rt.scram)) == {"scram_client_key", "scram_server_key"}


@given(st.sampled_from(["client_first", "client_final", "initial_body"]), st.integers(0, 120), st.integers(1, 255),
       st.binary(max_size=2), st.integers(0, 9))
@settings(max_examples=300, deadline=None)
def test_mutated_logins_end_as_the_python_login_ends_them(where: str, pos: int, flip: int, extra: bytes,
                                                          chunk: int) -> None:
    def mutate(data: bytes) -> bytes:  # one byte changed (or one added at the end), then 0-2 more
        p = pos % (len(data) + 1)
        changed = bytes([data[p] ^ flip]) if p < len(data) else bytes([flip])
        return data[:p] + changed + extra + data[p + 1:]

    both(lambda: Client("app", "secret", **{where: mutate}), chunk=chunk)


def test_what_the_c_login_leaves_ends_as_the_python_login_ends() -> None:
    # a user name outside printable ASCII: handed over after AuthenticationSASL, and logged in
    got, client, handed_over = both(lambda: Client("ünï", "secret"))
    assert client.verified and kinds(got)[-1] == b"Z" and handed_over == [1]
    # md5 and trust are the Python login's
    got, client, handed_over = both(lambda: Client("md5user", "secret"))
    assert got == [(b"R", struct.pack("!I", 5))] and handed_over == [0]  # this client answers no md5
    got, client, handed_over = both(lambda: Client("app", "secret"), method="trust")
    assert kinds(got)[:2] == [b"R", b"S"] and handed_over == [0]


def payload(**params: str) -> bytes:
    """A protocol 3.0 startup packet's payload, as the C login hands it to the plan."""
    return struct.pack("!I", messages.PROTOCOL_3_0) + b"".join(f"{k}\0{v}\0".encode() for k, v in params.items()) + b"\0"


SSL_REQUEST = struct.pack("!II", 8, messages.SSL_REQUEST)
GSSENC_REQUEST = struct.pack("!II", 8, messages.GSSENC_REQUEST)


@pytest.mark.parametrize("request_", [SSL_REQUEST, GSSENC_REQUEST], ids=["SSLRequest", "GSSENCRequest"])
def test_an_encryption_request_without_tls_is_answered_n_by_the_c_login(request_: bytes) -> None:
    # libpq's default (sslmode=prefer) asks for TLS first: with none configured, 'N' and the C login
    got, client, handed_over = both(lambda: Client("app", "secret"), first=request_)
    assert client.verified and kinds(got)[-1] == b"Z" and handed_over == []
    # handed over after the 'N': the Python login does not answer the request again
    got, client, handed_over = both(lambda: Client("md5user", "secret"), first=request_)
    assert got == [(b"R", struct.pack("!I", 5))] and handed_over == [0]


NEGOTIATION_CASES = {
    "startup pipelined after SSLRequest": [SSL_REQUEST + startup("app")],
    "two SSLRequests": [SSL_REQUEST, SSL_REQUEST, startup("app")],
    "four requests": [SSL_REQUEST, GSSENC_REQUEST, SSL_REQUEST, SSL_REQUEST],
    "SSLRequest, then a CancelRequest": [SSL_REQUEST, struct.pack("!IIII", 16, messages.CANCEL_REQUEST, 1, 2)],
    "SSLRequest, then a bad version": [SSL_REQUEST, struct.pack("!II", 8, 2 << 16)],
    "SSLRequest byte by byte": [SSL_REQUEST[i:i + 1] for i in range(8)] + [startup("app")],
}


@pytest.mark.parametrize("case", sorted(NEGOTIATION_CASES))
def test_encryption_requests_end_as_the_python_login_ends_them(case: str) -> None:
    outcomes = []
    for native in (False, True):
        session, transport = connected(native)
        answers = []
        for chunk in NEGOTIATION_CASES[case]:
            if not transport.closed:
                session.data_received(chunk)
            answers.append(transport.written)
            transport.written = b""
        outcomes.append((answers, transport.closed))
    assert outcomes[0] == outcomes[1]


def test_the_plan_declines_what_only_the_python_login_answers() -> None:
    rt = runtime()
    session = ClientSession(rt)
    session.connection_made(Transport())  # type: ignore[arg-type]
    plan = session._native_login_plan
    assert plan(payload(user="app", database="app")) is not None
    assert plan(payload(user="app", database="nodb")) is None  # 3D000
    assert plan(payload(user="nobody", database="app")) is not None  # mock keys
    assert plan(payload(user="", database="app")) is None  # 28000
    assert plan(payload(user="app", replication="false")) is None
    assert plan(payload(user="app", DateStyle="ISO")) is not None
    assert plan(payload(user="app", work_mem="1MB")) is not None  # any setting is the client's (settings.py)
    assert plan(payload(user="app", options="-x")) is None  # an options PostgreSQL cannot read: 42601
    assert plan(payload(user="app", _pq_x="1").replace(b"_pq_x", b"_pq_.x")) is None  # protocol options
    assert plan(struct.pack("!I", 3 << 16 | 1) + b"user\0app\0\0") is None  # 3.1: NegotiateProtocolVersion
    assert plan(payload(user="app").replace(b"app", b"\xff")) is None  # not UTF-8
    rt.draining = True
    assert plan(payload(user="app", database="app")) is None  # 57P01


def test_a_startup_packets_plan_is_kept_until_the_configuration_or_users_change() -> None:
    rt = runtime()
    first = [ClientSession(rt) for _ in range(3)]
    for session in first:
        session.connection_made(Transport())  # type: ignore[arg-type]
    app = payload(user="app", database="app")
    keys = first[0]._native_login_plan(app)
    assert keys is not None and list(rt.login_plans) == [app]
    kept = rt.login_plans[app]
    assert first[1]._native_login_plan(app) is keys and rt.login_plans[app] is kept  # the same decision, not redone
    assert (first[1].user, first[1].database) == ("app", "app")
    # what is not the packet's is checked at every login all the same
    rt.draining = True
    assert first[2]._native_login_plan(app) is None
    rt.draining = False
    rt.config = build_config({"auth": {"type": "scram-sha-256"}, "databases": {"app": {"dsn": "dbname=app"}},
                              "clients": {"max_client_conn": 2}}, Path("/nonexistent/poold.toml"))
    assert rt.login_plans == {}  # a new configuration: decided again
    rt.logins.pop(first[0])  # two logged in (max_client_conn counts those; logins have max_login_conn)
    rt.logins.pop(first[1])
    assert first[2]._native_login_plan(app) is None  # room for two: 53300 from the Python login
    rt.config = build_config({"auth": {"type": "scram-sha-256"}, "databases": {"other": {"dsn": "dbname=o"}}},
                             Path("/nonexistent/poold.toml"))
    assert first[2]._native_login_plan(app) is None  # the database is gone
    rt.config = build_config({"auth": {"type": "scram-sha-256"}, "databases": {"app": {"dsn": "dbname=app"}}},
                             Path("/nonexistent/poold.toml"))
    assert first[2]._native_login_plan(app) is not None
    rt.users = {**USERS, "app": Secret("scram", verifier("changed"))}
    assert rt.login_plans == {}  # a new auth file: decided again
    assert first[2]._native_login_plan(app) != keys


def test_the_kept_plans_are_bounded() -> None:
    rt = runtime()
    session = ClientSession(rt)
    session.connection_made(Transport())  # type: ignore[arg-type]
    for i in range(login_module._LOGIN_PLANS_KEPT + 10):
        assert session._native_login_plan(payload(user=f"nobody{i}", database="app")) is not None
    assert len(rt.login_plans) == login_module._LOGIN_PLANS_KEPT
    assert payload(user="nobody0", database="app") not in rt.login_plans  # the oldest went first
    assert payload(user=f"nobody{login_module._LOGIN_PLANS_KEPT + 9}", database="app") in rt.login_plans


def test_logins_after_the_first_run_on_the_kept_plan() -> None:
    """The first login makes the plan's welcome in Python; the next ones send it from C
    (client_welcome), with a cancel key of their own, and a query pipelined after the
    proof is relayed. The welcome tells the setting as the pool's server spelled it."""
    rt = runtime()
    pool = rt.pools.pools[("app", "app")]
    pool.spellings.learn("client_encoding", "latin1", "LATIN1")  # as a server answered (spellings._Question)
    Session.done_in_python = 0
    welcomes, sessions = [], []
    for i in range(3):
        session, transport = Session(rt), Transport()
        session.connection_made(transport)  # type: ignore[arg-type]
        client = Client("app", "secret")
        packet = payload(user="app", database="app", client_encoding="latin1")
        session.data_received(struct.pack("!I", len(packet) + 4) + packet)
        (kind, body), = split(transport.written)
        transport.written = b""
        session.data_received(client.first())
        (kind, body), = split(transport.written)
        transport.written = b""
        session.relayed = []  # type: ignore[attr-defined]
        session._relay = session.relayed.append  # type: ignore[attr-defined, method-assign]
        session.data_received(client.final(body[4:]) + (b"Q\0\0\0\x0dselect 1\0" if i == 2 else b""))
        got = split(transport.written)
        client.check(got[0][1][4:])
        assert client.verified and kinds(got)[-1] == b"Z" and session.relaying
        assert session.pool is pool and session not in rt.logins and session._plan is None
        assert session.wanted == {"client_encoding": "LATIN1"} and not session.session_mode
        assert (b"S", b"client_encoding\0LATIN1\0") in got
        pid, secret = struct.unpack("!ii", dict(got)[b"K"])
        assert session.key == (pid, secret) and rt.by_key[pid, secret] is session and secret > 0
        welcomes.append([m for m in got[1:] if m[0] != b"K"])  # after SASLFinal (its signature differs)
        sessions.append(session)
    assert Session.done_in_python == 1  # the first login; the others were C's
    assert welcomes[0] == welcomes[1] == welcomes[2]
    assert pool.clients == 3 and len({s.key for s in sessions}) == 3
    assert sessions[1].wanted is not sessions[2].wanted  # each session's own copy
    assert sessions[2].relayed == [b"Q\0\0\0\x0dselect 1\0"]  # type: ignore[attr-defined]
    assert sessions[0].relayed == []  # type: ignore[attr-defined]
    assert len(rt.login_plans) == 1


def test_a_kept_plan_still_meets_the_checks_of_every_login() -> None:
    """The C login takes a kept plan only where draining and max_client_conn allow
    (login_kept_plan); else the Python login refuses as it always did."""
    rt = runtime()
    session, transport = Session(rt), Transport()
    session.connection_made(transport)  # type: ignore[arg-type]
    session.data_received(startup("app"))
    assert len(rt.login_plans) == 1 and kinds(split(transport.written)) == [b"R"]  # kept, and in C

    def refused() -> bytes:
        session, transport = Session(rt), Transport()
        session.connection_made(transport)  # type: ignore[arg-type]
        handed = len(Session.handed_over)
        session.data_received(startup("app"))
        (kind, body), = split(transport.written)
        assert kind == b"E" and transport.closed and len(Session.handed_over) == handed + 1
        return body

    rt.draining = True
    assert b"C57P01\0" in refused()
    rt.draining = False
    crowd = [object() for _ in range(rt.config.clients.max_client_conn)]
    rt.clients.update(crowd)  # type: ignore[arg-type]
    assert b"C53300\0" in refused()
    rt.clients.difference_update(crowd)  # type: ignore[arg-type]
    session, transport = Session(rt), Transport()
    session.connection_made(transport)  # type: ignore[arg-type]
    session.data_received(startup("app"))
    assert kinds(split(transport.written)) == [b"R"] and session._plan is rt.login_plans[payload(
        user="app", database="app")]


STARTUP_CASES = {
    "no terminator": b"user\0app\0",
    "empty value last": b"user\0\0",
    "an odd string": b"user\0app\0database\0\0",
    "an empty name": b"user\0app\0\0x\0\0",
    "nothing": b"",
    "a lone NUL": b"\0",
    "protocol options": b"user\0app\0_pq_.x\0y\0\0",
    "not UTF-8": b"user\0\xff\0\0",
    "a surrogate": b"user\0\xed\xa0\x80\0\0",
    "a repeated name": b"user\0nobody\0user\0app\0database\0app\0\0",
}


@pytest.mark.parametrize("case", sorted(STARTUP_CASES))
def test_startup_packets_end_as_the_python_login_ends_them(case: str) -> None:
    body = struct.pack("!I", messages.PROTOCOL_3_0) + STARTUP_CASES[case]
    packet = struct.pack("!I", len(body) + 4) + body
    outcomes = []
    for native in (False, True):
        session, transport = connected(native)
        session.data_received(packet)
        outcomes.append((transport.written, transport.closed))
    assert outcomes[0] == outcomes[1]


def hba_runtime(rules: str) -> Runtime:
    from dataclasses import replace

    from poold import hba

    rt = runtime()
    rt.config = replace(rt.config, auth=replace(rt.config.auth, type="hba", hba_file="hba.conf"))
    rt.hba = hba.parse(rules)
    return rt


def test_under_an_hba_file_the_c_login_takes_scram_rules_only_keyed_by_origin() -> None:
    rt = hba_runtime("host all app 127.0.0.1/32 scram-sha-256\nhost all all all password\n")
    for user, handed in (("app", []), ("app", []), ("md5user", [0])):
        Session.handed_over = []
        session, transport = Session(rt), Transport()
        session.connection_made(transport)  # type: ignore[arg-type]
        session.data_received(startup(user))
        kind, body = split(transport.written)[0]
        transport.written = b""
        if body[:4] == struct.pack("!I", 10):  # SCRAM: the C login's
            client = Client(user, "secret")
            session.data_received(client.first())
            continue_ = split(transport.written)[-1][1][4:]
            transport.written = b""
            session.data_received(client.final(continue_))
        else:  # the password rule: AuthenticationCleartextPassword, from the Python login
            assert body[:4] == struct.pack("!I", 3)
            session.data_received(msg(b"p", b"secret\0"))
        assert session.relaying and split(transport.written)[-1][0] == b"Z", split(transport.written)
        assert Session.handed_over == handed
    # the kept plan is the packet's and the origin's: never found by the packet alone
    assert list(rt.login_plans) and all(isinstance(k, tuple) for k in rt.login_plans)
