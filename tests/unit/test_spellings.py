"""Spellings: what a pool knows of its server's spelling of settings (no server here;
the asking is tests/e2e/test_parameters.py's)."""

from __future__ import annotations

import asyncio
import struct

import pytest

from poold import spellings
from poold.errors import PooldError, ServerRefusal
from poold.protocol import messages
from poold.relay import ServerLink
from poold.spellings import Spellings, quote_ident

DEFAULTS = {"client_encoding": "UTF8", "DateStyle": "ISO, MDY", "TimeZone": "Etc/UTC"}


def test_a_default_value_is_spelled_already() -> None:
    assert Spellings().spell({"client_encoding": "UTF8", "DateStyle": "ISO, MDY"}, DEFAULTS) == {
        "client_encoding": "UTF8", "DateStyle": "ISO, MDY"}
    assert Spellings().spell({}, DEFAULTS) == {}


def test_an_unknown_value_is_not_spelled() -> None:
    known = Spellings()
    known.learn("client_encoding", "utf8", "UTF8")
    assert known.spell({"client_encoding": "utf8", "TimeZone": "utc"}, DEFAULTS) is None
    assert known.spell({"client_encoding": "unicode"}, DEFAULTS) is None  # the same spelling, another value
    assert known.spell({"TimeZone": "utc"}, DEFAULTS) is None  # another setting


def test_a_learned_value_and_its_spelling_are_known() -> None:
    known = Spellings()
    known.learn("DateStyle", "sql, dmy", "SQL, DMY")
    known.learn("TimeZone", "europe/paris", "Europe/Paris")
    assert known.spell({"DateStyle": "sql, dmy", "TimeZone": "Europe/Paris"}, DEFAULTS) == {
        "DateStyle": "SQL, DMY", "TimeZone": "Europe/Paris"}
    assert known.spell({"DateStyle": "SQL, DMY"}, DEFAULTS) == {"DateStyle": "SQL, DMY"}
    assert known.spell({"timezone": "europe/paris"}, DEFAULTS) is None  # names are canonical already


def test_what_a_pool_keeps_is_bounded() -> None:
    known = Spellings()
    for i in range(spellings.KEPT + 10):
        known.learn("application_name", f"app {i}", f"app {i}")
    assert known.spell({"application_name": "app 0"}, DEFAULTS) is None  # the oldest went first
    assert known.spell({"application_name": f"app {spellings.KEPT + 9}"}, DEFAULTS) is not None
    assert len(known._known) == spellings.KEPT


def test_names_are_asked_as_written() -> None:
    assert quote_ident("IntervalStyle") == '"IntervalStyle"'
    assert quote_ident('a"b') == '"a""b"'


# -- asking: a real ServerLink fed PostgreSQL 15's replies as bytes -------------------


def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!i", len(body) + 4) + body


def status(name: str, value: str) -> bytes:
    return msg(b"S", f"{name}\0{value}\0".encode())


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None: ...


class OnePool:
    """A pool with one free link, as spellings sees a pool."""

    name = "app.app"

    def __init__(self, link: ServerLink) -> None:
        self.link = link
        self.released: list[ServerLink] = []
        self.defaults = link.defaults

    def acquire(self, waiter: object) -> ServerLink:
        return self.link

    def release_if_idle(self, link: ServerLink) -> None:
        self.released.append(link)


def one_pool(params: dict[str, str] | None = None) -> tuple[OnePool, Transport]:
    link, transport = ServerLink(lambda _link: None), Transport()
    link.transport = transport  # type: ignore[assignment]
    link.defaults, link.params = dict(DEFAULTS), dict(params or {})
    return OnePool(link), transport


def queries(transport: Transport) -> list[str]:
    out = [data[5:-1].decode() for data in transport.written]
    transport.written.clear()
    return out


def test_the_server_is_asked_once_and_its_link_put_back() -> None:
    async def main() -> None:
        pool, transport = one_pool({"TimeZone": "Europe/Paris"})
        link, known = pool.link, Spellings()
        wanted = {"client_encoding": "utf8", "TimeZone": "europe/paris", "DateStyle": "iso, dmy", "search_path": "app"}
        asked = asyncio.ensure_future(known.ask(pool, wanted, {"client_encoding": "utf8", "timezone": "europe/paris",
                                                                "datestyle": "iso, dmy", "search_path": "app"}))
        await asyncio.sleep(0)
        assert queries(transport) == [
            """BEGIN; SELECT set_config('client_encoding', 'utf8', true), set_config('timezone', 'europe/paris', """
            """true), set_config('datestyle', 'iso, dmy', true), set_config('search_path', 'app', true)"""]
        # Only DateStyle changed: client_encoding was UTF8 already, TimeZone Europe/Paris (the link's own).
        link.data_received(msg(b"C", b"BEGIN\0") + msg(b"C", b"SET\0") * 4 + status("DateStyle", "ISO, DMY")
                           + msg(b"Z", b"T"))
        assert await asked == {"client_encoding": "UTF8", "TimeZone": "Europe/Paris", "DateStyle": "ISO, DMY",
                               "search_path": "app"}
        assert queries(transport) == ["ROLLBACK"] and not pool.released
        link.data_received(status("DateStyle", "ISO, MDY") + msg(b"C", b"ROLLBACK\0") + msg(b"Z", b"I"))
        assert pool.released == [link] and link.params == {"TimeZone": "Europe/Paris"}
        assert known.spell(wanted, DEFAULTS) == await asked  # kept: the next login asks nothing
        assert await known.ask(pool, wanted, {}) == await asked and not transport.written

    asyncio.run(main())


def test_a_refused_value_is_the_servers_error_at_fatal() -> None:
    error = (b"SERROR\0VERROR\0C22023\0Minvalid value for parameter \"TimeZone\": \"Mars/Base\"\0Fguc.c\0L12053\0"
             b"Rcall_string_check_hook\0\0")

    async def main() -> None:
        pool, transport = one_pool()
        known = Spellings()
        asked = asyncio.ensure_future(known.ask(pool, {"TimeZone": "Mars/Base"}, {"TimeZone": "Mars/Base"}))
        await asyncio.sleep(0)
        queries(transport)
        pool.link.data_received(msg(b"C", b"BEGIN\0") + msg(b"E", error) + msg(b"Z", b"E"))
        with pytest.raises(ServerRefusal) as refusal:
            await asked
        assert refusal.value.sqlstate == "22023" and refusal.value.response == messages.as_fatal(error)
        assert queries(transport) == ["ROLLBACK"]
        pool.link.data_received(msg(b"C", b"ROLLBACK\0") + msg(b"Z", b"I"))
        assert pool.released == [pool.link] and known.spell({"TimeZone": "Mars/Base"}, DEFAULTS) is None

    asyncio.run(main())


def test_a_server_connection_lost_while_asked() -> None:
    async def main() -> None:
        pool, _transport = one_pool()
        asked = asyncio.ensure_future(Spellings().ask(pool, {"TimeZone": "utc"}, {}))
        await asyncio.sleep(0)
        pool.link.connection_lost(None)
        with pytest.raises(PooldError) as lost:
            await asked
        assert lost.value.sqlstate == "08006" and not pool.released

    asyncio.run(main())
