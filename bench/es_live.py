"""The eventsourcing peer of the live pipeline: a system of applications on SQLite.

``Runs`` (the writer application) records ``Run.Submitted``; five process
applications ``Stage1``..``Stage5``, each following the one before, record a
``StageWork`` aggregate's ``Started`` and ``Completed`` (the last also
``RunCompleted``): 12 events per run, as in stageline. ``Status`` follows all
six and folds every transition into a ``RunView`` aggregate: the run-status
view. Every application has its own SQLite file; the ``MultiThreadedRunner``
gives each follower a thread. A run is visible when ``Status`` has recorded
its ``RunView.Finished``.

Run as ``python -m bench.es_live '<json params>'``; prints one JSON line of results.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

from eventsourcing.application import AggregateNotFoundError, ProcessingEvent
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import Recording
from eventsourcing.system import Follower, Leader, MultiThreadedRunner, ProcessApplication, System

from bench.data import STAGES, TEXT
from bench.stats import percentiles


class LiveRun(Aggregate):
    @event("Submitted")
    def __init__(self, stages: list[str], input: dict[str, Any]) -> None:
        self.stages = stages
        self.input = input


class StageWork(Aggregate):
    @staticmethod
    def create_id(run_id: uuid.UUID, stage: str) -> uuid.UUID:
        return uuid.uuid5(run_id, stage)

    @event("Started")
    def __init__(self, run_id: uuid.UUID, stage: str, index: int, attempt: int) -> None:
        self.run_id = run_id
        self.stage = stage

    @event("Completed")
    def complete(self, run_id: uuid.UUID, stage: str, duration_ms: float) -> None:
        pass

    @event("RunCompleted")
    def complete_run(self, run_id: uuid.UUID) -> None:
        pass


class RunView(Aggregate):
    @staticmethod
    def create_id(run_id: uuid.UUID) -> uuid.UUID:
        return uuid.uuid5(run_id, "view")

    @event("Opened")
    def __init__(self, run_id: uuid.UUID) -> None:
        self.run_id = run_id
        self.status = "processing"
        self.stages: dict[str, str] = {}

    @event("StageChanged")
    def stage_changed(self, stage: str, status: str) -> None:
        self.stages[stage] = status

    @event("Finished")
    def finish(self, run_id: uuid.UUID) -> None:
        self.status = "completed"


class Runs(Leader[uuid.UUID]):
    def submit(self, i: int) -> uuid.UUID:
        run = LiveRun(list(STAGES), {"text": TEXT, "id": f"item-{i}"})
        self.save(run)
        return run.id


def noop() -> None:
    pass


class StageApp(ProcessApplication[uuid.UUID]):
    index: ClassVar[int] = 0

    @singledispatchmethod
    def policy(self, domain_event: Any, processing_event: ProcessingEvent[uuid.UUID]) -> None:
        run_id: uuid.UUID | None = None
        if self.index == 0 and isinstance(domain_event, LiveRun.Submitted):
            run_id = domain_event.originator_id
        elif self.index > 0 and isinstance(domain_event, StageWork.Completed):
            run_id = domain_event.run_id
        if run_id is None:
            return
        stage = STAGES[self.index]
        started = time.perf_counter()
        work = StageWork(run_id, stage, self.index, 1)
        noop()
        work.complete(run_id, stage, (time.perf_counter() - started) * 1000)
        if self.index == len(STAGES) - 1:
            work.complete_run(run_id)
        processing_event.collect_events(work)


STAGE_APPS: list[type[StageApp]] = [
    type(f"Stage{i + 1}", (StageApp,), {"index": i}) for i in range(len(STAGES))
]


class Status(Follower[uuid.UUID]):
    visible: ClassVar[dict[uuid.UUID, float]] = {}

    def _view(self, run_id: uuid.UUID) -> RunView:
        try:
            return self.repository.get(RunView.create_id(run_id))
        except AggregateNotFoundError:
            return RunView(run_id)

    @singledispatchmethod
    def policy(self, domain_event: Any, processing_event: ProcessingEvent[uuid.UUID]) -> None:
        if isinstance(domain_event, LiveRun.Submitted):
            view = self._view(domain_event.originator_id)
        elif isinstance(domain_event, StageWork.Started):
            view = self._view(domain_event.run_id)
            view.stage_changed(domain_event.stage, "active")
        elif isinstance(domain_event, StageWork.Completed):
            view = self._view(domain_event.run_id)
            view.stage_changed(domain_event.stage, "completed")
        elif isinstance(domain_event, StageWork.RunCompleted):
            view = self._view(domain_event.run_id)
            view.finish(domain_event.run_id)
        else:
            return
        processing_event.collect_events(view)

    def _notify(self, recordings: list[Recording[uuid.UUID]]) -> None:
        super()._notify(recordings)
        now = time.monotonic()
        for r in recordings:
            if isinstance(r.domain_event, RunView.Finished):
                Status.visible[r.domain_event.run_id] = now  # type: ignore[attr-defined]


SYSTEM = System(
    pipes=[
        [Runs, *STAGE_APPS],
        [Runs, Status],
        *([app, Status] for app in STAGE_APPS),
    ]
)


def env_for(root: Path) -> dict[str, str]:
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "STATUS_AGGREGATE_CACHE_MAXSIZE": "100000"}
    for cls in [Runs, *STAGE_APPS, Status]:
        env[f"{cls.name.upper()}_SQLITE_DBNAME"] = str(root / f"{cls.name}.sqlite")
    return env


class Live:
    """One fresh system (fresh SQLite files) per measurement."""

    def __init__(self, base: Path) -> None:
        self.root = Path(tempfile.mkdtemp(dir=base))
        self.runner = MultiThreadedRunner(SYSTEM, env=env_for(self.root))
        self.runner.start()
        self.runs = self.runner.get(Runs)
        Status.visible = {}

    def close(self) -> None:
        self.runner.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def wait(self, ids: list[uuid.UUID], timeout: float) -> dict[uuid.UUID, float]:
        deadline = time.monotonic() + timeout
        while True:
            if self.runner.has_errored.is_set():
                self.runner.reraise_thread_errors()
            seen = Status.visible
            if len(seen) >= len(ids) and all(i in seen for i in ids):
                return {i: seen[i] for i in ids}
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(ids) - len(seen)} of {len(ids)} runs not visible")
            time.sleep(0.005)


def throughput(base: Path, n: int, timeout: float) -> float:
    live = Live(base)
    try:
        started = time.monotonic()
        ids = [live.runs.submit(i) for i in range(n)]
        seen = live.wait(ids, timeout)
        return n / (max(seen.values()) - started)
    finally:
        live.close()


def latency(base: Path, rate: float, count: int, timeout: float) -> dict[str, float]:
    live = Live(base)
    try:
        submitted: dict[uuid.UUID, float] = {}
        start = time.monotonic()
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            at = time.monotonic()
            submitted[live.runs.submit(i)] = at
        seen = live.wait(list(submitted), timeout)
        return percentiles([(seen[i] - at) * 1000 for i, at in submitted.items()])
    finally:
        live.close()


def main(params: dict[str, Any]) -> dict[str, Any]:
    base = Path(params["root"])
    n, timeout = int(params["runs"]), float(params.get("timeout", 600))
    for _ in range(int(params["warmup"])):
        throughput(base, max(1, n // 5), timeout)
    samples = [throughput(base, n, timeout) for _ in range(int(params["repeat"]))]
    best = sorted(samples)[len(samples) // 2]
    rate = max(0.5 * best, 1.0)
    count = max(10, round(rate * float(params["latency_seconds"])))
    return {
        "runs_per_s": samples,
        "latency": {"rate": rate, "count": count, **latency(base, rate, count, timeout)},
    }


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))), flush=True)
