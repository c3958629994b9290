"""``stageline import``: a log ``stageline tail`` exported, into a workspace of the store.

It talks to the store, not the API, as ``projections rebuild`` does: an operator's bulk
restore, which must see the whole log (checked before anything is written) and append it
in order.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from stageline.cli_debug import LogFile
from stageline.cli_http import console
from stageline.events import log_import
from stageline.events.logfile import read_lines

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
) -> None:
    """Import a log as `stageline tail` writes it (JSON Lines): every event as it was (ids,
    streams, versions, data, times) and, into an empty workspace, at the same positions.

    The whole log is checked first: a bad line, or a stream of the workspace holding
    other events, writes nothing and exits 1. Events the workspace holds already are
    skipped, so importing again finishes an import that stopped part-way.
    """
    # the entry point's helpers: stageline.cli imports this module, so they are taken late
    from stageline.cli import _progress, _run, _settings

    settings = _settings()

    async def go() -> None:
        from stageline.stack import Stack

        data = await asyncio.to_thread(log.read_bytes)
        lines = read_lines(data.splitlines(), source=str(log), exact=True)
        if not lines:
            console.print(f"nothing to import: {log} holds no events", highlight=False)
            return
        stack = await Stack.open(settings)
        try:  # checked once the stack is open: its actors' event types are known then
            checked = log_import.check_log(lines, source=str(log))
            ws = workspace or checked.workspace
            assert ws is not None  # the log has events
            with _progress() as bar:
                task = bar.add_task(f"importing into {ws}", total=None)

                def report(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                result = await log_import.import_log(stack.store, checked, ws, progress=report)
        finally:
            await stack.close()
        _summary(result)

    _run(go())


def _summary(result: log_import.ImportResult) -> None:
    positions = "as in the log" if result.positions_kept else "not as in the log"
    console.print(
        f"imported {result.imported:,} events into {result.workspace} "
        f"({result.present:,} already there), {result.streams:,} streams; "
        f"positions {positions}",
        highlight=False,
    )
