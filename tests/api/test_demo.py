"""``stageline demo`` against this package's stack: how it fails."""

from __future__ import annotations

import asyncio

from api_helpers import served
from click.testing import Result
from fastapi import FastAPI
from typer.testing import CliRunner

from stageline.cli import app as cli_app


async def demo(app: FastAPI, *args: str) -> Result:
    async with served(app) as url:
        argv = ["demo", "--url", url, "--count", "1", *args]
        runner = CliRunner()
        return await asyncio.to_thread(runner.invoke, cli_app, argv, env={"COLUMNS": "300"})


def error_line(result: Result, says: str) -> str:
    """The one line saying what went wrong (exit 1, no traceback)."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    [line] = [line for line in result.output.splitlines() if says in line]
    return line


async def test_an_error_answer_of_the_api_is_one_line(app: FastAPI) -> None:
    line = error_line(await demo(app, "--workspace", "not a workspace"), "400 INVALID_ARGUMENT")
    assert "workspace must be" in line


async def test_runs_that_do_not_finish_in_time_are_one_line(app: FastAPI, workspace: str) -> None:
    line = error_line(await demo(app, "--workspace", workspace, "--timeout", "0.01"), "error")
    assert "1 runs did not finish in 0.01s" in line
