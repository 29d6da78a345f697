"""auth_query: users' secrets looked up in the database, so they need not be copied to a file.

As PgBouncer's ``auth_user`` and ``auth_query``: a user the auth file does not
know is looked up with ``[auth] query`` (PgBouncer's default,
``SELECT usename, passwd FROM pg_shadow WHERE usename=$1``, or a SECURITY
DEFINER function over ``pg_authid``), run as ``[auth] user``, whose own
password is the auth file's (or the DSN's, when the DSN names that user).

- One dedicated connection per database, opened on first use and reused; a
  broken one is replaced at the next lookup. It is no pool's: a login never
  waits behind a pool's clients for its secret.
- Answers are kept for ``query_ttl`` seconds, a user not found as well (so that
  unknown names cannot make poold query on every attempt); concurrent logins for
  the same user share one query.
- A user not found, or found without a password, comes back as None: the login
  then fails as a wrong password does (no user enumeration).
- psycopg's async connection: nothing here blocks the event loop, and a lookup
  that takes longer than QUERY_TIMEOUT fails its logins (08006) and drops the
  connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog
from psycopg import AsyncConnection, AsyncRawCursor
from psycopg.conninfo import make_conninfo

from .auth import Secret, secret_from_text
from .errors import PooldError

if TYPE_CHECKING:
    from .config import AuthSettings, DatabaseSettings

log = structlog.get_logger("poold.authquery")

#: answers kept at most; beyond, the oldest are dropped
_KEPT = 10_000
#: seconds a lookup (connecting included) may take; a database that does not answer
#: fails the logins waiting for it rather than holding them to login_timeout
QUERY_TIMEOUT = 10.0


class AuthQuery:
    def __init__(self, settings: AuthSettings, users: Mapping[str, Secret]) -> None:
        self.settings = settings
        self.users = users
        self._conns: dict[str, AsyncConnection[Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: (database, user) -> (when it expires, the secret or None)
        self._answers: dict[tuple[str, str], tuple[float, Secret | None]] = {}
        self._pending: dict[tuple[str, str], asyncio.Future[Secret | None]] = {}

    def known(self, db: DatabaseSettings, user: str, now: float) -> tuple[bool, Secret | None]:
        """(True, the secret or None) when an answer is at hand and fresh; else (False, None)."""
        answer = self._answers.get((db.name, user))
        if answer is None or answer[0] <= now:
            return False, None
        return True, answer[1]

    def last(self, db: DatabaseSettings, user: str) -> Secret | None:
        """The last answer for a user, however old: what its server login may use (a
        login asks again once ``query_ttl`` is past; a server connection need not)."""
        answer = self._answers.get((db.name, user))
        return answer[1] if answer is not None else None

    def lookup(self, db: DatabaseSettings, user: str) -> asyncio.Future[Secret | None]:
        """The user's secret (None: not found), from the kept answers or one query."""
        key = (db.name, user)
        fut = self._pending.get(key)
        if fut is not None:
            return fut
        loop = asyncio.get_running_loop()
        hit, secret = self.known(db, user, time.monotonic())
        if hit:
            fut = loop.create_future()
            fut.set_result(secret)
            return fut
        fut = self._pending[key] = asyncio.ensure_future(self._query(db, user))
        fut.add_done_callback(lambda _f: self._pending.pop(key, None))
        return fut

    async def _query(self, db: DatabaseSettings, user: str) -> Secret | None:
        lock = self._locks.setdefault(db.name, asyncio.Lock())
        async with lock:  # one query at a time on a database's connection
            try:
                async with asyncio.timeout(QUERY_TIMEOUT):
                    row = await self._run(db, user)
            except Exception as exc:  # the query or its connection failed: this login cannot be decided
                conn = self._conns.pop(db.name, None)
                if conn is not None:
                    await conn.close()
                log.warning("auth_query_failed", db=db.name, user=user, error=str(exc) or type(exc).__name__)
                raise PooldError("08006", "auth_query failed: the user's password could not be looked up") from None
        secret = None
        if row is not None and row[1]:
            try:
                secret = secret_from_text(user, str(row[1]))
            except ValueError:  # not a secret poold can check (an empty one, a malformed verifier)
                secret = None
        if len(self._answers) >= _KEPT:
            del self._answers[next(iter(self._answers))]
        self._answers[(db.name, user)] = (time.monotonic() + self.settings.query_ttl, secret)
        return secret

    async def _run(self, db: DatabaseSettings, user: str) -> tuple[Any, ...] | None:
        conn = self._conns.get(db.name)
        if conn is None or conn.closed or conn.broken:
            conn = await AsyncConnection.connect(self._conninfo(db), autocommit=True)
            self._conns[db.name] = conn
        cur = AsyncRawCursor(conn)  # $1, as PgBouncer's auth_query is written
        await cur.execute(self.settings.query, (user,))
        return await cur.fetchone()

    def _conninfo(self, db: DatabaseSettings) -> str:
        """The database's DSN as the auth user: its password from the auth file, or the
        DSN's when the DSN names that user; never the password of another user."""
        info = dict(db.conninfo)
        auth_user = self.settings.user
        if info.get("user") != auth_user:
            info.pop("password", None)
            info.pop("passfile", None)
        info["user"] = auth_user
        secret = self.users.get(auth_user)
        if secret is not None and secret.plain:
            info["password"] = secret.plain
        info["application_name"] = "poold auth_query"
        return make_conninfo("", **info)

    async def close(self) -> None:
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            await conn.close()
