"""The HTTP-based CLI commands against this package's stack: which workspace they ask for."""

from __future__ import annotations

import asyncio

import httpx
from api_helpers import served, submit
from click.testing import Result
from fastapi import FastAPI
from typer.testing import CliRunner

from stageline.cli import app as cli_app


async def cli(*argv: str, env: dict[str, str]) -> Result:
    return await asyncio.to_thread(
        CliRunner().invoke, cli_app, list(argv), env={"COLUMNS": "300", **env}
    )


async def test_the_workspace_defaults_to_stageline_workspace(
    app: FastAPI, client: httpx.AsyncClient, workspace: str
) -> None:
    run_id = (await submit(client, wait=10)).json()["id"]
    async with served(app) as url:
        mine = await cli("runs", "--url", url, env={"STAGELINE_WORKSPACE": workspace})
        other = await cli(
            "runs", "--url", url, "-w", "other", env={"STAGELINE_WORKSPACE": workspace}
        )
        unset = await cli("runs", "--url", url, env={"STAGELINE_WORKSPACE": ""})
    assert mine.exit_code == 0, mine.output
    assert run_id in mine.output
    assert other.exit_code == 0 and run_id not in other.output, other.output
    # unset: no X-Workspace header, so the server's default workspace
    assert unset.exit_code == 0 and run_id not in unset.output, unset.output
