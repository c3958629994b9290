"""Fault injection: runs flow while workers are SIGKILLed at random and Redis restarts.

The test owns everything it breaks: an embedded server (``appendfsync always``)
in a short directory under /tmp, several ``stageline worker`` processes and a
``stageline projector``. While it submits runs it kills workers and starts new
ones, and once stops and starts the server on the same data directory. Then it
reads every run's stream and checks, from the log alone, that every run ended,
that no (run, stage, attempt) transition was recorded twice and that no
submitted run is missing. ``STAGELINE_FAULT_SEED`` replays a printed seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pytest

from stageline.actors.channels import CommandBus
from stageline.actors.pipeline import PipelineCatalog
from stageline.actors.submit import Submitter
from stageline.embedded import EmbeddedServer
from stageline.events import RecordedEvent, keys
from stageline.events.redis_store import RedisEventStore, connect
from stageline.projections.falkordb_views import FalkorDBViews

pytestmark = pytest.mark.slow

WORKSPACE = "faults"
MEMORY_RUNS = 500
FLAKY_RUNS = 100
WORKERS = 3
KILLS = 10
SUBMIT_SECONDS = 20.0  # runs are spread over this long, so the faults hit them in flight
SETTLE_SECONDS = 120.0  # every run must have ended this long after the last fault
TRANSITIONS = ("StageStarted", "StageCompleted", "StageFailed")
TERMINAL = ("RunCompleted", "RunFailed")
# short enough that an attempt killed mid-stage is retried within seconds:
# claim after 1 s idle, stage timeout capped at 2 s, presumed lost 1 s after that
WORKER_SETTINGS = {
    "CLAIM_IDLE_MS": "1000",
    "POLL_MS": "20",
    "BATCH_SIZE": "50",
    "MAX_STAGE_TIMEOUT_SECONDS": "2",
    "ABANDON_GRACE_SECONDS": "1",
    "SUPERVISE_SECONDS": "1",
    "DRAIN_SECONDS": "3",
    "LOG_FORMAT": "json",
}
SAMPLES = [
    json.loads(line)
    for line in resources.files("stageline.data").joinpath("samples.jsonl").read_text().splitlines()
]


@dataclass
class Processes:
    """Every process the test started, so each is stopped by its own pid."""

    root: Path
    env: dict[str, str]
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, command: str) -> subprocess.Popen[bytes]:
        n = len(self.started)
        with (self.root / f"{command}-{n}.log").open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "stageline", command],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.started.append(proc)
        if command == "worker":
            self.workers.append(proc)
        return proc

    def kill_worker(self, rng: random.Random) -> None:
        victim = rng.choice(self.workers)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        self.workers.remove(victim)

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-2000:]}"
            for path in sorted(self.root.glob("*.log"))
        )


@dataclass
class Figures:
    seed: int
    runs: int = 0
    kills: int = 0
    restarts: int = 0
    resubmits: int = 0
    duplicates: int = 0
    lost: int = 0
    not_ended: int = 0
    ended: Counter[str] = field(default_factory=Counter)
    abandoned: int = 0
    dead_letters: int = 0
    elapsed: float = 0.0

    def report(self) -> str:
        return (
            f"fault injection (seed {self.seed}): runs {self.runs}, kills {self.kills}, "
            f"redis restarts {self.restarts}, resubmits {self.resubmits}, "
            f"duplicates found {self.duplicates}, runs lost {self.lost}, "
            f"not ended {self.not_ended}, ended {dict(self.ended)}, "
            f"attempts abandoned by killed workers {self.abandoned}, "
            f"dead letters {self.dead_letters}, elapsed {self.elapsed:.1f}s"
        )


async def submit_all(
    submitter: Submitter, rng: random.Random, figures: Figures, run_ids: list[str]
) -> None:
    """Submit every run at a steady pace; a submit that fails is retried with the same key."""
    plan = ["memory-ingest"] * MEMORY_RUNS + ["flaky"] * FLAKY_RUNS
    rng.shuffle(plan)
    started = time.monotonic()
    for i, pipeline in enumerate(plan):
        item = dict(SAMPLES[i % len(SAMPLES)])
        if pipeline == "flaky":
            # slow enough that kills often land mid-stage: those attempts are abandoned and retried
            item["flaky"] = {"fail_times": rng.randint(1, 2), "sleep_seconds": 0.2}
        deadline = time.monotonic() + 60
        while True:
            try:
                result = await submitter.submit(
                    WORKSPACE, pipeline, item, idempotency_key=f"fault-{i}"
                )
                break
            except Exception:  # Redis restarting: the same key makes the retry the same run
                if time.monotonic() > deadline:
                    raise
                figures.resubmits += 1
                await asyncio.sleep(0.1)
        run_ids.append(result.run_id)
        figures.runs += 1
        # pacing, not synchronisation: spread the runs over SUBMIT_SECONDS
        await asyncio.sleep(
            max(0.0, started + SUBMIT_SECONDS * (i + 1) / len(plan) - time.monotonic())
        )


async def inject_faults(
    server: EmbeddedServer, procs: Processes, rng: random.Random, figures: Figures
) -> None:
    """SIGKILL a random worker (and start a new one) KILLS times; restart Redis once, mid-way."""
    faults = [(rng.uniform(1.0, SUBMIT_SECONDS + 2.0), "kill") for _ in range(KILLS)]
    faults.append((SUBMIT_SECONDS / 2 + rng.uniform(-1.0, 1.0), "restart"))
    started = time.monotonic()
    for at, fault in sorted(faults):
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))  # pacing the schedule
        if fault == "kill":
            procs.kill_worker(rng)
            figures.kills += 1
            procs.start("worker")
        else:
            await asyncio.to_thread(server.stop)  # SIGTERM; the socket path stays the same
            await asyncio.to_thread(server.start)
            figures.restarts += 1


async def read_runs(
    store: RedisEventStore, run_ids: list[str], **options: object
) -> list[list[RecordedEvent]]:
    """Every run's stream (or its tail, with ``backwards=True, limit=1``), 50 reads at a time."""
    out: list[list[RecordedEvent]] = []
    for i in range(0, len(run_ids), 50):
        out += await asyncio.gather(
            *(
                store.read_stream(WORKSPACE, keys.run_stream(r), **options)  # type: ignore[arg-type]
                for r in run_ids[i : i + 50]
            )
        )
    return out


