"""stageline.logs: one format for structlog and stdlib lines, context on every line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError

from stageline.logs import (
    FASTSTREAM_LOGGER,
    UnreachableFetchErrors,
    configure_logging,
    flatten_extra,
    foreign_loggers,
    get_logger,
)


@pytest.fixture(autouse=True)
def _isolated_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put it all back after each test."""
    root = logging.getLogger()
    root_level = root.level
    touched = [*foreign_loggers(), logging.getLogger("httpx")]
    saved = {lg: (lg.level, lg.propagate, list(lg.handlers)) for lg in touched}
    structlog.contextvars.clear_contextvars()
    try:
        yield
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
        # only our handler: pytest's own capture handlers come and go per test phase
        for handler in [h for h in root.handlers if h.get_name() == "stageline"]:
            root.removeHandler(handler)
        root.setLevel(root_level)
        for lg, (level, propagate, handlers) in saved.items():
            lg.setLevel(level)
            lg.propagate = propagate
            lg.handlers[:] = handlers


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def test_json_lines_carry_bound_context() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    structlog.contextvars.bind_contextvars(
        workspace="acme", run_id="r-1", stage="extract", correlation_id="c-9"
    )

    get_logger("stageline.test").info("stage started", attempt=2)

    [line] = _lines(out)
    assert line["event"] == "stage started"
    assert line["attempt"] == 2
    assert line["level"] == "info"
    assert line["logger"] == "stageline.test"
    assert line["timestamp"].endswith("Z")
    assert {k: line[k] for k in ("workspace", "run_id", "stage", "correlation_id")} == {
        "workspace": "acme",
        "run_id": "r-1",
        "stage": "extract",
        "correlation_id": "c-9",
    }


def test_stdlib_logger_comes_out_as_json_with_context() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    structlog.contextvars.bind_contextvars(run_id="r-2")

    logging.getLogger("some.library").warning("disk at %d%%", 91, extra={"device": "sda"})

    [line] = _lines(out)
    assert line["event"] == "disk at 91%"
    assert line["level"] == "warning"
    assert line["logger"] == "some.library"
    assert line["device"] == "sda"
    assert line["run_id"] == "r-2"


def test_faststream_style_extra_is_flattened() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    context = {"channel": "stage.extract", "message_id": "m-1", "event": "not the event"}

    # a broker built with logger=get_logger(...) calls .log(level, msg, extra=..., exc_info=...)
    get_logger("stageline.broker").log(logging.INFO, "Received", extra=context, exc_info=None)
    logging.getLogger("stageline.other").info("Processed", extra={"extra": context})

    received, processed = _lines(out)
    for line in (received, processed):
        assert "extra" not in line
        assert line["channel"] == "stage.extract"
        assert line["message_id"] == "m-1"
    assert received["event"] == "Received"
    assert processed["event"] == "Processed"


def test_flatten_extra_keeps_existing_keys_and_drops_color_message() -> None:
    event = {
        "event": "x",
        "level": "info",
        "extra": {"level": "debug", "a": 1},
        "color_message": "\x1b[1mx",
    }

    assert flatten_extra(None, "info", event) == {"event": "x", "level": "info", "a": 1}


def test_configuring_twice_does_not_duplicate_lines() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", "json", stream=first)
    configure_logging("INFO", "json", stream=second)

    get_logger("a").info("once")
    logging.getLogger("b").info("once too")

    assert first.getvalue() == ""
    assert [line["event"] for line in _lines(second)] == ["once", "once too"]
    ours = [h for h in logging.getLogger().handlers if h.get_name() == "stageline"]
    assert len(ours) == 1


def test_level_filters_both_kinds_of_logger() -> None:
    out = io.StringIO()
    configure_logging("warning", "json", stream=out)

    get_logger("a").info("hidden")
    logging.getLogger("b").info("hidden")
    get_logger("a").error("shown")

    assert [line["event"] for line in _lines(out)] == ["shown"]


def test_access_log_quiet_unless_debug() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    logging.getLogger("uvicorn.access").info("GET /healthz 200")
    assert out.getvalue() == ""

    configure_logging("DEBUG", "json", stream=out)
    logging.getLogger("uvicorn.access").info("GET /healthz 200")
    assert [line["event"] for line in _lines(out)] == ["GET /healthz 200"]


@pytest.mark.parametrize("name", ["uvicorn.error", "faststream.access.redis"])
def test_libraries_own_handlers_are_taken_over(name: str) -> None:
    # as uvicorn's default log config and FastStream's default broker logger leave them
    library = logging.getLogger(name)
    stray = io.StringIO()
    library.addHandler(logging.StreamHandler(stray))
    library.propagate = False
    library.setLevel(logging.DEBUG)
    library.addFilter(_set_channel)
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)

    library.info("Started")
    library.debug("not at INFO")

    assert stray.getvalue() == ""
    [line] = _lines(out)
    assert line["event"] == "Started"
    assert line["logger"] == name
    assert line["channel"] == "stage.extract"
    library.removeFilter(_set_channel)


def _set_channel(record: logging.LogRecord) -> bool:
    """Like FastStream's log-context filter: adds fields as record attributes."""
    record.channel = "stage.extract"
    return True


def test_exceptions_are_rendered_into_the_json_line() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)

    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("a").exception("stage crashed")

    [line] = _lines(out)
    assert "RuntimeError: boom" in line["exception"]


def test_console_format_is_one_readable_line() -> None:
    out = io.StringIO()
    configure_logging("INFO", "console", stream=out)

    get_logger("a").info("hello", run_id="r-3")

    text = out.getvalue()
    assert "hello" in text
    assert "run_id=r-3" in text
    assert "\x1b[" not in text  # not a terminal: no colour codes


def test_auto_picks_json_off_a_terminal_and_follows_sys_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO")

    get_logger("a").info("to stderr")

    err = capsys.readouterr().err
    assert json.loads(err.splitlines()[-1])["event"] == "to stderr"


def test_unknown_level_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("LOUD")


def test_fetch_errors_of_an_unreachable_broker_are_dropped_while_on_others_shown() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    faststream = get_logger(FASTSTREAM_LOGGER)  # as the worker gives its broker
    refused = RedisConnectionError("Error 111 connecting to redis.sock. Connection refused.")

    def fetch_error(exc: Exception) -> None:
        faststream.log(logging.ERROR, "Message fetch error", extra=None, exc_info=exc)

    muted = UnreachableFetchErrors()
    muted.on()
    try:
        fetch_error(refused)
        fetch_error(TimeoutError())
        fetch_error(ValueError("a bug, not an outage"))
        faststream.error("something else", exc_info=refused)
        logging.getLogger(FASTSTREAM_LOGGER).error("Message fetch error", exc_info=refused)
    finally:
        dropped = muted.off()
    fetch_error(refused)

    assert dropped == 3
    lines = _lines(out)
    assert [line["event"] for line in lines] == [
        "Message fetch error",
        "something else",
        "Message fetch error",
    ]
    assert "ValueError: a bug, not an outage" in lines[0]["exception"]
    assert "Connection refused" in lines[2]["exception"]
