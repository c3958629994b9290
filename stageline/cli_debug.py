"""Debugging from exported logs (``stageline tail > log.jsonl``), with no server: the runs
as of any position, and what differs between two logs."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn
from rich.tree import Tree

from stageline.cli_http import (
    console,
    err_console,
    print_json,
    print_table,
    progress_bar,
    say_error,
)
from stageline.errors import InvalidArgument
from stageline.events import RecordedEvent
from stageline.events.envelope import EventRegistry, registry
from stageline.events.keys import run_stream
from stageline.events.lineage import Lineage, links
from stageline.events.lineage import lineage as event_lineage
from stageline.events.logfile import DEFAULT_IGNORED, LogDiff, diff_logs, iter_lines
from stageline.projections.replay import runs_as_of

__all__ = ["diff", "lineage", "replay"]

LogFile = Annotated[
    Path,
    typer.Argument(
        help="A log as `stageline tail` writes it (JSON Lines).",
        exists=True,
        dir_okay=False,
        readable=True,
    ),
]
PROGRESS_LINES = 4096
"""Lines read between two updates of the progress bar."""

AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _rereadable(path: Path) -> Callable[[], Iterator[RecordedEvent]]:
    """What reads the events of ``path`` as they are needed, with a progress bar, each time
    it is called; ``InvalidArgument`` for a line that is not an event, or when the file is
    not as it was when first read."""
    first: list[tuple[int, int]] = []

    def events() -> Iterator[RecordedEvent]:
        with path.open("rb") as lines, _reading(path) as advance:
            stat = os.fstat(lines.fileno())
            now = (stat.st_size, stat.st_mtime_ns)
            if first and first[0] != now:
                raise InvalidArgument(f"{path} changed while it was read; read it again")
            first.append(now)
            for number, event in iter_lines(lines, source=str(path)):
                if not number % PROGRESS_LINES:
                    advance(lines.tell())
                yield event

    return events


def _in_log_order(
    path: Path,
    lines: BinaryIO,
    advance: Callable[[int], None],
    types: EventRegistry | None = None,
) -> Iterator[RecordedEvent]:
    """The events of an exported log, read as they are needed; ``InvalidArgument`` naming the
    line of one that is not an event or comes out of log order, or, given ``types``, whose
    schema version of a type it knows is newer than this code's (``advance`` hears how far
    into the file reading got, every few thousand lines)."""
    last = 0
    for number, event in iter_lines(lines, source=str(path)):
        if event.position <= last:
            raise InvalidArgument(
                f"{path}, line {number}: position {event.position} after {last}; a log is "
                "replayed in log order, as `stageline tail` writes it"
            )
        if types is not None:
            try:
                types.check_version(event.type, event.schema_version)
            except InvalidArgument as exc:  # its fold would read the data as what it is not
                raise InvalidArgument(f"{path}, line {number}: {exc.message}") from None
        last = event.position
        if not number % PROGRESS_LINES:
            advance(lines.tell())
        yield event


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[Callable[[int], None]]:
    """A progress bar of reading ``path`` on stderr (left out when that is not a terminal);
    yields what sets how many bytes are read."""
    bar = progress_bar(
        TextColumn(f"reading {path.name}"), BarColumn(), DownloadColumn(), TimeRemainingColumn()
    )
    with bar:
        task = bar.add_task("", total=path.stat().st_size)
        yield lambda done: bar.update(task, completed=done)


def replay(
    log: LogFile,
    until: Annotated[
        int | None,
        typer.Option(help="Stop after this log position (default: the log's last event)."),
    ] = None,
    run: Annotated[
        str | None,
        typer.Option(help="Show this run only (its id or its stream's name), whole, as JSON."),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Replay a log into the run-status view offline: every run as the view held it once it
    had applied the position (`--until`), with its stages."""
    if until is not None and until < 0:
        say_error(f"error: --until {until}: a log position is 0 or more")
        raise typer.Exit(2)
    try:
        with log.open("rb") as lines, _reading(log) as advance:
            replayed = runs_as_of(_in_log_order(log, lines, advance, registry), until)
    except InvalidArgument as exc:
        say_error(f"error: {exc}")
        raise typer.Exit(2) from exc
    runs = replayed.runs
    upto = "" if until is None else f" up to position {until}"
    if run is not None:
        # its id, else its stream's name (`run-<id>`), as lineage takes it
        found = [r for r in runs if r["id"] == run] or [
            r for r in runs if run_stream(r["id"]) == run
        ]
        if not found:
            if run in replayed.partial or run in map(run_stream, replayed.partial):
                say_error(
                    f"error: run {run!r} began before the first event of {log}: its first "
                    f"events, RunSubmitted among them, are not in it; {EARLIER}"
                )
            else:
                say_error(f"error: no run {run!r} in {log}{upto}")
            raise typer.Exit(1)
        print_json(found[0])
        return
    if as_json:
        print_json(runs)
    else:
        rows = [
            {**r, "stages": " ".join(f"{s['name']}:{s.get('status')}" for s in r["stages"])}
            for r in runs
        ]
        print_table(rows, ("id", "pipeline", "status", "current_stage", "stages"))
    if replayed.partial:
        _say_partial(log, replayed.partial)
        if not runs:  # nothing could be replayed
            raise typer.Exit(1)


EARLIER = "export the log from an earlier position (`stageline tail` without --after)"
NAMED_RUNS = 3
"""How many of the runs a log holds only part of a replay names."""


