"""``stageline up`` and ``stageline demo`` as a user runs them: real processes, real signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # short: the server's unix socket lives here and socket paths are limited to ~107 bytes
    with tempfile.TemporaryDirectory(prefix="slcli") as d:
        yield Path(d)


def env_for(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGELINE_")}
    env.update(STAGELINE_DATA_DIR=str(data_dir), STAGELINE_LOG_FORMAT="json")
    return env


def start_up(data_dir: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "stageline", "up", "--port", str(port)],
        env=env_for(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_healthy(proc: subprocess.Popen[str], url: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"stageline up exited early:\n{proc.stdout.read() if proc.stdout else ''}"
            )
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("stageline up did not become ready")


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> str:
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}").exists()
        and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    )


def test_up_serves_the_demo_then_stops_cleanly_and_starts_again(data_dir: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_up(data_dir, port)
    try:
        wait_healthy(proc, url)
        redis_pid = int((data_dir / "redis.pid").read_text())
        demo = subprocess.run(
            [sys.executable, "-m", "stageline", "demo", "--url", url, "--count", "12"],
            env=env_for(data_dir),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "12 runs finished" in demo.stdout
        runs = httpx.get(
            f"{url}/v1/runs", params={"limit": 50}, headers={"X-Workspace": "demo"}
        ).json()
        assert len(runs["runs"]) == 12
        assert {r["status"] for r in runs["runs"]} == {"completed"}
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert "stageline is up" in out and "unix://" in out
    assert not (data_dir / "redis.sock").exists()
    assert not (data_dir / "redis.pid").exists()
    assert not pid_alive(redis_pid)

    # the data survived, and nothing left behind blocks the next start
    proc = start_up(data_dir, port)
    try:
        wait_healthy(proc, url)
        runs = httpx.get(
            f"{url}/v1/runs", params={"limit": 50}, headers={"X-Workspace": "demo"}
        ).json()
        assert len(runs["runs"]) == 12
    finally:
        out = stop(proc, signal.SIGINT)
    assert proc.returncode == 0, out


def test_demo_without_a_running_api_starts_its_own_stack(data_dir: Path) -> None:
    demo = subprocess.run(
        [
            sys.executable,
            "-m",
            "stageline",
            "demo",
            "--url",
            f"http://127.0.0.1:{free_port()}",
            "--count",
            "5",
        ],
        env=env_for(data_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "starting an embedded stack" in demo.stdout
    assert "5 runs finished" in demo.stdout
    assert not (data_dir / "redis.sock").exists()


def test_worker_without_a_store_url_says_what_to_do(data_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stageline", "worker"],
        env=env_for(data_dir),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "STAGELINE_REDIS_URL" in result.stdout
