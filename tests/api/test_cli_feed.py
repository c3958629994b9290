"""``stageline tail --follow`` on the live feed: the event-stream parser, the retry policy,
and the command against a live API whose connection a proxy cuts."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import httpx
import pytest
from api_helpers import HANG_GUARD, proxied, served
from click.testing import Result
from fastapi import FastAPI
from typer.testing import CliRunner

from stageline.cli import app as cli_app
from stageline.cli_feed import (
    FIRST_RECONNECT_DELAY,
    MAX_RECONNECT_DELAY,
    RECONNECT_GIVE_UP_SECONDS,
    Message,
    SseParser,
    reconnect_delay,
)
from stageline.events import NewEvent
from stageline.stack import Stack

STREAM = (
    b"retry: 1000\n\n"
    b": keep-alive\n\n"
    b'id: 1\nevent: log\ndata: {"a": "x\xe2\x80\xa8y\xc2\x85z"}\n\n'  # U+2028, U+0085
    b"id: 2\r\ndata: one\r\ndata:two\r\n\r\n"
    b"id: 7\n\n"
    b"event: other\rdata\r\r"
    b"id: bad\x00id\ndata: kept\n\n"
)
MESSAGES = [
    Message("1", "log", '{"a": "x\u2028y\x85z"}'),
    Message("2", "message", "one\ntwo"),
    Message("7", "message", None),
    Message("7", "other", ""),
    Message("7", "message", "kept"),
]


@pytest.mark.parametrize("size", [1, 2, 3, 7, len(STREAM)])
def test_the_parser_reads_a_stream_however_it_is_cut(size: int) -> None:
    parser = SseParser()
    got = []
    for at in range(0, len(STREAM), size):
        got += parser.feed(STREAM[at : at + size])
    assert got == MESSAGES
    assert parser.last_id == "7"


def test_an_id_counts_once_its_block_is_complete() -> None:
    parser = SseParser("3")
    assert parser.feed(b"id: 4\ndata: {}\n") == []
    assert parser.last_id == "3"  # cut off here, the feed resumes after 3 and sends 4 again
    assert parser.feed(b"\n") == [Message("4", "message", "{}")]
    assert parser.last_id == "4"


RESTART_SECONDS = 5.0
"""What a restart of `stageline up` takes, its drain included."""


def test_reconnecting_backs_off_then_gives_up_well_after_a_restart() -> None:
    waited, delays = 0.0, []
    while (delay := reconnect_delay(len(delays) + 1, waited)) is not None:
        delays.append(delay)
        waited += delay
    assert delays[0] == FIRST_RECONNECT_DELAY
    assert delays[:-1] == sorted(delays[:-1])
    assert max(delays) == MAX_RECONNECT_DELAY
    assert waited == pytest.approx(RECONNECT_GIVE_UP_SECONDS)
    assert waited > 4 * RESTART_SECONDS
    assert reconnect_delay(1, RECONNECT_GIVE_UP_SECONDS + 30) is None  # slow failed tries


CUTS = 5
"""Cuts in a row: each success starts the count of failures over."""
GIVE_UP_SOON = (
    "import sys, stageline.cli_feed as feed; feed.RECONNECT_GIVE_UP_SECONDS = 1.0; "
    "from stageline.cli import main; sys.argv[0] = 'stageline'; main()"
)
"""``stageline`` giving up after 1 s without the API, so a test need not wait a minute."""


async def cli(*argv: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, cli_app, list(argv), env={"COLUMNS": "300"})


async def append(stack: Stack, workspace: str, count: int) -> None:
    await stack.store.append(
        workspace, "notes", [NewEvent(type="Noted", data={"n": n}) for n in range(count)]
    )


async def test_tail_follow_prints_events_as_they_land_and_resumes_across_a_cut(
    app: FastAPI, stack: Stack, client: httpx.AsyncClient, workspace: str
) -> None:
    await append(stack, workspace, 3)
    async with served(app) as url, proxied(url) as proxy:
        tail = await asyncio.create_subprocess_exec(
            sys.executable, "-c", GIVE_UP_SOON, "tail", "--follow", "--after", "1",
            "--url", proxy.url, "-w", workspace,
            env={**os.environ, "COLUMNS": "30"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert tail.stdout is not None and tail.stderr is not None
        try:

            async def lines(count: int) -> list[str]:
                async with asyncio.timeout(HANG_GUARD):
                    return [(await tail.stdout.readline()).decode() for _ in range(count)]

            printed = await lines(2)  # in the log before it started
            await append(stack, workspace, 2)
            printed += await lines(2)  # appended while it runs
            for cut in range(CUTS):
                proxy.cut()  # the connection drops; the next one is held
                await append(stack, workspace, 2)
                proxy.mend()
                printed += await lines(2)  # appended while it was cut off
                resumed = f"last-event-id: {5 + 2 * cut}\r\n".encode()
                assert resumed in proxy.heads[-1].lower()

            await proxy.close()  # the API is gone for good: a few tries, then one line
            async with asyncio.timeout(HANG_GUARD):
                rest = (await tail.stdout.read()).decode()
                errors = (await tail.stderr.read()).decode()
                code = await tail.wait()
            # the same lines `stageline tail` prints, all of them, once each
            plain = await cli("tail", "--after", "1", "--url", url, "-w", workspace)
        finally:
            if tail.returncode is None:
                tail.kill()
                await tail.wait()

    events = (await client.get("/v1/log", params={"after": 1})).json()["events"]
    assert printed == [json.dumps(e) + "\n" for e in events]
    assert [e["position"] for e in events] == list(range(2, 6 + 2 * CUTS))
    assert plain.exit_code == 0 and plain.stdout == "".join(printed)
    assert code == 2
    assert rest == ""  # stdout holds the events only: the export stays a log
    [error] = errors.splitlines()  # one line, however narrow the terminal
    assert error.startswith(f"cannot reach the API at {proxy.url}"), errors
    assert error.endswith("is `stageline up` running?"), errors


async def test_tail_follow_refused_by_the_api_says_why_at_once(
    app: FastAPI, workspace: str
) -> None:
    async with served(app) as url, proxied(url) as proxy:
        result = await cli("tail", "--follow", "--after", "-1", "--url", proxy.url, "-w", workspace)
    assert len(proxy.heads) == 1  # asked once: asking again would get the same answer
    assert result.exit_code == 1 and result.stdout == ""
    [error] = result.stderr.splitlines()
    assert error.startswith("400 INVALID_ARGUMENT: after:"), result.stderr


@pytest.mark.parametrize("follow", [["--follow"], []], ids=["follow", "plain"])
async def test_tail_after_past_the_head_names_the_after_option(
    app: FastAPI, stack: Stack, workspace: str, follow: list[str]
) -> None:
    await append(stack, workspace, 3)
    async with served(app) as url:
        result = await cli("tail", *follow, "--after", "200", "--url", url, "-w", workspace)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "400 INVALID_ARGUMENT: --after 200 is past the workspace log's head (3)"
    ]
