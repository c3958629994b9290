"""``stageline import``: a log ``stageline tail`` exported, into a workspace of the store.

It talks to the store, not the API, as ``projections rebuild`` does: an operator's bulk
restore, which must see the whole log (checked before anything is written) and append it
in order.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer

from stageline.actors.held import UnfinishedRuns
from stageline.cli_debug import LogFile
from stageline.cli_http import console, err_console
from stageline.errors import InvalidArgument
from stageline.events import RecordedEvent, log_import
from stageline.events.logfile import iter_lines

__all__ = ["import_log"]


def import_log(
    log: LogFile,
    workspace: Annotated[
        str | None,
        typer.Option(
            "--workspace",
            "-w",
            help="Workspace to import into (default: the one the log's events name).",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Let the log's unfinished runs be driven on here (a workspace moved to "
            "this server). Without it they are held: no stage of theirs runs again "
            "(a user may still cancel or undo one).",
        ),
    ] = False,
) -> None:
    """Import a log as `stageline tail` writes it (JSON Lines): every event as it was (ids,
    streams, versions, data, times) and, into an empty workspace, at the same positions.

    The whole log is checked first: a bad line, or a stream of the workspace holding
    other events, writes nothing and exits 1. Events the workspace holds already are
    skipped, so importing again finishes an import that stopped part-way.

    Runs the log leaves unfinished are held, not driven (their stages ran where the log
    comes from: running them again would repeat their side effects) unless `--resume`
    is given; how many is said on stderr.
    """
    # the entry point's helpers: stageline.cli imports this module, so they are taken late
    from stageline.cli import _open_stack, _progress, _run, _settings

    settings = _settings()

    async def go() -> None:
        if not await asyncio.to_thread(_any_event, log):
            console.print(f"nothing to import: {log} holds no events", highlight=False)
            return
        stack = await _open_stack(settings)
        try:  # checked once the stack is open: its actors' event types are known then
            runs = UnfinishedRuns()
            checked = await asyncio.to_thread(
                log_import.check_log, _rereadable(log), source=str(log), see=runs.see
            )
            unfinished = runs.lengths()
            ws = workspace or checked.workspace
            assert ws is not None  # the log has events
            with _progress() as bar:
                task = bar.add_task(f"importing into {ws}", total=None)

                def report(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                result = await log_import.import_log(
                    stack.store,
                    checked,
                    ws,
                    progress=report,
                    hold=None if resume else unfinished,
                )
            if resume:  # an earlier import's hold too
                await stack.store.release_streams(ws, list(unfinished))
        finally:
            await stack.close()
        _summary(result)
        _unfinished(len(unfinished), resume)

    _run(go())


def _any_event(log: Path) -> bool:
    """Whether ``log`` has an event; ``InvalidArgument`` if its first line that is not blank
    is not one."""
    with log.open("rb") as lines:
        return next(iter_lines(lines, source=str(log), exact=True), None) is not None


def _rereadable(log: Path) -> Callable[[], Iterator[tuple[int, RecordedEvent]]]:
    """What reads the numbered lines of ``log`` each time it is called; ``InvalidArgument``
    when the file is not as it was when first read."""
    first: list[tuple[int, int]] = []

    def lines() -> Iterator[tuple[int, RecordedEvent]]:
        with log.open("rb") as f:
            stat = os.fstat(f.fileno())
            now = (stat.st_size, stat.st_mtime_ns)
            if first and first[0] != now:
                raise InvalidArgument(
                    f"{log} changed since it was checked; nothing more was imported: "
                    "import it again"
                )
            first.append(now)
            yield from iter_lines(f, source=str(log), exact=True)

    return lines


def _summary(result: log_import.ImportResult) -> None:
    positions = "as in the log" if result.positions_kept else "not as in the log"
    console.print(
        f"imported {result.imported:,} events into {result.workspace} "
        f"({result.present:,} already there), {result.streams:,} streams; "
        f"positions {positions}",
        highlight=False,
    )


def _unfinished(count: int, resume: bool) -> None:
    """Say on stderr what became of the log's unfinished runs, if it has any."""
    if not count:
        return
    runs = f"the log's {count:,} unfinished run{'s' if count != 1 else ''}"
    if resume:
        err_console.print(f"resumed {runs}: they are driven on here")
    else:
        err_console.print(
            f"left {runs} undriven: no stage of theirs runs again here (cancel or undo "
            "one to end it); import again with --resume to drive them"
        )
