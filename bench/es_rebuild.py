"""The eventsourcing side of the rebuild scenario, in its own process.

Its log (a million events as Python objects) must not share a heap with
stageline's rebuild: Python's collector walks every tracked object on a full
collection: with this log in the bench process, stageline's rebuild of 1M events
measured 17-21k events/s; alone, 28-38k.

Run as ``python -m bench.es_rebuild '{"runs": N, "warm_runs": n, "warmup": 1, "repeat": 3}'``;
prints one JSON line: the write rate and the rebuild rate of each repetition.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

from eventsourcing.projection import ProjectionRunner

from bench import data, es_model


class TimedView(es_model.RunStatusView):
    """Notes when the tracking record of the last event lands (no polling in the timing)."""

    def __init__(self) -> None:
        super().__init__()
        self.target = float("inf")
        self.done = threading.Event()
        self.done_at = 0.0

    def _insert_tracking(self, tracking: Any) -> None:
        super()._insert_tracking(tracking)
        if tracking.notification_id >= self.target:
            self.done_at = time.perf_counter()
            self.done.set()


def es_write(runs: int) -> tuple[type[es_model.SharedRuns], float]:
    """A fresh in-memory log holding ``runs`` runs: its application class and events/s."""
    cls = es_model.shared_runs_class()
    app = cls(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    started = time.perf_counter()
    for start in range(0, runs, 1000):
        es_model.save_runs(
            app, [es_model.completed_run(i) for i in range(start, min(start + 1000, runs))]
        )
    return cls, runs * data.EVENTS_PER_RUN / (time.perf_counter() - started)


def es_rebuild(cls: type[es_model.SharedRuns], runs: int) -> float:
    """Fold the log into a fresh in-memory view with the projection runner; events/s."""
    last = cls(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}).recorder.max_notification_id()
    started = time.perf_counter()
    runner = ProjectionRunner(
        application_class=cls,
        projection_class=es_model.RunStatusProjection,
        view_class=TimedView,
        env={"PERSISTENCE_MODULE": "eventsourcing.popo"},
    )
    with runner:
        view = runner.view
        view.target = last
        if view.has_tracking_id(runner.app_name, last):
            view.done_at = time.perf_counter()
            view.done.set()
        if not view.done.wait(timeout=600):
            raise TimeoutError("eventsourcing projection runner did not finish")
        completed = view.counts["completed"]
    if completed != runs:
        raise RuntimeError(f"eventsourcing view shows {completed} completed runs of {runs}")
    return last / (view.done_at - started)


def main(params: dict[str, Any]) -> dict[str, Any]:
    runs, warm_runs = int(params["runs"]), int(params["warm_runs"])
    log, write_rate = es_write(runs)
    warm_log, _ = es_write(warm_runs)
    for _ in range(int(params["warmup"])):
        es_rebuild(warm_log, warm_runs)
    samples = [es_rebuild(log, runs) for _ in range(int(params["repeat"]))]
    return {"write_events_per_s": write_rate, "events_per_s": samples}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))), flush=True)
