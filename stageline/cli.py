"""stageline: an event-sourced actor system for multi-stage pipelines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from stageline import cli_debug, cli_import
from stageline.cli_feed import answer_after, follow_log
from stageline.cli_http import (
    DEFAULT_API,
    ApiUrl,
    Cursor,
    Workspace,
    answer,
    api_answers,
    call,
    console,
    err_console,
    json_object,
    print_json,
    print_next,
    print_table,
    progress_bar,
    say_error,
    send,
)
from stageline.cli_ontology import app as ontology_app
from stageline.cli_pipelines import app as pipelines_app
from stageline.client import path_segment
from stageline.errors import StagelineError
from stageline.logs import configure_logging
from stageline.projections.registry import NAMES
from stageline.settings import Settings, describe

if TYPE_CHECKING:
    from stageline.projections.projector import RebuildResult
    from stageline.stack import Stack

# click's own formatting, for every command and group under it: a usage error is its usage
# line, a hint and one `Error: ...` line on stderr (rich drew a box, cut to the terminal's
# width), and help is plain text
app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__, rich_markup_mode=None)
projections_app = typer.Typer(no_args_is_help=True, help="Projection status and rebuilds.")
app.add_typer(projections_app, name="projections")
dlq_app = typer.Typer(no_args_is_help=True, help="Dead letters: list, redrive, discard.")
app.add_typer(dlq_app, name="dlq")
app.add_typer(pipelines_app, name="pipelines")
app.add_typer(ontology_app, name="ontology")
app.command()(cli_debug.replay)
app.command()(cli_debug.diff)
app.command()(cli_debug.lineage)
app.command("import")(cli_import.import_log)

RunId = Annotated[str, typer.Argument(help="The run's id.")]
DeadLetterId = Annotated[str, typer.Argument(help="The dead letter's id.")]
Reason = Annotated[str, typer.Option(help="Why; recorded on the event.")]


def _settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        say_error(f"invalid STAGELINE_* setting: {describe(exc)}")
        raise typer.Exit(2) from exc
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _run(coro: Any) -> Any:
    from stageline.gctune import tune_gc

    tune_gc()
    try:
        return asyncio.run(coro)
    # an OSError (a TimeoutError too) says what failed: no traceback needed
    except (StagelineError, OSError) as exc:
        say_error(f"error: {exc}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


async def _open_stack(settings: Settings) -> Stack:
    """The stack of a one-shot command that talks to the store: ``STAGELINE_REDIS_URL``'s;
    else the embedded server of the ``stageline up`` running on the data directory; else
    that server started for the command alone, which one line on stderr says."""
    from stageline.stack import Stack

    stack = await Stack.open(settings, share=True)
    if stack.server is not None:
        err_console.print(
            f"no STAGELINE_REDIS_URL and no `stageline up` on {stack.server.data_dir}: "
            "started the embedded server there for this command",
            markup=False,
        )
    return stack


def _require_url(settings: Settings, what: str) -> None:
    if settings.redis_url is None:
        say_error(
            f"{what} needs STAGELINE_REDIS_URL: point it at the server "
            "`stageline up` printed, or at your Redis/FalkorDB"
        )
        raise typer.Exit(2)


@app.command()
def up(
    host: Annotated[str, typer.Option(help="Interface the API listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port the API listens on.")] = 8000,
) -> None:
    """Run everything in one process: store (embedded unless STAGELINE_REDIS_URL), actors,
    projector and API."""
    from stageline.serve import serve

    settings = _settings()

    async def announce(api_url: str | None) -> None:
        console.print(f"stageline is up: API [bold]{api_url}[/bold]  (docs: {api_url}/docs)")
        console.print(f"store: [bold]{_store_url(settings)}[/bold]")
        console.print("point workers at it: STAGELINE_REDIS_URL=<store> stageline worker")
        console.print("try: stageline demo    stop: Ctrl-C")
        await asyncio.Event().wait()

    _run(serve(settings, api=(host, port), then=announce))


def _store_url(settings: Settings) -> str:
    return settings.redis_url or f"unix://{(settings.data_dir / 'redis.sock').resolve()}"


@app.command()
def worker() -> None:
    """Run stage actors (any number of these share the consumer groups)."""
    from stageline.serve import serve

    settings = _settings()
    _require_url(settings, "worker")
    _run(serve(settings, worker=True, projector=False, embedded=False))


@app.command()
def projector() -> None:
    """Run the projector that keeps the views up to date with the log."""
    from stageline.serve import serve

    settings = _settings()
    _require_url(settings, "projector")
    _run(serve(settings, worker=False, projector=True, embedded=False))


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Run only the HTTP API."""
    from stageline.serve import serve

    settings = _settings()
    _require_url(settings, "api")
    _run(serve(settings, worker=False, projector=False, api=(host, port), embedded=False))


