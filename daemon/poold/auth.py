"""Client authentication: the auth file and the trust, md5 and SCRAM exchanges.

The auth file uses PgBouncer's userlist.txt format: one ``"user" "secret"`` per
line, where the secret is a plain password, ``md5`` + md5(password + user), or a
SCRAM verifier ``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>``.

SCRAM: the exchange is protocol/scram.py (a few HMACs per login). Deriving keys
from a plain password (SASLprep, then PBKDF2) is scramp's make_auth_info and
the only expensive step; it runs in a worker thread, once per (user, password),
and the derived keys are cached, as PgBouncer 1.25 does. An unknown user is run
through the exchange against random keys, so it costs the same and cannot pass.

The exchanges are generators of login steps (see ``Steps``): they yield None
for the client's next message and an awaitable only when they must wait for
something else (keys being derived), so a login costs no task and no future.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import scramp

from . import hba
from .config import Config, ConfigError
from .protocol import messages
from .protocol.errors import ProtocolError
from .protocol.scram import ScramError, ScramExchange

_LINE = re.compile(r'^\s*"((?:[^"]|"")*)"\s+"((?:[^"]|"")*)"')
_SCRAM = re.compile(r"^SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)$")

_AUTH_SCRAM = messages.auth_sasl(["SCRAM-SHA-256"])
_AUTH_CLEARTEXT = messages.auth_cleartext()

#: (salt, stored_key, server_key, iterations), scramp's auth_info shape
AuthInfo = tuple[bytes, bytes, bytes, int]
#: what the C login takes: StoredKey, ServerKey, and the end of server-first
NativeKeys = tuple[bytes, bytes, bytes]

T = TypeVar("T")
#: A login step: yields None to wait for the client's next message, or an
#: awaitable to wait for (its result is sent back in); returns T.
Steps = Generator[Awaitable[Any] | None, Any, T]


class AuthFailed(ProtocolError):
    """Wrong password or unknown user: FATAL 28P01, the same answer for both."""

    sqlstate = "28P01"


@dataclass(frozen=True)
class Secret:
    kind: str  # "plain", "md5" or "scram"
    value: str

    @property
    def plain(self) -> str | None:
        return self.value if self.kind == "plain" else None


def usable(secret: Secret | None) -> Secret | None:
    """The secret a login may be checked against: an empty one is none at all, so a
    user whose secret is empty is refused as an unknown user is (PgBouncer does the
    same; the auth file refuses them at load, this holds for any other source)."""
    return secret if secret is not None and secret.value else None


def parse_userlist(text: str) -> dict[str, Secret]:
    users: dict[str, Secret] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith((";", "#")):
            continue
        m = _LINE.match(line)
        if not m:
            raise ValueError(f'line {lineno}: expected "user" "password"')
        user, secret = (g.replace('""', '"') for g in m.groups())
        try:
            users[user] = secret_from_text(user, secret)
        except ValueError as exc:
            raise ValueError(f"line {lineno}: {exc}") from None
    return users


def secret_from_text(user: str, secret: str) -> Secret:
    """A stored secret, as the auth file or pg_authid holds it: a SCRAM verifier, an md5
    hash, or a plain password. ValueError for an empty password or a malformed verifier."""
    if not secret or secret == md5_secret(user, ""):
        # PostgreSQL never accepts an empty password (it clears one given to
        # CREATE ROLE, and refuses one sent at login): neither does poold.
        raise ValueError(f'empty password for user "{user}": PostgreSQL never accepts one')
    if secret.startswith("SCRAM-SHA-256$"):
        if not _SCRAM.match(secret):
            raise ValueError(f"malformed SCRAM verifier for {user!r}")
        return Secret("scram", secret)
    if len(secret) == 35 and secret.startswith("md5"):
        return Secret("md5", secret)
    return Secret("plain", secret)


def load_userlist(path: str) -> dict[str, Secret]:
    if not path or not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return parse_userlist(f.read())


@dataclass(frozen=True)
class AuthFiles:
    """What a configuration's auth files say: the users' secrets, and the hba rules
    (None unless ``auth.type = "hba"``)."""

    users: dict[str, Secret]
    hba: hba.Hba | None = None


def load_auth_files(config: Config) -> AuthFiles:
    """The auth file and hba file a configuration names; ConfigError naming the key,
    the file and the line of every one that cannot be read."""
    errors, users, rules = [], {}, None
    try:
        users = load_userlist(config.auth.file)
    except (OSError, ValueError) as exc:
        errors.append(f"auth.file: {config.auth.file}: {_reason(exc)}")
    if config.auth.type == "hba":
        try:
            rules = hba.load(config.auth.hba_file)
        except (OSError, ValueError) as exc:
            errors.append(f"auth.hba_file: {config.auth.hba_file}: {_reason(exc)}")
        else:
            for rule in rules.rules:
                if rule.method == "cert" and not config.tls.ca_file:
                    errors.append(f"auth.hba_file: {config.auth.hba_file}: line {rule.lineno}: "
                                  "cert needs tls.ca_file to verify client certificates")
    if errors:
        raise ConfigError(errors)
    return AuthFiles(users, rules)


def _reason(exc: Exception) -> str:
    return exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)


def certificate_user(cert: dict[str, Any]) -> str | None:
    """The user a verified client certificate names: its subject's common name, which
    the ``cert`` method requires to equal the user name (PostgreSQL's default, no map)."""
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


def md5_secret(user: str, password: str) -> str:
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


def check_md5(response: bytes, secret: Secret, user: str, salt: bytes) -> bool:
    stored = secret.value if secret.kind == "md5" else md5_secret(user, secret.value)
    expected = "md5" + hashlib.md5(stored[3:].encode() + salt).hexdigest()
    return hmac.compare_digest(response, expected.encode())


def scram_info_from_verifier(verifier: str) -> AuthInfo:
    m = _SCRAM.match(verifier)
    if not m:
        raise ValueError("malformed SCRAM verifier")
    iterations, salt, stored, server = m.groups()
    return (
        base64.b64decode(salt),
        base64.b64decode(stored),
        base64.b64decode(server),
        int(iterations),
    )


class ScramCache:
    """Derived SCRAM keys per (user, plain password); derivation off the loop."""

    def __init__(self) -> None:
        self._mechanism = scramp.ScramMechanism("SCRAM-SHA-256")
        self._cache: dict[tuple[str, str], asyncio.Future[AuthInfo]] = {}
        self._verifiers: dict[str, AuthInfo] = {}  # parsed SCRAM verifiers
        #: ClientKey by StoredKey, learned from logins whose proof was verified (see
        #: server_credentials): the same for every login against the same verifier
        self.client_keys: dict[bytes, bytes] = {}
        self._mock_key = os.urandom(32)

    def auth_info(self, user: str, secret: Secret) -> Steps[AuthInfo]:
        if secret.kind == "scram":
            return self._verifier(secret.value)
        key = (user, secret.value)
        fut = self._cache.get(key)
        if fut is None:
            loop = asyncio.get_running_loop()
            # PBKDF2 at 4096 iterations is milliseconds of CPU: never on the loop.
            fut = loop.run_in_executor(None, self._mechanism.make_auth_info, secret.value)
            self._cache[key] = fut
            if len(self._cache) > 10_000:  # bounded: drop the oldest entries
                for old in list(self._cache)[:1000]:
                    del self._cache[old]
        if not fut.done():
            # Waited for, never cancelled: a login that gives up leaves it to the next.
            yield fut
        if fut.cancelled() or fut.exception() is not None:
            self._cache.pop(key, None)
        return fut.result()

    def _verifier(self, verifier: str) -> AuthInfo:
        info = self._verifiers.get(verifier)
        if info is None:
            info = self._verifiers[verifier] = scram_info_from_verifier(verifier)
            if len(self._verifiers) > 10_000:  # bounded, as the derived keys are
                self._verifiers.pop(next(iter(self._verifiers)))
        return info

    def auth_info_now(self, secret: Secret) -> AuthInfo:
        """A SCRAM verifier's keys (parsed once)."""
        return self._verifier(secret.value)

    def known_info(self, user: str, secret: Secret) -> AuthInfo | None:
        """The keys if they are at hand now (a verifier, or a password derived already)."""
        if secret.kind == "scram":
            return self._verifier(secret.value)
        fut = self._cache.get((user, secret.value))
        if fut is None or not fut.done() or fut.cancelled() or fut.exception() is not None:
            return None
        return fut.result()

    def mock_info(self, user: str) -> AuthInfo:
        """Keys for an unknown user: the exchange runs and no proof matches. The
        salt is stable per user name, as PostgreSQL's mock salt is, so that
        asking twice cannot tell an unknown user from a known one."""
        salt = hashlib.sha256(self._mock_key + user.encode()).digest()[:16]
        return salt, self._mock_key, os.urandom(32), 4096


ReadMessage = Callable[[], Steps[tuple[int, bytes]]]
Send = Callable[[bytes], None]
Hold = Callable[[], Steps[None]] | None


def authenticate(
    method: str,
    user: str,
    secret: Secret | None,
    read: ReadMessage,
    send: Send,
    cache: ScramCache,
    nonce: str | None = None,
    hold: Hold = None,
) -> Steps[bytes]:
    """Run one authentication exchange; raise AuthFailed or ProtocolError.

    Returns what is left to send with AuthenticationOk: SCRAM's final message,
    or nothing; the caller joins it to its welcome, saving a write. ``nonce``:
    the server's SCRAM nonce, when it was chosen already (the C login's).
    ``hold``: steps run before the password or proof is checked (waiting for
    its turn: loginguard).
    """
    secret = usable(secret)
    exchange = exchange_for(method, secret)
    if exchange == "trust":
        return b""
    if exchange == "md5":
        yield from _md5(user, secret, read, send, hold)
        return b""
    if exchange == "password":
        yield from _password(user, secret, read, send, hold)
        return b""
    return (yield from _scram(user, secret, read, send, cache, nonce, hold))


def exchange_for(method: str, secret: Secret | None) -> str:
    """Which exchange a login runs: "trust", "password", "md5" or "scram".

    md5 when asked for, and also when the stored secret is an md5 hash, which
    cannot answer SCRAM (PgBouncer does the same); SCRAM otherwise. An unknown
    user (no secret) meets the configured method's exchange all the same, so
    that it cannot be told from a wrong password.
    """
    if method in ("trust", "password"):
        return method
    kind = secret.kind if secret is not None else None
    if kind == "md5" or (method == "md5" and kind in ("plain", None)):
        return "md5"
    return "scram"


def native_scram_keys(method: str, user: str, secret: Secret | None, cache: ScramCache) -> NativeKeys | None:
    """What the C login needs to run this user's SCRAM exchange: StoredKey, ServerKey
    and the end of server-first (``,s=<salt>,i=<iterations>``); None when ``authenticate``
    would not run SCRAM, or the keys are not at hand without waiting."""
    secret = usable(secret)
    if exchange_for(method, secret) != "scram":
        return None
    if secret is None:  # an unknown user: mock keys, new each time
        return _native_keys(cache.mock_info(user))
    info = cache.known_info(user, secret)
    return _native_keys(info) if info is not None else None


def _native_keys(info: AuthInfo) -> NativeKeys:
    salt, stored_key, server_key, iterations = info
    return stored_key, server_key, f",s={base64.b64encode(salt).decode()},i={iterations}".encode()


def _md5(user: str, secret: Secret | None, read: ReadMessage, send: Send, hold: Hold) -> Steps[None]:
    salt = os.urandom(4)
    send(messages.auth_md5(salt))
    t, body = yield from read()
    if t != messages.PASSWORD:
        raise ProtocolError("expected password response", "28000")
    if hold is not None:
        yield from hold()
    if secret is None or not check_md5(messages.parse_password(body), secret, user, salt):
        raise AuthFailed(f'password authentication failed for user "{user}"')


def _password(user: str, secret: Secret | None, read: ReadMessage, send: Send, hold: Hold) -> Steps[None]:
    """The ``password`` method: the client sends its password in clear (over TLS, one
    hopes); checked against whatever the secret is, the SCRAM one off the loop."""
    send(_AUTH_CLEARTEXT)
    t, body = yield from read()
    if t != messages.PASSWORD:
        raise ProtocolError("expected password response", "28000")
    if hold is not None:
        yield from hold()
    password = messages.parse_password(body).decode("utf-8", "replace")
    failed = AuthFailed(f'password authentication failed for user "{user}"')
    if not password or secret is None:  # PostgreSQL: "empty password returned by client"
        raise failed
    if secret.kind == "plain":
        ok = hmac.compare_digest(password.encode(), secret.value.encode())
    elif secret.kind == "md5":
        ok = hmac.compare_digest(md5_secret(user, password).encode(), secret.value.encode())
    else:
        salt, stored_key, _server_key, iterations = scram_info_from_verifier(secret.value)
        # PBKDF2 at the verifier's iterations is milliseconds of CPU: never on the loop.
        derive = asyncio.get_running_loop().run_in_executor(None, _stored_key, password, salt, iterations)
        ok = hmac.compare_digest((yield derive), stored_key)
    if not ok:
        raise failed


def _stored_key(password: str, salt: bytes, iterations: int) -> bytes:
    """SCRAM's StoredKey of a password (RFC 5802), SASLprep'd as PostgreSQL does."""
    salted = hashlib.pbkdf2_hmac("sha256", _saslprep(password).encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return hashlib.sha256(client_key).digest()


def _saslprep(password: str) -> str:
    """PostgreSQL uses the password as it is when SASLprep refuses it."""
    try:
        return scramp.core.saslprep(password)  # type: ignore[attr-defined,no-any-return]
    except Exception:
        return password


def _scram(user: str, secret: Secret | None, read: ReadMessage, send: Send, cache: ScramCache,
           nonce: str | None, hold: Hold) -> Steps[bytes]:
    send(_AUTH_SCRAM)
    t, body = yield from read()
    if t != messages.PASSWORD:
        raise ProtocolError("expected SASL response", "28000")
    mechanism, client_first = messages.parse_sasl_initial(body)
    if mechanism != "SCRAM-SHA-256":
        raise ProtocolError(f"client selected an invalid SASL mechanism {mechanism!r}", "28000")
    salt, stored_key, server_key, iterations = (
        (yield from cache.auth_info(user, secret)) if secret is not None else cache.mock_info(user)
    )
    exchange = ScramExchange(stored_key, server_key, salt, iterations, nonce)
    try:
        send(messages.auth_sasl_continue(exchange.server_first(client_first)))
        t, body = yield from read()
        if t != messages.PASSWORD:
            raise ProtocolError("expected SASL response", "28000")
        if hold is not None:
            yield from hold()
        final = exchange.server_final(body)
    except ScramError as exc:
        raise AuthFailed(f'password authentication failed for user "{user}"') from exc
    if secret is None:  # no proof matches the mock keys; refused here all the same
        raise AuthFailed(f'password authentication failed for user "{user}"')
    if secret.kind == "scram" and stored_key not in cache.client_keys:
        if len(cache.client_keys) >= 10_000:  # bounded, as the derived keys are
            del cache.client_keys[next(iter(cache.client_keys))]
        cache.client_keys[stored_key] = exchange.client_key
    return messages.auth_sasl_final(final)


def server_credentials(secret: Secret | None, cache: ScramCache) -> dict[str, str]:
    """What a server login as this user can authenticate with, as libpq conninfo
    parameters: a plain password; or, for a SCRAM verifier, the ClientKey a client
    login revealed with the verifier's ServerKey (SCRAM pass-through, libpq 18's
    ``scram_client_key`` and ``scram_server_key``: the server must hold the same
    verifier, which it does when the verifier came from its pg_authid); else nothing."""
    secret = usable(secret)
    if secret is None or secret.kind == "md5":  # an md5 hash cannot log in through libpq
        return {}
    if secret.kind == "plain":
        return {"password": secret.value}
    _salt, stored_key, server_key, _iterations = cache.auth_info_now(secret)
    client_key = cache.client_keys.get(stored_key)
    if client_key is None:
        return {}
    return {"scram_client_key": base64.b64encode(client_key).decode(),
            "scram_server_key": base64.b64encode(server_key).decode()}


def needs_client_key(secret: Secret | None, cache: ScramCache) -> bool:
    """A SCRAM verifier whose ClientKey no login has revealed yet (see server_credentials)."""
    secret = usable(secret)
    return secret is not None and secret.kind == "scram" and cache.auth_info_now(secret)[1] not in cache.client_keys
