"""``stageline demo``: push the shipped sample memory items through a running API."""

from __future__ import annotations

import asyncio
import json
import time
from importlib import resources
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from stageline.cli_http import answer, err_console, progress_bar
from stageline.errors import Unavailable
from stageline.projections.run_status import RUN_ENDINGS


def samples() -> list[dict[str, Any]]:
    text = resources.files("stageline.data").joinpath("samples.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def run_demo(
    api_url: str,
    *,
    workspace: str,
    count: int | None = None,
    timeout: float = 120.0,
    console: Console | None = None,
) -> dict[str, Any]:
    """Submit the samples, show progress until every run ends, print and return the stats.

    The stats are printed on ``console``; the progress and notices on stderr.

    An error answer of the API is printed and exits 1 (as in every HTTP command);
    ``TimeoutError`` if the runs do not all end within ``timeout`` seconds.
    """
    console = console or Console()
    headers = {"X-Workspace": workspace}
    async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=30) as client:
        try:
            return await _demo(client, workspace, count, timeout, console)
        except httpx.TransportError as exc:
            raise Unavailable(f"the API at {api_url} did not answer: {exc!r}") from exc


async def _demo(
    client: httpx.AsyncClient, workspace: str, count: int | None, timeout: float, console: Console
) -> dict[str, Any]:
    items = samples()
    n = count or len(items)
    limits = asyncio.Semaphore(16)
    with progress_bar(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    ) as progress:
        submitted = progress.add_task("submitted", total=n)
        finished = progress.add_task("finished ", total=n)

        async def submit(i: int) -> str:
            async with limits:
                body = {"pipeline": "memory-ingest", "input": items[i % len(items)]}
                accepted = answer(await client.post("/v1/runs", json=body))
                progress.advance(submitted)
                return str(accepted["run_id"])

        before = await _settled_ontology(client)
        started = time.perf_counter()
        run_ids = await asyncio.gather(*(submit(i) for i in range(n)))
        statuses = await _wait_all(client, run_ids, progress, finished, timeout)
        elapsed = time.perf_counter() - started
    stats = answer(await client.get("/v1/runs/stats"))
    err_console.print("waiting for the ontology to settle (it follows the runs' events)...")
    ontology = await _settled_ontology(client)
    _print(console, statuses, stats, elapsed, workspace)
    discoveries = _discoveries(before, ontology, len(run_ids))
    _print_ontology(console, ontology, discoveries, len(run_ids))
    return {
        "runs": len(run_ids),
        "statuses": statuses,
        "stats": stats,
        "seconds": elapsed,
        "ontology": ontology,
        "discoveries_per_100_runs": discoveries,
    }


async def _settled_ontology(client: httpx.AsyncClient, quiet_s: float = 0.6) -> dict[str, Any]:
    """The ontology status once it stops changing: the reactor and its view lag the runs."""
    last: dict[str, Any] | None = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        page = answer(await client.get("/v1/log", params={"after": 0, "limit": 1}))
        status: dict[str, Any] = answer(
            await client.get("/v1/ontology/status", params={"min_position": page["head"]})
        )
        if status == last:
            return status
        last = status
        await asyncio.sleep(quiet_s)
    return last or {}


def _discoveries(before: dict[str, Any], after: dict[str, Any], runs: int) -> float:
    """New patterns and types discovered during this demo, per 100 of its runs."""

    def found(status: dict[str, Any]) -> int:
        totals = status.get("totals") or {}
        return int(totals.get("patterns_discovered") or 0) + int(totals.get("types_proposed") or 0)

    return round(100 * (found(after) - found(before)) / runs, 1) if runs else 0.0


async def _wait_all(
    client: httpx.AsyncClient, run_ids: list[str], progress: Progress, task: Any, timeout: float
) -> dict[str, str]:
    statuses: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(statuses) < len(run_ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(run_ids) - len(statuses)} runs did not finish in {timeout}s")
        open_ids = [r for r in run_ids if r not in statuses]
        replies = await asyncio.gather(*(client.get(f"/v1/runs/{r}") for r in open_ids[:200]))
        for run_id, reply in zip(open_ids, replies, strict=False):
            if reply.status_code == 200 and reply.json()["status"] in RUN_ENDINGS:
                statuses[run_id] = reply.json()["status"]
                progress.advance(task)
        await asyncio.sleep(0.1)
    return statuses


def _print(
    console: Console, statuses: dict[str, str], stats: dict[str, Any], elapsed: float, ws: str
) -> None:
    by_status = Table(title=f"runs by status (workspace {ws}, this demo)")
    by_status.add_column("status")
    by_status.add_column("runs", justify="right")
    for status in sorted(set(statuses.values())):
        by_status.add_row(status, str(sum(1 for s in statuses.values() if s == status)))
    console.print(by_status)
    stages = Table(title="per-stage timings (all runs of the workspace)")
    for col in ("stage", "completed", "p50 ms", "p95 ms"):
        stages.add_column(col, justify="left" if col == "stage" else "right")
    for name, row in (stats.get("stages") or {}).items():
        stages.add_row(name, str(row.get("count")), _ms(row.get("p50_ms")), _ms(row.get("p95_ms")))
    console.print(stages)
    console.print(f"{len(statuses)} runs finished in {elapsed:.2f}s")


def _print_ontology(
    console: Console, status: dict[str, Any], discoveries: float, runs: int
) -> None:
    types = Table(title="ontology: entity types by status")
    types.add_column("status")
    types.add_column("types", justify="right")
    for name, count in (status.get("type_counts") or {}).items():
        types.add_row(name, str(count))
    console.print(types)
    patterns = Table(title="ontology: patterns by source")
    patterns.add_column("source")
    patterns.add_column("patterns", justify="right")
    for name, count in (status.get("pattern_stats") or {}).items():
        patterns.add_row(name, str(count))
    console.print(patterns)
    rates = status.get("rates") or {}
    resolved = rates.get("resolved_by_confirmed")
    console.print(
        f"discovered {discoveries:g} new patterns and types per 100 runs in these {runs} runs; "
        + (f"{resolved:.0%} of all mentions resolved by confirmed patterns" if resolved else "")
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
