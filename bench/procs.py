"""Processes the suite starts: each one stopped by its own pid, its peak RSS measured."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

READY = "stageline.ready"


def bench_env(redis_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: no inherited STAGELINE_*, JSON logs, the bench's server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGELINE_")}
    env["STAGELINE_REDIS_URL"] = redis_url
    env["STAGELINE_LOG_FORMAT"] = "json"
    env["STAGELINE_DRAIN_SECONDS"] = "5"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class Child:
    """A child process whose output goes to a log file; stopped by its own pid."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], logdir: Path):
        self.name = name
        self.log = logdir / f"{name}.log"
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            env=dict(env),
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.pid = self.proc.pid
        self._sampler = RssSampler([self.pid])

    def wait_for_line(self, marker: str, timeout: float = 60.0) -> None:
        """Wait until the log holds ``marker`` (e.g. ``stageline.ready``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}"
                )
            if marker.encode() in self.log.read_bytes():
                return
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not log {marker!r} within {timeout}s:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def peak_rss_mb(self) -> float:
        """The kernel's high-water mark of this process's resident memory (VmHWM)."""
        return peak_rss_mb(self.pid)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cpu_seconds(pids: Mapping[str, int]) -> dict[str, float]:
    """The CPU time (user + system) each process has used so far, by name; NaN if it is gone."""
    out = {}
    for name, pid in pids.items():
        try:
            times = psutil.Process(pid).cpu_times()
            out[name] = times.user + times.system
        except psutil.Error:
            out[name] = float("nan")
    return out


async def run_module(
    module: str, params: Mapping[str, Any], env: Mapping[str, str], cwd: Path | None = None
) -> dict[str, Any]:
    """Run ``python -m module <params as JSON>`` to its end; the JSON of its last output line."""
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", module, json.dumps(params)],
        env=dict(env),
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def peak_rss_mb(pid: int) -> float:
    """VmHWM of ``pid`` in MB (NaN once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def rss_mb(pid: int) -> float:
    try:
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except psutil.Error:
        return float("nan")


class RssSampler:
    """Samples the RSS of some pids every ``interval`` seconds in a thread; keeps the peaks."""

    def __init__(self, pids: Sequence[int], interval: float = 0.1) -> None:
        self.pids = list(pids)
        self.interval = interval
        self.peaks: dict[int, float] = dict.fromkeys(self.pids, 0.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                value = rss_mb(pid)
                if value == value:
                    self.peaks[pid] = max(self.peaks[pid], value)
            self._stop.wait(self.interval)

    def stop(self) -> dict[int, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.peaks


def kill_quietly(children: Sequence[Child]) -> None:
    for child in children:
        with contextlib.suppress(Exception):
            child.stop()
