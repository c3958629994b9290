"""One log format for stageline and the libraries under it, via structlog.

``configure_logging()`` is called once at an entry point. After it, structlog
loggers (``get_logger``) and stdlib loggers (FastStream, uvicorn, redis) all
render through the same processors: JSON lines when stderr is not a terminal,
a coloured console layout when it is. Fields bound with
``structlog.contextvars.bind_contextvars(workspace=..., run_id=..., stage=...,
correlation_id=...)`` appear on every line logged in that context.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any, Literal, TextIO

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "FASTSTREAM_LOGGER",
    "LogFormat",
    "UnreachableFetchErrors",
    "configure_logging",
    "flatten_extra",
    "foreign_loggers",
    "get_logger",
]

LogFormat = Literal["auto", "json", "console"]

_HANDLER_NAME = "stageline"

FASTSTREAM_LOGGER = "stageline.faststream"
"""The logger a worker gives its FastStream broker."""

# Chatty at INFO, useful only when debugging; uvicorn.access logs every request, and
# FastStream (through the workers' FASTSTREAM_LOGGER) its task bookkeeping.
_NOISY = ("uvicorn.access", "httpx", "httpcore", "asyncio", "multipart", FASTSTREAM_LOGGER)

_FETCH_ERROR = "Message fetch error"
"""What FastStream 0.7.8 logs, at ERROR with the traceback, each time a subscriber's read
fails (it reads again 5 s later)."""
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)

# Libraries whose loggers get their own handlers and stop propagating (uvicorn's default
# log config, FastStream's default broker logger); we take them back so their lines come
# out in our format too.
_FOREIGN = ("uvicorn", "faststream")

# keys of an event dict that an ``extra`` mapping may not overwrite
_RESERVED = frozenset({"event", "level", "timestamp", "logger", "exception", "exc_info"})


def flatten_extra(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Lift a nested ``extra={...}`` mapping (FastStream's log context) to top-level keys.

    Keys already on the line win, so an ``extra`` can never replace the event or the
    level. uvicorn's ``color_message`` duplicate of the message is dropped.
    """
    extra = event_dict.pop("extra", None)
    if isinstance(extra, Mapping):
        for key, value in extra.items():
            if key not in _RESERVED:
                event_dict.setdefault(str(key), value)
    elif extra is not None:
        event_dict.setdefault("extra", extra)
    event_dict.pop("color_message", None)
    return event_dict


def configure_logging(
    level: str = "INFO", fmt: LogFormat = "auto", *, stream: TextIO | None = None
) -> None:
    """Route structlog and stdlib logging through one renderer on stderr (or ``stream``).

    ``fmt="auto"`` picks JSON unless the stream is a terminal. Safe to call again:
    the previous stageline handler is replaced, never duplicated.
    """
    numeric = _level_number(level)
    out = stream if stream is not None else sys.stderr
    json_lines = fmt == "json" or (fmt == "auto" and not _isatty(out))

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        flatten_extra,
    ]
    renderer: Processor
    if json_lines:
        tail: list[Processor] = [structlog.processors.format_exc_info]
        renderer = structlog.processors.JSONRenderer(default=repr)
    else:
        # ConsoleRenderer formats exceptions itself (format_exc_info would spoil that)
        tail = []
        renderer = structlog.dev.ConsoleRenderer(colors=_isatty(out))

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.UnicodeDecoder(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        # stdlib records: their ``extra=`` keys become fields, then the shared chain
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *tail,
            renderer,
        ],
    )
    handler: logging.Handler = (
        logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    )
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)

    for foreign in foreign_loggers():
        for old in list(foreign.handlers):
            foreign.removeHandler(old)
        foreign.propagate = True
        foreign.setLevel(logging.NOTSET)
    quiet = logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(quiet, numeric))


def foreign_loggers() -> list[logging.Logger]:
    """The uvicorn and FastStream loggers that exist now, which configure_logging takes over.

    A FastStream broker built later with its default logger makes a new
    ``faststream.access.*`` logger with its own handler; give the broker
    ``logger=get_logger("stageline.broker")`` instead.
    """
    existing = [
        logger
        for name, logger in list(logging.Logger.manager.loggerDict.items())
        if isinstance(logger, logging.Logger) and name.split(".", 1)[0] in _FOREIGN
    ]
    return [*(logging.getLogger(name) for name in _FOREIGN), *existing]


def get_logger(name: str | None = None, **initial: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger named ``name`` (use ``__name__``), with ``initial`` fields bound.

    Its ``.log(level, msg, extra={...})`` signature also makes it usable as a
    FastStream broker's ``logger=``: the broker's ``extra`` context is flattened
    into the line.
    """
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name, **initial)
    return logger


class UnreachableFetchErrors(logging.Filter):
    """Drops, while on, FastStream's fetch errors that a broker out of reach causes.

    Each subscriber of a worker (two per actor) logs one, with a ~4 KB traceback,
    at every read that fails: every few seconds each, for as long as Redis is
    down. Whoever knows the broker is down (the worker's supervisor) turns this
    on and says so in one line instead, and turns it off once the broker answers
    again. A fetch error of any other cause still shows.
    """

    def __init__(self, logger: str = FASTSTREAM_LOGGER) -> None:
        super().__init__()
        self.logger = logger
        self.dropped = 0
        """How many records were dropped since ``on()``."""

    def on(self) -> None:
        self.dropped = 0
        logging.getLogger(self.logger).addFilter(self)

    def off(self) -> int:
        """Let them through again; how many were dropped meanwhile."""
        logging.getLogger(self.logger).removeFilter(self)
        return self.dropped

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(_fetch_error(record), _UNREACHABLE):
            self.dropped += 1
            return False
        return True


def _fetch_error(record: logging.LogRecord) -> object:
    """The exception of a FastStream fetch error record (structlog's or a plain one), or None."""
    if isinstance(record.msg, Mapping):  # a structlog logger's, its event dict not yet rendered
        event, error = record.msg.get("event"), record.msg.get("exc_info")
    else:
        event, error = record.msg, record.exc_info[1] if record.exc_info else None
    return error if event == _FETCH_ERROR else None


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at emit time (so test capture and redirects work)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # emit runs under the handler's lock
        super().emit(record)


def _level_number(level: str) -> int:
    number = logging.getLevelName(level.strip().upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING, ERROR")
    return number


def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed stream
        return False
