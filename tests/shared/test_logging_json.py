"""Logs cannot be forged by what clients send: JSON lines outside a terminal, control characters
escaped on the console, one record is always one line."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from coachforge_shared.logging import configure_logging, escape_control, get_logger, json_by_default

FORGED = 'ft:x\n2026-01-01T00:00:00Z [error] admin login ok user=root\r\x1b[2Jgone\u2028more'


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def stderr() -> Iterator[io.StringIO]:
    """What the log handler writes (it writes to standard error), and the logging setup put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    buffer = io.StringIO()
    yield buffer
    root.handlers[:] = handlers
    root.setLevel(level)


def _capture(buffer: io.StringIO) -> None:
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)


def test_json_unless_a_terminal() -> None:
    assert json_by_default(io.StringIO()) is True
    assert json_by_default(Tty()) is False


def test_default_output_off_a_terminal_is_one_json_object_per_line(stderr: io.StringIO) -> None:
    assert not sys.stderr.isatty()
    configure_logging("INFO")  # json not given: stderr here is no terminal
    _capture(stderr)
    get_logger("coachforge.test").warning("model not found", model=FORGED)
    logging.getLogger("coachforge.stdlib").warning("plain %s", FORGED)
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "model not found" and first["model"] == FORGED and first["level"] == "warning"
    assert second["event"] == f"plain {FORGED}"
    assert "\x1b" not in stderr.getvalue() and "\u2028" not in stderr.getvalue()


def test_console_text_escapes_control_characters(stderr: io.StringIO) -> None:
    configure_logging("INFO", json=False)
    _capture(stderr)
    get_logger("coachforge.test").warning(f"asked for {FORGED}", model=FORGED)
    logging.getLogger("coachforge.stdlib").error("plain %s", FORGED)
    text = stderr.getvalue()
    assert len(text.splitlines()) == 2
    assert "\x1b" not in text and "\r" not in text and "\u2028" not in text
    assert "ft:x\\n2026-01-01" in text and "\\x1b[2J" in text and "\\u2028" in text


def test_escape_control_keeps_ordinary_text() -> None:
    assert escape_control("Zürich, 5 x 400 m, 日本") == "Zürich, 5 x 400 m, 日本"
    assert escape_control("a\tb\x00c\x7fd\x85") == "a\\tb\\x00c\\x7fd\\x85"
