"""results.json and the markdown tables: every figure, the ratios, the issue's targets."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.figures import Scenario, format_value


@dataclass(frozen=True)
class Target:
    scenario: str
    what: str
    figure: str | None = None  # a figure key; or
    ratio: str | None = None  # a ratio label
    at_least: float | None = None
    at_most: float | None = None
    unit: str = ""


TARGETS = [
    Target("append", "whole run per call, pipelined: >= 70k events/s",
           figure="stageline: whole run per call, pipelined (100 runs/round trip)", at_least=70_000, unit="events/s"),
    Target("append", "whole run per call, pipelined: >= 5x eventsourcing+SQLite",
           ratio="whole run per call, pipelined (100 runs/round trip): stageline / eventsourcing SQLite", at_least=5, unit="x"),
    Target("append", "whole run per call, pipelined: >= 0.8x bare Lua floor",
           ratio="whole run per call, pipelined (100 runs/round trip): stageline / bare Lua floor", at_least=0.8, unit="x"),
    Target("append", "whole run per call, sequential: >= 70k events/s",
           figure="stageline: whole run per call, sequential", at_least=70_000, unit="events/s"),
    Target("append", "whole run per call, sequential: >= 5x eventsourcing+SQLite",
           ratio="whole run per call, sequential: stageline / eventsourcing SQLite", at_least=5, unit="x"),
    Target("append", "whole run per call, sequential: >= 0.8x bare Lua floor",
           ratio="whole run per call, sequential: stageline / bare Lua floor", at_least=0.8, unit="x"),
    Target("append", "one event per call, pipelined: >= 0.8x bare Lua floor",
           ratio="one event per call, pipelined (1000 events/round trip): stageline / bare Lua floor", at_least=0.8, unit="x"),
    Target("live", "`stageline up`: >= 1,000 runs/s, every transition persisted and projected",
           figure="stageline (up): runs/s", at_least=1000, unit="runs/s"),
    Target("live", "worker + projector: >= 1,000 runs/s",
           figure="stageline (split): runs/s", at_least=1000, unit="runs/s"),
    Target("live", "`stageline up`: p99 submit-to-visible <= 100 ms at half load",
           figure="stageline (up): p99 submit-to-visible at half load", at_most=100, unit="ms"),
    Target("live", "worker + projector: p99 submit-to-visible <= 100 ms at half load",
           figure="stageline (split): p99 submit-to-visible at half load", at_most=100, unit="ms"),
    Target("rebuild", "live-shaped log: >= 100k events/s into FalkorDB",
           figure="stageline: Projector.rebuild, log shaped like a live one", at_least=100_000, unit="events/s"),
    Target("rebuild", "runs one after another: >= 100k events/s into FalkorDB",
           figure="stageline: Projector.rebuild, runs one after another", at_least=100_000, unit="events/s"),
    Target("reads", "GET /v1/runs/{id}: p99 <= 5 ms at 500 req/s",
           figure="stageline API (uvicorn, one process): GET /v1/runs/{id}: p99 at 500 req/s", at_most=5, unit="ms"),
    Target("footprint", "worker RSS <= 150 MB",
           figure="`stageline worker`: peak RSS during the live pipeline", at_most=150, unit="MB"),
    Target("footprint", "<= 400 bytes of Redis memory per event",
           figure="stageline store: Redis memory per event (log + stream index)", at_most=400, unit="bytes"),
]  # fmt: skip


def evaluate(scenarios: dict[str, Scenario]) -> list[dict[str, Any]]:
    out = []
    for t in TARGETS:
        s = scenarios.get(t.scenario)
        if s is None:
            continue
        value: float | None = None
        if t.figure is not None and t.figure in s.figures and s.figures[t.figure].samples:
            value = s.figures[t.figure].median
        elif t.ratio is not None:
            for r in s.ratios:
                if r.label == t.ratio:
                    value = s.ratio_value(r)
        met = None
        if value is not None and not math.isnan(value):
            met = (t.at_least is None or value >= t.at_least) and (
                t.at_most is None or value <= t.at_most
            )
        out.append(
            {
                "scenario": t.scenario,
                "target": t.what,
                "measured": value,
                "unit": t.unit,
                "met": met,
            }
        )
    return out


def to_json(meta: dict[str, Any], scenarios: dict[str, Scenario]) -> dict[str, Any]:
    return {
        "meta": meta,
        "targets": evaluate(scenarios),
        "scenarios": {name: s.to_json() for name, s in scenarios.items()},
    }


def _cell(value: float | None, unit: str) -> str:
    return "-" if value is None else format_value(value, unit)


def markdown(meta: dict[str, Any], scenarios: dict[str, Scenario]) -> str:
    lines = ["# stageline benchmark results", ""]
    m = meta["machine"]
    lines += [
        f"{meta['finished_at']}; `{meta['command']}`; scale {meta['scale']}, "
        f"{meta['repeat']} repetitions after {meta['warmup']} warm-up.  ",
        f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gb']} GB RAM, "
        f"Python {m['python']}, {m['platform']}; redis-server {m.get('redis_version', '?')}, "
        f"FalkorDB module {m.get('falkordb_version', '?')}; "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "",
        "## Targets (issue 5)",
        "",
        "| scenario | target | measured (median) | met |",
        "|---|---|---:|:---:|",
    ]
    for t in evaluate(scenarios):
        met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
        lines.append(
            f"| {t['scenario']} | {t['target']} | {_cell(t['measured'], t['unit'])} | {met} |"
        )
    for i, s in enumerate(scenarios.values(), 1):
        lines += ["", f"## {i}. {s.title}", ""]
        if s.params:
            lines += [", ".join(f"{k}: {v}" for k, v in s.params.items()), ""]
        lines += ["| system | measure | median | min | max |", "|---|---|---:|---:|---:|"]
        for f in s.figures.values():
            lines.append(
                f"| {f.system} | {f.variant} | {format_value(f.median, f.unit)} | "
                f"{format_value(f.min, f.unit)} | {format_value(f.max, f.unit)} |"
            )
        if s.ratios:
            lines += ["", "| ratio (medians) | value |", "|---|---:|"]
            for r in s.ratios:
                value = s.ratio_value(r)
                lines.append(f"| {r.label} | {'-' if value is None else f'{value:.2f}x'} |")
        for note in s.notes:
            lines += ["", note]
    return "\n".join(lines) + "\n"


def write(out: Path, meta: dict[str, Any], scenarios: dict[str, Scenario]) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(to_json(meta, scenarios), indent=2) + "\n")
    text = markdown(meta, scenarios)
    out.with_suffix(".md").write_text(text)
    return text
