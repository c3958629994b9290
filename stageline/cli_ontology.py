"""``stageline ontology``: a workspace's entity patterns and types, through the API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from stageline.cli_http import (
    DEFAULT_API,
    ApiUrl,
    Cursor,
    Workspace,
    call,
    console,
    err_console,
    load_document,
    print_json,
    print_next,
    print_table,
    say_error,
)
from stageline.client import path_segment

__all__ = ["app"]

app = typer.Typer(
    no_args_is_help=True,
    help="The workspace's ontology: status, patterns, add, remove, export, import.",
)

Global = Annotated[
    bool,
    typer.Option("--global", help="The global patterns, which every workspace matches."),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the API's JSON answer as is.")]


@app.command("status")
def status(
    bucket_runs: Annotated[
        int, typer.Option(help="Runs per bucket of the discovery curve (a multiple of 10).")
    ] = 100,
    as_json: AsJson = False,
    url: ApiUrl = DEFAULT_API,
    workspace: Workspace = None,
) -> None:
    """Types by status, patterns by source, totals, rates and the discovery curve."""
    reply = call("GET", url, "/v1/ontology/status", workspace, params={"bucket_runs": bucket_runs})
    if as_json:
        print_json(reply)
        return
    console.print("[bold]types by status[/bold]")
    print_table([reply["type_counts"]], tuple(reply["type_counts"]))
    console.print("[bold]patterns by source[/bold]")
    print_table([reply["pattern_stats"]], tuple(reply["pattern_stats"]))
    console.print("[bold]totals[/bold]")
    print_table([reply["totals"]], tuple(reply["totals"]))
    console.print("[bold]rates[/bold]")
    rates = {k: _share(v) for k, v in reply["rates"].items()}
    print_table([rates], tuple(rates))
    console.print("[bold]discovery curve[/bold]")
    curve = [
        {**b, "runs": f"{b['runs_from']}-{b['runs_to']}", "per_100_runs": f"{b['per_100_runs']:g}"}
        for b in reply["discovery_curve"]
    ]
    print_table(curve, ("runs", "patterns", "types", "per_100_runs"))


@app.command("patterns")
def patterns(
    source: Annotated[
        str | None, typer.Option(help="Only this source: seed, discovered, promoted, manual.")
    ] = None,
    entity_type: Annotated[
        str | None, typer.Option("--type", help="Only patterns of this entity type.")
    ] = None,
    include_removed: Annotated[
        bool, typer.Option("--include-removed", help="Also list removed patterns.")
    ] = False,
    limit: Annotated[int, typer.Option(help="Most patterns to list (1-1000).")] = 100,
    cursor: Cursor = None,
    as_json: AsJson = False,
    url: ApiUrl = DEFAULT_API,
    workspace: Workspace = None,
) -> None:
    """List the workspace's patterns and the global ones, most matched first."""
    params: dict[str, Any] = {"limit": limit}
    if source is not None:
        params["source"] = source
    if entity_type is not None:
        params["entity_type"] = entity_type
    if include_removed:
        params["include_removed"] = "true"
    if cursor is not None:
        params["cursor"] = cursor
    reply = call("GET", url, "/v1/ontology/patterns", workspace, params=params)
    if as_json:
        print_json(reply)
        return
    rows = [
        {
            **p,
            "is_global": "yes" if p["is_global"] else "",
            "active": "" if p["active"] else "removed",
        }
        for p in reply["patterns"]
    ]
    columns = ["id", "name", "entity_type", "source", "confidence", "is_global", "matches"]
    columns += ["runs_matched", "last_seen"]
    if include_removed:
        columns.append("active")
    print_table(rows, columns)
    print_next(reply)
    counts = ", ".join(f"{k} {v}" for k, v in reply["stats_by_source"].items())
    # a note under the table, not a row of it: stdout holds the rows only
    err_console.print(f"workspace patterns by source: {counts}", markup=False)


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="The surface text to match (any case).")],
    entity_type: Annotated[str, typer.Argument(help="Its entity type, e.g. `technology`.")],
    confidence: Annotated[float, typer.Option(help="From 0 to 1.")] = 1.0,
    is_global: Global = False,
    url: ApiUrl = DEFAULT_API,
    workspace: Workspace = None,
) -> None:
    """Add a pattern by hand, or override the one with the same name and type."""
    body = {
        "name": name,
        "entity_type": entity_type,
        "confidence": confidence,
        "is_global": is_global,
    }
    print_json(call("POST", url, "/v1/ontology/patterns", workspace, json=body))


@app.command("remove")
def remove(
    pattern_id: Annotated[str, typer.Argument(help="The pattern's id (see `patterns`).")],
    is_global: Global = False,
    url: ApiUrl = DEFAULT_API,
    workspace: Workspace = None,
) -> None:
    """Remove a pattern; without --global, a global one is hidden from this workspace only."""
    params = {"global": "true"} if is_global else {}
    path = f"/v1/ontology/patterns/{path_segment(pattern_id)}"
    print_json(call("DELETE", url, path, workspace, params=params))


@app.command("export")
def export(
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write the document here (default: stdout).", dir_okay=False
        ),
    ] = None,
    url: ApiUrl = DEFAULT_API,
    workspace: Workspace = None,
) -> None:
    """Write the workspace's ontology as a versioned JSON document."""
    document = call("GET", url, "/v1/ontology/export", workspace)
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text)
    except OSError as exc:
        say_error(f"cannot write {output}: {exc}")
        raise typer.Exit(2) from exc
    types, patterns = len(document["types"]), len(document["patterns"])
    console.print(f"wrote {types} types and {patterns} patterns to {output}", highlight=False)


@app.command("import")
def import_(
    file: Annotated[
        Path,
        typer.Argument(
            help="A document as `export` writes it (JSON, or YAML for any other suffix).",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    url: ApiUrl = DEFAULT_API,
    workspace: Workspace = None,
) -> None:
    """Replace the workspace's ontology with the document in FILE, whole (nothing on error)."""
    document = load_document(file)
    print_json(call("POST", url, "/v1/ontology/import", workspace, json=document))


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"