@app.command()
def demo(
    url: ApiUrl = DEFAULT_API,
    count: Annotated[
        int | None, typer.Option(help="Runs to submit (default: every sample).")
    ] = None,
    workspace: Annotated[str, typer.Option("--workspace", "-w")] = "demo",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the runs.")] = 120.0,
) -> None:
    """Submit the shipped sample memory items and show how their runs went.

    Uses the API at --url when one answers there; otherwise starts its own embedded stack.
    """
    from stageline.demo import run_demo
    from stageline.serve import serve

    settings = _settings()
    if api_answers(url):
        _run(run_demo(url, workspace=workspace, count=count, timeout=timeout, console=console))
        return
    err_console.print(f"no API at {url}: starting an embedded stack for the demo", markup=False)

    async def then(api_url: str | None) -> None:
        assert api_url is not None
        await run_demo(api_url, workspace=workspace, count=count, timeout=timeout, console=console)

    _run(serve(settings, api=("127.0.0.1", _free_port()), then=then))


def _stdin_text() -> str:
    """What stdin holds, as UTF-8 text; one line saying it is not and exit 2 otherwise. On
    a terminal, one line on stderr first says it waits for the input."""
    if sys.stdin.isatty():
        err_console.print("reading the input (a JSON object) from stdin; end it with Ctrl-D")
    try:
        return sys.stdin.buffer.read().decode()
    except UnicodeDecodeError as exc:
        say_error(f"invalid --input: stdin is not UTF-8 text ({exc.reason} at byte {exc.start})")
        raise typer.Exit(2) from exc


@app.command()
def submit(
    text: Annotated[
        str | None,
        typer.Argument(
            help='The memory item\'s text: the input {"text": TEXT}.', show_default=False
        ),
    ] = None,
    input_: Annotated[
        str | None,
        typer.Option(
            "--input",
            help="The run's input as a JSON object, instead of TEXT ('-': read from stdin).",
        ),
    ] = None,
    pipeline: Annotated[str, typer.Option(help="Pipeline name.")] = "memory-ingest",
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the run to end (0: don't).")
    ] = 10.0,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            help="Names this submission: sent again with the same key, it answers the same "
            "run (with other input, a 409)."
        ),
    ] = None,
    url: ApiUrl = DEFAULT_API,
    workspace: Workspace = None,
) -> None:
    """Submit one run through the API and print it."""
    if (text is None) == (input_ is None):
        raise typer.BadParameter("give TEXT or --input, one of them", param_hint="TEXT / --input")
    if idempotency_key is not None and not (
        0 < len(idempotency_key) <= 200
        and idempotency_key.isascii()
        and idempotency_key.isprintable()
    ):
        raise typer.BadParameter("1-200 printable ASCII characters", param_hint="--idempotency-key")
    if input_ is None:
        body = {"text": text}
    else:
        body = json_object(_stdin_text() if input_ == "-" else input_, "--input")
    reply = call(
        "POST",
        url,
        "/v1/runs",
        workspace,
        json={"pipeline": pipeline, "input": body},
        params={"wait": wait} if wait > 0 else {},
        headers={"Idempotency-Key": idempotency_key} if idempotency_key is not None else None,
    )
    print_json(reply)


@app.command()
def runs(
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    pipeline: Annotated[str | None, typer.Option(help="Only runs of this pipeline.")] = None,
    limit: Annotated[int, typer.Option(help="How many.")] = 20,
    cursor: Cursor = None,
    url: ApiUrl = DEFAULT_API,
    workspace: Workspace = None,
) -> None:
    """List runs, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    if pipeline:
        params["pipeline"] = pipeline
    if cursor is not None:
        params["cursor"] = cursor
    reply = call("GET", url, "/v1/runs", workspace, params=params)
    print_table(reply["runs"], ("id", "pipeline", "status", "current_stage", "submitted_at"))
    print_next(reply)


@app.command()
def undo(run_id: RunId, url: ApiUrl = DEFAULT_API, workspace: Workspace = None) -> None:
    """Undo a run: compensate every stage's effects (the original events stay)."""
    print_json(call("POST", url, f"/v1/runs/{path_segment(run_id)}/undo", workspace))


@app.command()
def retry(run_id: RunId, url: ApiUrl = DEFAULT_API, workspace: Workspace = None) -> None:
    """Retry a failed run from the stage that failed."""
    print_json(call("POST", url, f"/v1/runs/{path_segment(run_id)}/retry", workspace))


@app.command()
def cancel(
    run_id: RunId, reason: Reason = "", url: ApiUrl = DEFAULT_API, workspace: Workspace = None
) -> None:
    """Cancel a run: its stage attempt under way is interrupted; no later stage starts."""
    path = f"/v1/runs/{path_segment(run_id)}/cancel"
    print_json(call("POST", url, path, workspace, json={"reason": reason}))


@dlq_app.command("list")
def dlq_list(
    stage: Annotated[str | None, typer.Option(help="Only this stage's entries.")] = None,
    status: Annotated[str, typer.Option(help="open, redriven, discarded or all.")] = "open",
    channel: Annotated[
        str | None,
        typer.Option(
            help="Only the poison entries of this channel, named by its actor (@ingest: the "
            "ingest channel's)."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="How many.")] = 100,
    cursor: Cursor = None,
    url: ApiUrl = DEFAULT_API,
    workspace: Workspace = None,
) -> None:
    """List dead letters (by default the open ones), newest first."""
    params: dict[str, Any] = {"status": status, "limit": limit}
    if stage:
        params["stage"] = stage
    if channel:
        params["channel"] = channel
    if cursor is not None:
        params["cursor"] = cursor
    reply = call("GET", url, "/v1/dlq", workspace, params=params)
    print_table(
        reply["dead_letters"],
        ("id", "kind", "stage", "run_id", "status", "deliveries", "error", "created_at"),
    )
    print_next(reply)


