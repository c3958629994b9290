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
from click.testing import Result
from typer.testing import CliRunner

from stageline.cli import app as cli_app


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
        check_run_operations_from_the_cli(url)
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


def cli(url: str, *args: str) -> Result:
    """``stageline *args`` in this process, against the API at ``url`` over HTTP."""
    # wide, so that rich does not wrap ids in tables
    return CliRunner().invoke(cli_app, [*args, "--url", url, "-w", "ops"], env={"COLUMNS": "300"})


def failed_flaky_run(api: httpx.Client, **flaky: object) -> dict[str, str]:
    """Submit a ``flaky`` run that gives up; its id and its dead letter's id."""
    body = {"pipeline": "flaky", "input": {"text": "cli", "flaky": flaky}}
    run = api.post("/v1/runs", params={"wait": 30}, json=body).json()
    assert run["status"] == "failed", run
    head = api.get("/v1/log").json()["head"]
    listed = api.get("/v1/dlq", params={"min_position": head}).json()["dead_letters"]
    [entry] = [e for e in listed if e["run_id"] == run["id"]]
    return {"run": run["id"], "dead_letter": entry["id"]}


def check_run_operations_from_the_cli(url: str) -> None:
    """undo, retry, cancel and dlq list / redrive / discard, as a user types them."""
    with httpx.Client(base_url=url, headers={"X-Workspace": "ops"}, timeout=60) as api:
        retried = failed_flaky_run(api, fail_times=4)  # attempt 5, once redriven, succeeds
        discarded = failed_flaky_run(api, permanent=True)

        listed = cli(url, "dlq", "list")
        assert listed.exit_code == 0, listed.output
        assert retried["dead_letter"] in listed.output
        assert discarded["dead_letter"] in listed.output

        redrive = cli(url, "dlq", "redrive", retried["dead_letter"])
        assert redrive.exit_code == 0 and '"redriven"' in redrive.output, redrive.output
        for _ in range(600):  # poll until the view shows the redriven run completed
            status = api.get(f"/v1/runs/{retried['run']}").json()["status"]
            if status == "completed":
                break
            time.sleep(0.05)
        assert status == "completed"

    discard = cli(url, "dlq", "discard", discarded["dead_letter"], "--reason", "bad input")
    assert discard.exit_code == 0 and '"discarded"' in discard.output, discard.output
    closed = cli(url, "dlq", "discard", discarded["dead_letter"])
    assert closed.exit_code == 1 and "409 CONFLICT" in closed.output, closed.output

    for args in (["retry", retried["run"]], ["cancel", retried["run"], "--reason", "late"]):
        ended = cli(url, *args)
        assert ended.exit_code == 1 and "409 CONFLICT" in ended.output, ended.output
    undo = cli(url, "undo", retried["run"])
    assert undo.exit_code == 0 and '"compensated"' in undo.output, undo.output
    retry = cli(url, "retry", discarded["run"])  # its dead letter is closed; the run still failed
    assert retry.exit_code == 0 and '"processing"' in retry.output, retry.output
    missing = cli(url, "undo", "nope")
    assert missing.exit_code == 1 and "404 NOT_FOUND" in missing.output, missing.output


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
