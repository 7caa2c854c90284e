"""Structured logging (structlog over the standard library).

Outside a terminal (containers, supervisord's log files) every record is one JSON object per line;
on a terminal, console text. Either way a logged value cannot forge a log line: JSON escapes
control characters (and, being ASCII, everything else outside ASCII), and the console renderer
gets values with control characters written as escapes (``\\n``, ``\\x1b``)."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char) or (
        f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def escape_control(text: str) -> str:
    """``text`` with control characters (C0, DEL, C1, line and paragraph separators) as escapes."""
    return _CONTROL.sub(_escape, text)


def escape_control_characters(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: every string value (the message included) with control characters escaped."""
    for key, value in event_dict.items():
        if isinstance(value, str) and _CONTROL.search(value):
            event_dict[key] = escape_control(value)
    return event_dict


def json_by_default(stream: Any = None) -> bool:
    """Whether to log JSON when not told: yes unless ``stream`` (standard error) is a terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return not (isatty is not None and isatty())


def configure_logging(level: str = "INFO", *, json: bool | None = None) -> None:
    """Route stdlib and structlog records through one renderer, once per process. ``json``: one
    JSON object per line; ``None``: JSON unless standard error is a terminal."""
    if json is None:
        json = json_by_default()
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    render: list[structlog.types.Processor] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()] if json
        else [escape_control_characters, structlog.dev.ConsoleRenderer(colors=False)]
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render])
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("kafka", "httpx", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
