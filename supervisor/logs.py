"""Logging for the daemon: structlog configured once, stdlib logging routed through the same renderer.

- JSON lines (``timestamp`` ISO 8601 UTC, ``level``, ``event``, ``logger``, bound context) when the
  output is not a terminal or ``fmt="json"``: what production log shippers parse.
- structlog's console renderer when the output is a terminal or ``fmt="console"``.

Both structlog loggers and plain ``logging`` loggers (boto3, urllib3, prometheus_client) end in one
handler on the root logger, so a line from botocore looks like a line from ftsup. boto3/botocore/urllib3
are held at WARNING: at INFO/DEBUG they log every request, which would drown the supervisor's own lines.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO, cast

import structlog

_NOISY_LIBRARIES = ("boto3", "botocore", "urllib3", "s3transfer")
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# The one handler this module installs on the root logger; kept so a second configure_logging()
# replaces it instead of stacking a second copy of every line.
_handler: logging.Handler | None = None


def _resolve_format(fmt: str, stream: TextIO) -> str:
    if fmt not in ("auto", "json", "console"):
        raise ValueError(f"log format must be auto, json or console, not {fmt!r}")
    if fmt != "auto":
        return fmt
    isatty = getattr(stream, "isatty", None)
    return "console" if callable(isatty) and isatty() else "json"


def configure_logging(fmt: str = "auto", level: str = "info", *, stream: TextIO | None = None) -> None:
    """Configures structlog and stdlib logging. Call once at start-up; calling again reconfigures
    (replacing the handler this module installed, never adding a second one).

    fmt:    "auto" (console on a TTY, JSON otherwise), "json" or "console".
    level:  debug | info | warning | error | critical (case-insensitive); raises ValueError otherwise.
    stream: where lines go (default: sys.stderr, looked up at call time so pytest's capture works).
    """
    global _handler
    try:
        numeric_level = _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"log level must be one of {sorted(_LEVELS)}, not {level!r}") from None
    out = stream if stream is not None else sys.stderr
    resolved = _resolve_format(fmt, out)

    # Run on every line, from structlog or from stdlib ("foreign") loggers alike.
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any
    if resolved == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=True)
        final: list[Any] = [structlog.processors.format_exc_info, renderer]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=bool(getattr(out, "isatty", lambda: False)()))
        final = [renderer]

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.UnicodeDecoder(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a reconfiguration (tests, `--log-format`) must reach loggers created earlier.
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
        )
    )
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    _handler = handler
    for name in _NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, numeric_level))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger named `name` (shown as ``logger`` in each line). Safe to call at import time,
    before configure_logging(): the configuration is looked up when the logger is first used."""
    return cast(structlog.stdlib.BoundLogger, structlog.get_logger(name))


def reset_logging() -> None:
    """Undoes configure_logging(): removes its handler and restores structlog's defaults (for tests,
    whose captured streams are closed after each test and must not stay attached to the root logger)."""
    global _handler
    if _handler is not None:
        logging.getLogger().removeHandler(_handler)
        _handler = None
    logging.getLogger().setLevel(logging.WARNING)  # the stdlib's default
    structlog.reset_defaults()
