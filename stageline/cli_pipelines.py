"""``stageline pipelines``: a workspace's named pipeline configs, through the API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from stageline.cli_http import (
    DEFAULT_API,
    ApiUrl,
    Workspace,
    answer,
    call,
    load_document,
    print_json,
    print_table,
    say_error,
    send,
)
from stageline.client import path_segment

__all__ = ["app", "load_definition"]

app = typer.Typer(
    no_args_is_help=True,
    help="Named pipeline configs of a workspace: list, show, apply (create or update), delete.",
)

Name = Annotated[str, typer.Argument(help="The pipeline's name.")]


def _path(name: str) -> str:
    return f"/v1/pipelines/{path_segment(name)}"


@app.command("list")
def list_pipelines(url: ApiUrl = DEFAULT_API, workspace: Workspace = None) -> None:
    """List the built-ins and the workspace's configs, each at its latest version."""
    reply = call("GET", url, "/v1/pipelines", workspace)
    rows = [
        {**p, "stages": ", ".join(p["stages"]), "builtin": "yes" if p["builtin"] else ""}
        for p in reply["pipelines"]
    ]
    print_table(rows, ("name", "version", "builtin", "stages", "description", "updated_at"))


@app.command("show")
def show(
    name: Name,
    version: Annotated[
        int | None, typer.Option(help="An older version (default: the latest).")
    ] = None,
    url: ApiUrl = DEFAULT_API,
    workspace: Workspace = None,
) -> None:
    """Print one pipeline's whole definition as JSON."""
    params = {"version": version} if version is not None else {}
    print_json(call("GET", url, _path(name), workspace, params=params))


@app.command("apply")
def apply(
    file: Annotated[
        Path,
        typer.Argument(
            help="A JSON or YAML file holding {name, description?, stages}.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    url: ApiUrl = DEFAULT_API,
    workspace: Workspace = None,
) -> None:
    """Create the pipeline FILE defines, or record it as its next version.

    Applying the same definition again changes nothing (`"changed": false`).
    """
    definition = load_definition(file)
    name = definition["name"]
    reply = send("PUT", url, _path(name), workspace, json=definition)
    action = "updated"
    if reply.status_code == 404 and _code(reply) == "NOT_FOUND":
        reply = send("POST", url, "/v1/pipelines", workspace, json=definition)
        action = "created"
    written = answer(reply)
    if not written["changed"]:
        action = "unchanged"
    print_json({**written, "action": action})


@app.command("delete")
def delete(
    name: Name,
    reason: Annotated[str, typer.Option(help="Why; recorded on the event.")] = "",
    if_version: Annotated[
        int | None, typer.Option(help="Only if the pipeline is at this version.")
    ] = None,
    url: ApiUrl = DEFAULT_API,
    workspace: Workspace = None,
) -> None:
    """Delete a config (recorded as an event; runs already using it finish normally)."""
    params = {"reason": reason} if reason else {}
    headers = {"If-Match": f'"{if_version}"'} if if_version is not None else {}
    print_json(call("DELETE", url, _path(name), workspace, params=params, headers=headers))


def load_definition(file: Path) -> dict[str, Any]:
    """The definition in a ``.json`` file, or a YAML one (any other suffix); exits 2 if unusable."""
    data = load_document(file)
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        say_error(f"{file} must hold an object with a `name` and `stages`")
        raise typer.Exit(2)
    return data


def _code(reply: Any) -> str | None:
    """The error envelope's code, if the answer is one."""
    try:
        code: str = reply.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code
