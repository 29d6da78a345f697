"""Auth file parsing and the md5/SCRAM exchanges, driven by real client-side code."""

from __future__ import annotations

import asyncio
import hashlib
import struct
from typing import TypeVar

import pytest
import scramp

from poold import auth
from poold.protocol import messages

T = TypeVar("T")

USERLIST = '''
; comment
"alice" "plain pw"
"bob" "md5{md5}"
"carol" "{scram}"
"quote""d" "x"
'''


def scram_verifier(password: str) -> str:
    import base64

    salt, stored, server, it = scramp.ScramMechanism().make_auth_info(password, iteration_count=4096)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${it}:{b64(salt)}${b64(stored)}:{b64(server)}"


def users() -> dict[str, auth.Secret]:
    text = USERLIST.format(md5=hashlib.md5(b"bobpwbob").hexdigest(), scram=scram_verifier("carol pw"))
    return auth.parse_userlist(text)


def test_parse_userlist() -> None:
    u = users()
    assert u["alice"] == auth.Secret("plain", "plain pw")
    assert u["bob"].kind == "md5" and u["carol"].kind == "scram" and 'quote"d' in u
    with pytest.raises(ValueError, match="line 1"):
        auth.parse_userlist("alice plain\n")


async def drive(steps: auth.Steps[T]) -> T:
    """Run login steps as ClientSession does: awaitables are awaited and sent back in."""
    value = None
    while True:
        try:
            step = steps.send(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        assert step is not None, "asked for a client message that was never sent"
        value = await step


class Peer:
    """The client side of an exchange: replies computed with scramp / md5 like libpq."""

    def __init__(self, user: str, password: str, empty_scram_user: bool = True) -> None:
        self.user, self.password = user, password
        self.empty = empty_scram_user
        self.replies: list[tuple[int, bytes]] = []
        self.sent: list[bytes] = []
        self.client: scramp.ScramClient | None = None

    def send(self, data: bytes) -> None:
        self.sent.append(data)
        code = struct.unpack_from("!i", data, 5)[0]
        body = data[9:]
        if code == 5:  # md5
            inner = hashlib.md5((self.password + self.user).encode()).hexdigest()
            outer = "md5" + hashlib.md5(inner.encode() + body).hexdigest()
            self.replies.append((ord("p"), outer.encode() + b"\0"))
        elif code == 10:  # SASL
            self.client = scramp.ScramClient(["SCRAM-SHA-256"], self.user, self.password)
            first = self.client.get_client_first()
            if self.empty:  # libpq sends an empty user name
                first = first.replace(f"n={self.user},", "n=,")
                self.client.client_first_bare = self.client.client_first_bare.replace(f"n={self.user},", "n=,")
            self.replies.append((ord("p"), b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first.encode()))
        elif code == 11:
            assert self.client is not None
            self.client.set_server_first(body.decode())
            self.replies.append((ord("p"), self.client.get_client_final().encode()))
        elif code == 12:
            assert self.client is not None
            self.client.set_server_final(body.decode())  # verifies the server's signature

    def read(self) -> auth.Steps[tuple[int, bytes]]:
        while not self.replies:
            yield None
        return self.replies.pop(0)


async def exchange(method: str, user: str, password: str, known: dict[str, auth.Secret]) -> Peer:
    peer = Peer(user, password)
    final = await drive(auth.authenticate(method, user, known.get(user), peer.read, peer.send, auth.ScramCache()))
    if final:  # SCRAM's final message, sent by the caller with AuthenticationOk
        peer.send(final)
    return peer


@pytest.mark.parametrize(
    ("method", "user", "password"),
    [
        ("scram-sha-256", "alice", "plain pw"),
        ("scram-sha-256", "carol", "carol pw"),
        ("md5", "alice", "plain pw"),
        ("md5", "bob", "bobpw"),
        ("scram-sha-256", "bob", "bobpw"),  # md5 secret: falls back to md5, as PgBouncer does
        ("md5", "carol", "carol pw"),  # SCRAM secret: SCRAM even when md5 is configured
    ],
)
def test_right_password(method: str, user: str, password: str) -> None:
    peer = asyncio.run(exchange(method, user, password, users()))
    kinds = [struct.unpack_from("!i", m, 5)[0] for m in peer.sent]
    assert kinds[0] in (5, 10)
    if kinds[0] == 10:
        assert kinds[-1] == 12  # server signature sent and verified by the client


@pytest.mark.parametrize(("method", "user"), [("scram-sha-256", "alice"), ("md5", "alice"),
                                              ("scram-sha-256", "carol"), ("scram-sha-256", "nobody"),
                                              ("md5", "nobody")])
def test_wrong_password_or_unknown_user_is_28p01(method: str, user: str) -> None:
    with pytest.raises(auth.AuthFailed) as info:
        asyncio.run(exchange(method, user, "wrong", users()))
    assert info.value.sqlstate == "28P01"


def test_trust_sends_nothing() -> None:
    peer = asyncio.run(exchange("trust", "anyone", "", {}))
    assert peer.sent == []


def test_pbkdf2_is_cached_and_off_the_loop() -> None:
    async def main() -> tuple[object, object, set[int]]:
        import threading

        cache = auth.ScramCache()
        threads: set[int] = set()
        original = cache._mechanism.make_auth_info

        def spy(pw: str) -> object:
            threads.add(threading.get_ident())
            return original(pw)

        cache._mechanism.make_auth_info = spy  # type: ignore[method-assign]
        a = await drive(cache.auth_info("alice", auth.Secret("plain", "pw")))
        b = await drive(cache.auth_info("alice", auth.Secret("plain", "pw")))
        return a, b, threads - {threading.get_ident()}

    a, b, worker_threads = asyncio.run(main())
    assert a is b  # second login reuses the derived keys
    assert len(worker_threads) == 1  # derived in a worker thread, once


def test_malformed_sasl_is_refused() -> None:
    def read() -> auth.Steps[tuple[int, bytes]]:
        return (ord("p"), b"SCRAM-SHA-256\0" + struct.pack("!i", 3) + b"xyz")
        yield  # a generator, with its message already there

    async def main() -> None:
        await drive(auth.authenticate("scram-sha-256", "alice", users()["alice"], read, lambda _d: None,
                                      auth.ScramCache()))

    with pytest.raises(auth.AuthFailed):
        asyncio.run(main())
    assert messages.PASSWORD == ord("p")


def test_unknown_users_meet_a_stable_salt_per_name() -> None:
    """As PostgreSQL's mock salt: asking twice for the same unknown user gives the same salt."""
    cache = auth.ScramCache()
    assert cache.mock_info("ghost")[0] == cache.mock_info("ghost")[0]
    assert cache.mock_info("ghost")[0] != cache.mock_info("other")[0]


def test_empty_passwords_are_refused_at_load_naming_the_line() -> None:
    with pytest.raises(ValueError, match='line 2: empty password for user "eve"'):
        auth.parse_userlist('"alice" "pw"\n"eve" ""\n')
    empty_md5 = "md5" + hashlib.md5(b"eve").hexdigest()  # md5("" + "eve")
    with pytest.raises(ValueError, match='line 1: empty password for user "eve"'):
        auth.parse_userlist(f'"eve" "{empty_md5}"\n')


@pytest.mark.parametrize("method", ["scram-sha-256", "md5"])
def test_an_empty_secret_from_anywhere_never_logs_in(method: str) -> None:
    with pytest.raises(auth.AuthFailed):
        asyncio.run(exchange(method, "eve", "", {"eve": auth.Secret("plain", "")}))


def test_a_scram_login_reveals_the_client_key_for_pass_through() -> None:
    import base64
    import hmac

    secret = users()["carol"]
    cache = auth.ScramCache()
    assert auth.server_credentials(secret, cache) == {} and auth.needs_client_key(secret, cache)
    peer = Peer("carol", "carol pw")
    final = asyncio.run(drive(auth.authenticate("scram-sha-256", "carol", secret, peer.read, peer.send, cache)))
    peer.send(final)
    salt, _stored, server_key, iterations = auth.scram_info_from_verifier(secret.value)
    salted = hashlib.pbkdf2_hmac("sha256", b"carol pw", salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    assert auth.server_credentials(secret, cache) == {"scram_client_key": base64.b64encode(client_key).decode(),
                                                     "scram_server_key": base64.b64encode(server_key).decode()}
    assert not auth.needs_client_key(secret, cache)
    # a wrong password teaches nothing; plain passwords and md5 hashes as before
    other, wrong = auth.ScramCache(), Peer("carol", "no")
    with pytest.raises(auth.AuthFailed):
        asyncio.run(drive(auth.authenticate("scram-sha-256", "carol", secret, wrong.read, wrong.send, other)))
    assert other.client_keys == {}
    assert auth.server_credentials(users()["alice"], cache) == {"password": "plain pw"}
    assert auth.server_credentials(users()["bob"], cache) == {}
