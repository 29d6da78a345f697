"""Settings as PostgreSQL spells them: what a server reports for a value a client asked for.

PostgreSQL normalises the value of a setting before it reports it in
ParameterStatus: client_encoding 'utf8' is 'UTF8', DateStyle 'iso' is
'ISO, MDY', TimeZone 'europe/paris' is 'Europe/Paris'. Drivers compare these
strings, so the settings poold tells a client at login must be spelled the
server's way, and only the server knows its rules (they vary with its version
and its time zone files). A pool therefore asks one of its server connections,
once per (setting, value), and keeps the answer (``Spellings``, bounded).

The question (``_Question``) is asked on a link leased from the pool like any
client's, in two internal queries:

    BEGIN; SELECT set_config('name', 'value', true), ...
                                            the server reports (ParameterStatus,
                                            before its ReadyForQuery) each setting
                                            whose value changed, spelled its way
    ROLLBACK                                every setting is as it was

A setting reported unchanged already had that value: the link's, as the server
last reported it. A setting PostgreSQL does not report (search_path,
extra_float_digits) keeps the client's spelling: the question only checks that
the server takes it. A value the server refuses fails the question with its
ErrorResponse, which the login passes to the client as FATAL, as PostgreSQL
does for a bad startup parameter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

import structlog

from .errors import PooldError, ServerRefusal
from .protocol import messages
from .relay import quote_literal
from .settings import setting_name

if TYPE_CHECKING:
    from .pools import Pool
    from .relay import ServerLink

log = structlog.get_logger("poold.spellings")


#: (setting, value) answers a pool keeps; beyond, the oldest is dropped
KEPT = 1000


class Spellings:
    """A pool's known spellings: (setting, value as a client sent it) -> value as reported."""

    __slots__ = ("_asking", "_known")

    def __init__(self) -> None:
        self._known: dict[tuple[str, str], str] = {}
        # questions in flight, by what they ask ((name, name as written, value) each): logins share one
        self._asking: dict[frozenset[tuple[str, str, str]], asyncio.Future[dict[str, str]]] = {}

    def spell(self, wanted: Mapping[str, str], defaults: Mapping[str, str]) -> dict[str, str] | None:
        """``wanted`` spelled as the server reports it, or None while a value is not known yet.

        A value equal to the pool's default is the server's own spelling already."""
        known = self._known
        spelled = {}
        for name, value in wanted.items():
            canon = value if defaults.get(name) == value else known.get((name, value))
            if canon is None:
                return None
            spelled[name] = canon
        return spelled

    async def ask(self, pool: Pool, wanted: Mapping[str, str], sent: Mapping[str, str]) -> dict[str, str]:
        """``wanted`` spelled as the server reports it, asking a server connection of
        ``pool`` for what is not known. Raises ServerRefusal for a value the server
        refuses, PooldError when no server connection answers.

        ``sent``: the startup packet's parameters, for the names as the client wrote
        them: PostgreSQL's refusal of some values repeats the name as written."""
        defaults = pool.defaults or {}
        missing = {n: v for n, v in wanted.items() if defaults.get(n) != v and (n, v) not in self._known}
        learned: dict[str, str] = {}
        if missing:
            names = {setting_name(k): k for k in sent}
            key = frozenset((n, names.get(n, n), v) for n, v in missing.items())
            question = self._asking.get(key)
            if question is None:
                question = self._asking[key] = asyncio.get_running_loop().create_future()
                question.add_done_callback(lambda _: self._asking.pop(key, None))
                _Question(self, pool, missing, names, question).ask()
            learned = await asyncio.shield(question)  # shared: one login giving up must not end it
        return {n: learned[n] if n in learned else self._lookup(n, v, defaults) for n, v in wanted.items()}

    def _lookup(self, name: str, value: str, defaults: Mapping[str, str]) -> str:
        if defaults.get(name) == value:
            return value
        return self._known.get((name, value), value)

    def learn(self, name: str, value: str, canon: str) -> None:
        """The server spells ``value`` of ``name`` as ``canon`` (and ``canon`` itself so)."""
        known = self._known
        for key in ((name, value), (name, canon)):
            if key not in known:
                if len(known) >= KEPT:
                    del known[next(iter(known))]  # the oldest
                known[key] = canon