@dlq_app.command("redrive")
def dlq_redrive(
    dead_letter: DeadLetterId, url: ApiUrl = DEFAULT_API, workspace: Workspace = None
) -> None:
    """Send a dead letter back to work (a failed run is retried)."""
    print_json(call("POST", url, f"/v1/dlq/{path_segment(dead_letter)}/redrive", workspace))


@dlq_app.command("discard")
def dlq_discard(
    dead_letter: DeadLetterId,
    reason: Reason = "",
    url: ApiUrl = DEFAULT_API,
    workspace: Workspace = None,
) -> None:
    """Close a dead letter without redriving it (recorded as an event)."""
    params = {"reason": reason} if reason else {}
    print_json(
        call("DELETE", url, f"/v1/dlq/{path_segment(dead_letter)}", workspace, params=params)
    )


@app.command()
def tail(
    after: Annotated[int, typer.Option(help="Start after this log position.")] = 0,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="Keep printing events as they are appended (the API's live feed; "
            "a dropped connection is resumed where it stopped).",
        ),
    ] = False,
    url: ApiUrl = DEFAULT_API,
    workspace: Workspace = None,
) -> None:
    """Print the workspace log as JSON lines, from a position on; with --follow, live."""
    if follow:  # the live feed: resumes by itself when the connection drops
        follow_log(url, workspace, after, sys.stdout)
        return
    given = after
    while True:
        page = send("GET", url, "/v1/log", workspace, params={"after": after, "limit": 1000})
        reply = answer_after(page, given) if after == given else answer(page)
        for event in reply["events"]:
            sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()
        after = reply["next_after"]
        if not reply["events"]:
            return


ProjectionName = Annotated[
    str | None,
    typer.Option(
        "--projection",
        "-p",
        help=f"Only this projection ({', '.join(NAMES)}); default: every one, in turn.",
    ),
]


def _progress() -> Progress:
    """A progress bar on stderr (left out when that is not a terminal): stdout is for data."""
    return progress_bar(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("events"),
        TimeRemainingColumn(),
    )


@projections_app.command("rebuild")
def projections_rebuild(workspace: Workspace = None, projection: ProjectionName = None) -> None:
    """Drop projections' views and replay them from position 0 of the log.

    Each projection is rebuilt alone: the others' views and checkpoints stay as they are.
    """
    if projection is not None and projection not in NAMES:
        say_error(f"error: no projection named {projection!r}; projections: {', '.join(NAMES)}")
        raise typer.Exit(2)
    settings = _settings()
    ws = workspace or settings.workspace

    async def go() -> None:
        stack = await _open_stack(settings)
        try:
            projector = stack.projector()
            async with projector.fold_pool or contextlib.nullcontext():  # one for all
                await rebuild_each(projector)
        finally:
            await stack.close()

    async def rebuild_each(projector: Any) -> None:
        for name in [projection] if projection else NAMES:
            with _progress() as bar:
                task = bar.add_task(f"rebuilding {name}", total=None)

                def report(position: int, head: int, task: Any = task, bar: Any = bar) -> None:
                    bar.update(task, completed=position, total=head)

                result = await projector.rebuild(ws, name, progress=report)
            console.print(rebuilt_line(ws, result))

    _run(go())


def rebuilt_line(workspace: str, result: RebuildResult) -> str:
    """What ``projections rebuild`` says of one rebuilt view."""
    line = (
        f"rebuilt {result.projection} in {workspace}: {result.head} events in "
        f"{result.seconds:.2f}s ({result.rate:,.0f} events/s)"
    )
    if result.events < result.head:
        line += f"; a projector running meanwhile wrote {result.head - result.events} of them"
    return line


@projections_app.command("status")
def projections_status(
    workspace: Annotated[
        str | None, typer.Option("--workspace", "-w", help="Only this one (default: every one).")
    ] = None,
) -> None:
    """Show each projection's checkpoint and lag, per workspace."""
    settings = _settings()

    async def go() -> None:
        stack = await _open_stack(settings)
        try:
            rows = []
            names = [workspace] if workspace else await stack.store.workspaces()
            for ws in names:
                head = await stack.store.head(ws)
                stored = await stack.views.checkpoints(ws, NAMES)
                for name in NAMES:
                    checkpoint = stored.get(name, 0)
                    rows.append(
                        {
                            "workspace": ws,
                            "projection": name,
                            "checkpoint": checkpoint,
                            "head": head,
                            "lag": head - checkpoint,
                        }
                    )
            print_table(rows, ("workspace", "projection", "checkpoint", "head", "lag"))
        finally:
            await stack.close()

    _run(go())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    app()
