"""Logging outputs: JSON lines, and journald fields through a captured send()."""

from __future__ import annotations

import json
import logging
from typing import Any

import structlog

from poold import log


def test_journald_handler_sends_keys_as_fields() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    handler = log.JournaldHandler(lambda message, **fields: sent.append((message, fields)))
    logger = logging.getLogger("poold.test.journald")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    structlog.configure(
        processors=[structlog.stdlib.add_log_level, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    structlog.get_logger("poold.test.journald").warning("pool_resized", pool="app.app", max_size=12, changes=["a"])
    logger.info("plain %s", "stdlib")
    (message, fields), (plain, plain_fields) = sent
    assert message == 'pool_resized pool=app.app max_size=12 changes=["a"]'
    assert fields["POOLD_EVENT"] == "pool_resized" and fields["POOLD_POOL"] == "app.app"
    assert fields["POOLD_MAX_SIZE"] == "12" and fields["PRIORITY"] == "4"
    assert fields["SYSLOG_IDENTIFIER"] == "poold"
    assert plain == "plain stdlib" and plain_fields["PRIORITY"] == "6"


def test_json_lines_without_a_terminal(capsys: Any) -> None:
    chosen = log.configure("json", "info", environ={})
    structlog.get_logger("poold.test").info("client_session_end", peer="127.0.0.1:5", transactions=3)
    logging.getLogger("psycopg.pool").info("noise that is turned down")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert chosen == "json"
    assert record["event"] == "client_session_end" and record["transactions"] == 3 and record["level"] == "info"


def test_journal_stream_of_another_file_is_not_journald() -> None:
    assert log._journal_send({"JOURNAL_STREAM": "1:2"}) is None