class _Question:
    """One question to a server connection: a pools.Waiter for a link, then its relay.ServerOwner."""

    __slots__ = ("_answer", "_asked", "_before", "_names", "_pool", "_refusal", "_reported", "_spellings")

    def __init__(self, spellings: Spellings, pool: Pool, asked: dict[str, str], names: Mapping[str, str],
                 answer: asyncio.Future[dict[str, str]]) -> None:
        self._spellings, self._pool, self._asked, self._answer = spellings, pool, asked, answer
        self._names = names  # the names as the client wrote them
        self._reported: dict[str, str] | None = None  # what the server reported before its first ReadyForQuery
        self._before: dict[str, str] = {}
        self._refusal: bytes | None = None

    def ask(self) -> None:
        log.info("startup_settings_asked", pool=self._pool.name, settings=sorted(self._asked))
        link = self._pool.acquire(self)
        if link is not None:
            self.on_server(link)

    # -- pools.Waiter ------------------------------------------------------

    def on_server(self, link: ServerLink) -> None:
        if self._answer.done():  # (cannot happen: nothing else ends it while it waits)
            self._pool.release(link)
            return
        link.owner = self
        params, defaults = link.params, link.defaults
        # What the server last reported for each asked setting it reports (those in its defaults).
        self._before = {n: params.get(n, defaults[n]) for n in self._asked if n in defaults}
        self._reported = {}
        names = self._names
        # set_config() reads a value as a startup packet's is read (a list such as search_path too)
        sets = ", ".join(f"set_config({quote_literal(names.get(n, n))}, {quote_literal(v)}, true)"
                         for n, v in self._asked.items())
        link.run_internal([f"BEGIN; SELECT {sets}"], self._rollback, self._refused)

    def on_acquire_failed(self, error: PooldError) -> None:
        if not self._answer.done():
            self._answer.set_exception(error)

    # -- relay.ServerOwner ---------------------------------------------------

    def on_server_parameter(self, name: str, value: str) -> None:
        if self._reported is not None:
            self._reported[name] = value

    def on_server_lost(self, sqlstate: str | None = "08006", message: str = "server connection lost") -> None:
        if not self._answer.done():
            self._answer.set_exception(PooldError(sqlstate or "08006", f"{message} while checking the startup parameters"))

    def on_server_in_use(self, fields: dict[str, str]) -> None:
        pass  # its own SETs never meet 55006

    def on_server_data(self, data: bytes) -> None:
        pass  # nothing but the internal queries' replies, which the link consumes

    def on_server_ready(self, status: bytes) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    # -- the question's steps ----------------------------------------------------

    def _refused(self, body: bytes) -> None:
        if self._refusal is None:
            self._refusal = body

    def _rollback(self, link: ServerLink) -> None:
        """The SETs are answered: what the server reported is the answer. Put the link back as it was."""
        reported, self._reported = self._reported or {}, None
        if self._refusal is None:
            answer = {}
            for name, value in self._asked.items():
                canon = reported[name] if name in reported else self._before.get(name, value)
                answer[name] = canon
                self._spellings.learn(name, value, canon)
            if not self._answer.done():
                self._answer.set_result(answer)
        else:
            fields = messages.parse_error_fields(self._refusal)
            log.info("startup_parameter_refused", pool=self._pool.name, sqlstate=fields.get("C"), error=fields.get("M"))
            if not self._answer.done():
                self._answer.set_exception(
                    ServerRefusal(fields.get("C", "22023"), fields.get("M", ""), response=messages.as_fatal(self._refusal))
                )
        link.run_internal(["ROLLBACK"], self._done)

    def _done(self, link: ServerLink) -> None:
        self._pool.release_if_idle(link)


def quote_ident(name: str) -> str:
    """A quoted identifier: the name as written, case and all."""
    return '"' + name.replace('"', '""') + '"'
