"""Spellings: what a pool knows of its server's spelling of settings (no server here;
the asking is tests/e2e/test_parameters.py's)."""

from __future__ import annotations

from poold import spellings
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