async def last_types(store: RedisEventStore, run_ids: list[str]) -> dict[str, str | None]:
    tails = await read_runs(store, run_ids, backwards=True, limit=1)
    return {r: tail[0].type if tail else None for r, tail in zip(run_ids, tails, strict=True)}


async def wait_all_ended(store: RedisEventStore, run_ids: list[str], within: float) -> None:
    deadline = time.monotonic() + within
    pending = list(run_ids)
    while pending and time.monotonic() < deadline:
        ends = await last_types(store, pending)
        pending = [r for r, t in ends.items() if t not in TERMINAL]
        if pending:
            await asyncio.sleep(0.5)


async def check_log(store: RedisEventStore, run_ids: list[str], figures: Figures) -> list[str]:
    """Read every run's stream; count what went wrong and return the offending runs."""
    bad: list[str] = []
    streams = await read_runs(store, run_ids)
    for run_id, events in zip(run_ids, streams, strict=True):
        if not events:
            figures.lost += 1
            bad.append(f"{run_id}: no stream")
            continue
        seen = Counter(
            (e.type, e.data["index"], e.data.get("attempt", 1))
            for e in events
            if e.type in TRANSITIONS
        )
        ends = [e.type for e in events if e.type in TERMINAL]
        twice = [t for t, n in seen.items() if n > 1] + ends[1:]
        figures.duplicates += len(twice)
        figures.abandoned += sum(
            1
            for e in events
            if e.type == "StageFailed" and e.data["error_type"] == "AttemptAbandoned"
        )
        if ends:
            figures.ended[ends[0]] += 1
        else:
            figures.not_ended += 1
        if twice or not ends:
            bad.append(f"{run_id}: recorded twice {twice}, ends {ends}, last {events[-1].type}")
    return bad


async def test_runs_survive_killed_workers_and_a_redis_restart() -> None:
    seed = int(os.environ.get("STAGELINE_FAULT_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    figures = Figures(seed=seed)
    print(f"\nfault injection seed: {seed} (replay with STAGELINE_FAULT_SEED={seed})")
    root = Path(tempfile.mkdtemp(prefix="slf", dir="/tmp"))  # unix socket paths are short
    server = EmbeddedServer(root / "srv", appendfsync="always")
    url = server.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGELINE_")}
    env |= {f"STAGELINE_{k}": v for k, v in WORKER_SETTINGS.items()}
    env["STAGELINE_REDIS_URL"] = url
    procs = Processes(root, env)
    store = RedisEventStore.from_url(url)
    client = connect(url)
    views = FalkorDBViews.from_url(url)
    run_ids: list[str] = []
    started = time.monotonic()
    try:
        for _ in range(WORKERS):
            procs.start("worker")
        procs.start("projector")
        submitter = Submitter(store, PipelineCatalog(), CommandBus(client))
        await asyncio.gather(
            submit_all(submitter, rng, figures, run_ids),
            inject_faults(server, procs, rng, figures),
        )
        await wait_all_ended(store, run_ids, SETTLE_SECONDS)
        bad = await check_log(store, run_ids, figures)
        figures.dead_letters = len(await store.read_stream(WORKSPACE, "dead-letters"))
        head = await store.head(WORKSPACE)
        projected = await wait_projected(views, head, within=60)
        figures.elapsed = time.monotonic() - started
        print(figures.report())
        print(f"projector: view checkpoint {projected} of log head {head}")
        assert figures.runs == MEMORY_RUNS + FLAKY_RUNS
        assert figures.kills == KILLS and figures.restarts == 1
        assert not bad, f"{len(bad)} runs went wrong, e.g. {bad[:5]}\n{procs.logs()}"
        assert figures.dead_letters == 0, "a healthy command was taken for poison"
        assert projected == head, "the projector did not catch up after the restart"
    finally:
        procs.stop_all()
        with contextlib.suppress(Exception):
            await views.close()
        await store.close()
        await client.aclose()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


async def wait_projected(views: FalkorDBViews, head: int, within: float) -> int:
    """The projector's checkpoint once it reaches ``head`` (or where it stood at the deadline)."""
    deadline = time.monotonic() + within
    while True:
        checkpoint = await views.checkpoint(WORKSPACE)
        if checkpoint >= head or time.monotonic() > deadline:
            return checkpoint
        await asyncio.sleep(0.2)