def _say_partial(log: Path, partial: list[str]) -> None:
    """One line on stderr: how many runs began before the log's first event, naming a few."""
    n = len(partial)
    names = ", ".join(partial[:NAMED_RUNS]) + (
        f" and {n - NAMED_RUNS} more" if n > NAMED_RUNS else ""
    )
    err_console.print(
        f"warning: left out {n} run{'s' if n != 1 else ''} that began before the first event "
        f"of {log} (no RunSubmitted in it): {names}; to replay them, {EARLIER}",
        markup=False,
    )


def diff(
    a: LogFile,
    b: LogFile,
    runs_by_input: Annotated[
        bool,
        typer.Option(
            "--runs-by-input",
            help="Pair runs by their input (its id, else its text) instead of by stream "
            "name: the same items run through two stacks, e.g. before and after a change.",
        ),
    ] = False,
    ignore: Annotated[
        list[str] | None,
        typer.Option(
            help="A data key to leave out of the comparison, besides "
            + ", ".join(sorted(DEFAULT_IGNORED))
            + " (repeatable)."
        ),
    ] = None,
    no_default_ignores: Annotated[
        bool,
        typer.Option(
            "--no-default-ignores",
            help="Compare "
            + ", ".join(sorted(DEFAULT_IGNORED))
            + " too (only keys --ignore names are left out).",
        ),
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Compare two logs stream by stream (each event's type and data, in version order) and
    show where each stream first differs. Exits 1 when they differ, like diff."""
    try:
        result = diff_logs(
            _rereadable(a),
            _rereadable(b),
            runs_by_input=runs_by_input,
            ignore={*(() if no_default_ignores else DEFAULT_IGNORED), *(ignore or ())},
        )
    except InvalidArgument as exc:
        say_error(f"error: {exc}")
        raise typer.Exit(2) from exc
    if as_json:
        print_json(dataclasses.asdict(result) | {"equal": result.equal})
    else:
        _show(result, a, b)
    if not result.equal:
        raise typer.Exit(1)


def _show(result: LogDiff, a: Path, b: Path) -> None:
    console.print(
        f"{result.same} stream{'' if result.same == 1 else 's'} the same, "
        f"{len(result.differ)} differ, "
        f"{len(result.only_a)} only in {a}, {len(result.only_b)} only in {b}",
        highlight=False,
    )
    for key in result.only_a:
        console.print(f"[red]- {key}[/red] (only in {a})", highlight=False)
    for key in result.only_b:
        console.print(f"[green]+ {key}[/green] (only in {b})", highlight=False)
    for d in result.differ:
        names = d.streams[0] if d.streams[0] == d.streams[1] else " / ".join(d.streams)
        console.print(f"[bold]{d.key}[/bold] ({names}) first differs at version {d.version}:")
        console.print(f"[red]- {_event(d.a)}[/red]", highlight=False)
        console.print(f"[green]+ {_event(d.b)}[/green]", highlight=False)


def _event(shape: dict[str, Any] | None) -> str:
    if shape is None:
        return "(no event)"
    return f"{shape['type']} {json.dumps(shape['data'], sort_keys=True, default=str)}"


def lineage(
    log: LogFile,
    of: Annotated[
        str,
        typer.Argument(
            metavar="ID", help="An event id, a stream name, or a run id (its run-<id> stream)."
        ),
    ],
    as_json: AsJson = False,
) -> None:
    """Show what led to an event (or to a stream's events) and what it led to, following
    each event's causation id through the whole log: its causes back to the first, and its
    effects, in any stream."""
    try:
        with log.open("rb") as first, log.open("rb") as again, _reading(log) as advance:
            found = event_lineage(
                _in_log_order(log, first, advance), (e for _, e in iter_lines(again)), of
            )
    except InvalidArgument as exc:
        say_error(f"error: {exc}")
        raise typer.Exit(2) from exc
    if not found.start:
        say_error(f"error: no event, stream or run {of!r} in {log}")
        raise typer.Exit(1)
    if as_json:
        print_json(
            {
                "of": found.of,
                "start": found.start,
                "causes": found.causes,
                "effects": found.effects,
                "unknown_causes": found.unknown_causes,
            }
        )
    elif console.is_terminal:
        console.print(_tree(found))
    else:
        relation = {
            **{e.event_id: "cause" for e in found.causes},
            **{e.event_id: "effect" for e in found.effects},
        }
        shown = sorted([*found.causes, *found.start, *found.effects], key=lambda e: e.position)
        print_table(
            ({**_row(e), "relation": relation.get(e.event_id, "start")} for e in shown),
            ("relation", "position", "stream", "version", "type", "event_id", "causation_id"),
        )


def _row(e: RecordedEvent) -> dict[str, Any]:
    return {
        "position": e.position,
        "stream": e.stream,
        "version": e.version,
        "type": e.type,
        "event_id": str(e.event_id),
        "causation_id": e.causation_id,
    }


def _tree(found: Lineage) -> Tree:
    """The events as a tree of causes: each under the event that caused it, the ones asked
    about in bold."""
    start = {e.event_id for e in found.start}
    events = sorted([*found.causes, *found.start, *found.effects], key=lambda e: e.position)
    root = Tree(f"lineage of {found.of}", guide_style="dim")
    for cause in found.unknown_causes:
        root.add(f"[dim]{escape(cause)} (no event of this log)[/dim]")
    nodes: dict[str, Tree] = {}
    for e in events:
        label = escape(f"#{e.position} {e.type}  {e.stream} v{e.version}  {str(e.event_id)[:8]}")
        label = f"[bold]{label}[/bold]" if e.event_id in start else label
        data = json.dumps(e.data, default=str)
        label += f"  [dim]{escape(data if len(data) <= 80 else data[:79] + '…')}[/dim]"
        parent = next((nodes[p] for p in links(e) if p in nodes), root)
        nodes[str(e.event_id)] = parent.add(label)
    return root
