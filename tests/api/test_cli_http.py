"""The HTTP-based CLI commands against this package's stack: which workspace they ask for."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from api_helpers import head, run_events, served, submit, submit_flaky
from click.testing import Result
from fastapi import FastAPI
from typer.testing import CliRunner

from stageline.cli import app as cli_app
from stageline.cli_http import load_document
from stageline.client import path_segment
from stageline.stack import Stack


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


async def test_an_id_given_to_a_command_never_names_another_resource(
    app: FastAPI, client: httpx.AsyncClient, workspace: str
) -> None:
    run = (await submit_flaky(client, wait=20, permanent=True)).json()
    assert run["status"] == "failed", run
    [failed] = [e for e in await run_events(client, run["id"]) if e["type"] == "RunFailed"]
    dead_letter = failed["data"]["dead_letter"]
    env = {"STAGELINE_WORKSPACE": workspace}
    async with served(app) as url:
        for argv in [
            ("undo", f"../dlq/{dead_letter}/redrive?x="),
            ("retry", f"../dlq/{dead_letter}/redrive#"),
            ("cancel", f"../dlq/{dead_letter}/redrive?x="),
            ("dlq", "redrive", f"{dead_letter}/redrive?x=/.."),
            ("dlq", "discard", f"{dead_letter}?x="),
            ("undo", ".."),
            ("pipelines", "show", ".."),
        ]:
            result = await cli(*argv, "--url", url, env=env)
            assert result.exit_code == 1, (argv, result.output)
            # the resource the command is for, not found (or, a pipeline, no valid name)
            assert result.stderr.startswith(("404 NOT_FOUND", "400 INVALID_ARGUMENT")), argv
    r = await client.get(f"/v1/dlq/{dead_letter}", params={"min_position": await head(client)})
    assert r.json()["status"] == "open", r.text  # neither redriven nor discarded
    assert (await client.get(f"/v1/runs/{run['id']}")).json()["status"] == "failed"


async def test_dlq_list_keeps_one_channels_poison_entries(
    app: FastAPI, client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    ingest = await stack.dead_letters.add(
        workspace, "@ingest", raw=b"not json", error="malformed JSON", deliveries=1
    )
    flaky = await stack.dead_letters.add(
        workspace, "flaky", raw=b"\xc1", error="undecodable command", deliveries=5
    )
    await client.get("/v1/dlq", params={"min_position": await head(client)})  # caught up
    env = {"STAGELINE_WORKSPACE": workspace}
    async with served(app) as url:
        every = await cli("dlq", "list", "--url", url, env=env)
        one = await cli("dlq", "list", "--channel", "@ingest", "--url", url, env=env)
        none = await cli("dlq", "list", "--channel", "nope", "--url", url, env=env)
    assert every.exit_code == 0, every.output
    assert {line.split("\t")[0] for line in every.stdout.splitlines()[1:]} == {ingest, flaky}
    assert one.exit_code == 0, one.output
    assert [line.split("\t")[0] for line in one.stdout.splitlines()[1:]] == [ingest]
    assert (none.exit_code, none.stdout.splitlines()[1:]) == (0, [])


def test_an_id_is_one_path_segment() -> None:
    assert path_segment("../dlq/x/redrive?x=#") == "..%2Fdlq%2Fx%2Fredrive%3Fx%3D%23"
    assert (path_segment(".."), path_segment("."), path_segment("a.b")) == ("%2E%2E", "%2E", "a.b")
    assert path_segment("100%") == "100%25"


RECURSIVE = "a: &a [*a]\n"
LAUGHS = "name: laughs\nl0: &l0 [lol]\n" + "".join(
    f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]\n" for n in range(1, 10)
)
"""Nine levels of ten aliases each: a billion values from ten lines."""


def refused(file: Path, text: str, command: str) -> tuple[Path, str]:
    """``command FILE`` of a document holding ``text``: it exits 2, its one line on stderr."""
    file.write_text(text)
    argv = [*command.split(), str(file), "--url", "http://127.0.0.1:1"]  # never asked
    result = CliRunner().invoke(cli_app, argv, env={"COLUMNS": "80"})
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    return file, line


@pytest.mark.parametrize(
    ("command", "text", "found"),
    [
        ("pipelines apply", RECURSIVE, "line 1, column 4: YAML anchors and aliases (&a)"),
        ("ontology import", RECURSIVE, "line 1, column 4: YAML anchors and aliases (&a)"),
        ("pipelines apply", LAUGHS, "line 2, column 5: YAML anchors and aliases (&l0)"),
        (
            "pipelines apply",
            "name: x\nstages: *s\n",
            "line 2, column 9: YAML anchors and aliases (*s)",
        ),
    ],
    ids=["recursive-apply", "recursive-import", "billion-laughs", "alias"],
)
def test_yaml_anchors_and_aliases_are_refused_in_one_line(
    tmp_path: Path, command: str, text: str, found: str
) -> None:
    file, line = refused(tmp_path / "aliased.yaml", text, command)
    assert line.startswith(f"cannot read {file}: {found} are refused"), line
    assert "a config file has no need of them" in line


@pytest.mark.parametrize(
    ("command", "name", "text", "found"),
    [
        (
            "pipelines apply",
            "twice.yaml",
            "name: a\nstages: []\nname: b\n",
            "line 3, column 1: the key 'name' is given twice (first at line 1)",
        ),
        (
            "pipelines apply",
            "nested.yaml",
            "name: a\nstages:\n  - name: s\n    actor: x\n    actor: y\n",
            "line 5, column 5: the key 'actor' is given twice (first at line 4)",
        ),
        (
            "pipelines apply",
            "twice.json",
            '{"name": "a",\n "stages": [],\n "name": "b"}',
            "the key 'name' is given twice: line 3 column 10",
        ),
        (
            "ontology import",
            "twice.json",
            '{"patterns": [{"name": "x", "name": "y"}]}',
            "the key 'name' is given twice: line 1 column 37",
        ),
    ],
    ids=["yaml", "yaml-nested", "json", "json-import"],
)
def test_a_key_given_twice_in_one_mapping_is_refused_in_one_line(
    tmp_path: Path, command: str, name: str, text: str, found: str
) -> None:
    file, line = refused(tmp_path / name, text, command)  # it used to be taken, the last winning
    assert line.startswith(f"cannot read {file}: {found}"), line


def test_the_same_key_in_two_mappings_is_no_duplicate(tmp_path: Path) -> None:
    for file, text in [
        (tmp_path / "ok.yaml", "a: {name: x}\nb: {name: y}\n"),
        (tmp_path / "ok.json", '{"a": {"name": "x"}, "b": {"name": "y"}}'),
    ]:
        file.write_text(text)
        assert load_document(file) == {"a": {"name": "x"}, "b": {"name": "y"}}
    merged = tmp_path / "merged.yaml"  # a merge key's keys give way to the mapping's own
    merged.write_text("<<: {name: x, actor: a}\nname: y\n")
    assert load_document(merged) == {"name": "y", "actor": "a"}


def test_an_error_naming_a_path_with_brackets_prints_it_as_it_is(tmp_path: Path) -> None:
    file = tmp_path / "[" / "b]" / "[red]p.yaml"  # rich took "[/b]" for markup: MarkupError
    file.parent.mkdir(parents=True)
    file.write_text("name: [\n")
    argv = ["pipelines", "apply", str(file), "--url", "http://127.0.0.1:1"]
    result = CliRunner().invoke(cli_app, argv, env={"COLUMNS": "80"})
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    [line] = result.stderr.splitlines()
    assert line.startswith(f"cannot read {file}: line 2, column 1: "), line


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_document_nested_too_deeply_is_refused_in_one_line(tmp_path: Path, suffix: str) -> None:
    file = tmp_path / f"deep{suffix}"
    file.write_text("[" * 100_000 + "]" * 100_000)
    argv = ["pipelines", "apply", str(file), "--url", "http://127.0.0.1:1"]
    result = CliRunner().invoke(cli_app, argv, env={"COLUMNS": "80"})
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.stderr.splitlines() == [f"cannot read {file}: it is nested too deeply"]
