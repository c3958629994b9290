"""``python -m bench``: run the scenarios, print the table, write results.json and results.md."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import append, footprint, live, reads, rebuild, report
from bench.context import Context
from bench.figures import Scenario
from bench.server import embedded
from stageline.events.redis_store import connect
from stageline.gctune import tune_gc
from stageline.logs import configure_logging

SCENARIOS: dict[str, Callable[[Context], Awaitable[Scenario]]] = {
    "append": append.run,
    "live": live.run,
    "rebuild": rebuild.run,
    "reads": reads.run,
    "footprint": footprint.run,
}
HERE = Path(__file__).resolve().parent


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="fraction of the full workload (1.0: 5,000 runs, 1M events, ...; 0.01 for a smoke run)",
    )
    p.add_argument(
        "--only",
        action="append",
        choices=sorted(SCENARIOS),
        help="run only this scenario (repeatable); default: all",
    )
    p.add_argument("--repeat", type=int, default=3, help="measured repetitions (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up rounds, not kept (default 1)")
    p.add_argument(
        "--out",
        type=Path,
        default=HERE / "results.json",
        help="results file; the markdown goes next to it with .md (default bench/results.json)",
    )
    p.add_argument(
        "--redis-url",
        help="use this Redis+FalkorDB instead of starting an embedded one (its other data "
        "is left alone, but live processes started by the bench follow every workspace)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p.parse_args(argv)


def machine() -> dict[str, Any]:
    model = "unknown"
    memory = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def server_versions(url: str) -> dict[str, str]:
    client = connect(url)
    try:
        info: Any = await client.info("server")
        modules: Any = await client.execute_command("MODULE", "LIST")
    finally:
        await client.aclose()
    out = {"redis_version": str(info.get("redis_version"))}
    for module in modules or []:
        fields = (
            module
            if isinstance(module, dict)
            else dict(zip(module[::2], module[1::2], strict=False))
        )
        name = fields.get(b"name", b"")
        if name in (b"graph", b"falkordb"):
            ver = int(fields.get(b"ver", 0))
            out["falkordb_version"] = f"{ver // 10000}.{ver // 100 % 100}.{ver % 100}"
    return out


def versions() -> dict[str, str]:
    out = {}
    for name in ("stageline", "eventsourcing", "faststream", "redis", "falkordb", "msgspec"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


async def run_all(
    args: argparse.Namespace, url: str, root: Path
) -> tuple[dict[str, Any], dict[str, Scenario], bool]:
    ctx = Context(
        url=url,
        root=root,
        scale=args.scale,
        repeat=args.repeat,
        warmup=args.warmup,
        quiet=args.quiet,
    )
    names = [n for n in SCENARIOS if not args.only or n in args.only]
    scenarios: dict[str, Scenario] = {}
    ok = True
    for name in names:
        ctx.log(f"== {name}")
        started = time.monotonic()
        try:
            scenario = await SCENARIOS[name](ctx)
        except Exception as exc:
            ok = False
            traceback.print_exc()
            scenario = Scenario(name, f"{name} (failed)")
            scenario.notes.append(f"FAILED: {type(exc).__name__}: {exc}")
        scenario.seconds = time.monotonic() - started
        scenarios[name] = scenario
    meta = {
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "scale": args.scale,
        "repeat": args.repeat,
        "warmup": args.warmup,
        "machine": {**machine(), **await server_versions(url)},
        "versions": versions(),
        "seconds": round(sum(s.seconds for s in scenarios.values()), 1),
    }
    return meta, scenarios, ok


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    configure_logging("WARNING", "json")
    tune_gc()  # as stageline's own processes do (the peers run here get it too)
    # SIGTERM unwinds like Ctrl-C: the processes and the server we started are stopped
    signal.signal(signal.SIGTERM, _interrupt)
    if args.redis_url:
        root = Path(tempfile.mkdtemp(prefix="slb-", dir="/tmp"))
        try:
            meta, scenarios, ok = asyncio.run(run_all(args, args.redis_url, root))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    else:
        with embedded() as (url, root):
            meta, scenarios, ok = asyncio.run(run_all(args, url, root))
    text = report.write(args.out, meta, scenarios)
    print(text)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}", file=sys.stderr)
    if not ok:
        raise SystemExit(1)
