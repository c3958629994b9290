"""``stageline up`` and ``stageline demo`` as a user runs them: real processes, real signals."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import pty
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import Result
from typer.testing import CliRunner

from stageline.actors.builtin.memory import EntityMentioned
from stageline.cli import app as cli_app
from stageline.cli import rebuilt_line
from stageline.embedded import EmbeddedServer
from stageline.events import new_event
from stageline.events.redis_store import RedisEventStore
from stageline.projections import NAMES, FalkorDBViews
from stageline.projections.projector import RebuildResult
from stageline.serve import _listen


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
    assert "Traceback" not in out and "CancelledError" not in out, out
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


def check_submit_from_the_cli(url: str) -> None:
    """``stageline submit``: a memory item's text, or a whole input as JSON (from stdin
    with ``-``), once only under an idempotency key; bad input exits 2 sending nothing."""
    text = cli(url, "submit", "Met Alice in Berlin", "--wait", "30")
    assert text.exit_code == 0, text.output
    run = json.loads(text.stdout)
    assert (run["pipeline"], run["status"]) == ("memory-ingest", "completed"), run

    piped = CliRunner().invoke(
        cli_app,
        [
            "submit",
            "--input",
            "-",
            "--wait",
            "0",
            "--idempotency-key",
            "k",
            "--url",
            url,
            "-w",
            "ops",
        ],
        input='{"text": "Met Bob", "source": "stdin"}',
    )
    again = cli(url, "submit", "other text", "--wait", "0", "--idempotency-key", "k")
    assert piped.exit_code == 0 and again.exit_code == 1, piped.output + again.output
    assert "reading the input" not in piped.stderr  # a pipe, not a terminal: nothing said
    accepted = json.loads(piped.stdout)
    assert accepted["deduplicated"] is False
    assert "Idempotency-Key was already used" in again.stderr  # the key names one request
    with httpx.Client(base_url=url, headers={"X-Workspace": "ops"}) as api:
        stored = api.get(f"/v1/runs/{accepted['run_id']}/events").json()["events"][0]
    assert stored["data"]["input"] == {"text": "Met Bob", "source": "stdin"}

    for args, says in (
        ([], "give TEXT or --input"),
        (["text", "--input", "{}"], "give TEXT or --input"),
        (["--input", "[1]"], "invalid --input: a JSON object is needed, not [1]"),
        (["--input", '{"a": 1, "a": 2}'], "invalid --input: the key 'a' is given twice"),
        (["--input", '{"a": NaN}'], "invalid --input: a is nan"),
        (["--input", '{"a": '], "invalid --input: Expecting value"),
        (["text", "--idempotency-key", "schlüssel"], "1-200 printable ASCII characters"),
        (["text", "--idempotency-key", ""], "1-200 printable ASCII characters"),
    ):
        refused = cli(url, "submit", *args)
        assert refused.exit_code == 2 and says in refused.stderr, (args, refused.output)
        assert refused.stdout == ""
    latin1 = CliRunner().invoke(cli_app, ["submit", "--input", "-", "--url", url], input=b"\xff")
    assert latin1.exit_code == 2 and "stdin is not UTF-8" in latin1.stderr, latin1.output


def failed_flaky_run(url: str, api: httpx.Client, **flaky: object) -> dict[str, str]:
    """Submit a ``flaky`` run that gives up, with ``stageline submit --input``; its id and
    its dead letter's id."""
    body = json.dumps({"text": "cli", "flaky": flaky})
    submitted = cli(url, "submit", "--pipeline", "flaky", "--input", body, "--wait", "30")
    assert submitted.exit_code == 0, submitted.output
    run = json.loads(submitted.stdout)
    assert run["status"] == "failed", run
    head = api.get("/v1/log").json()["head"]
    listed = api.get("/v1/dlq", params={"min_position": head}).json()["dead_letters"]
    [entry] = [e for e in listed if e["run_id"] == run["id"]]
    return {"run": run["id"], "dead_letter": entry["id"]}


def check_run_operations_from_the_cli(url: str) -> None:
    """undo, retry, cancel and dlq list / redrive / discard, as a user types them."""
    with httpx.Client(base_url=url, headers={"X-Workspace": "ops"}, timeout=60) as api:
        retried = failed_flaky_run(url, api, fail_times=4)  # attempt 5, once redriven, succeeds
        discarded = failed_flaky_run(url, api, permanent=True)

        listed = cli(url, "dlq", "list")
        assert listed.exit_code == 0, listed.output
        assert retried["dead_letter"] in listed.output
        assert discarded["dead_letter"] in listed.output
        assert "--cursor" not in listed.stderr  # one page holds them all
        pages = [cli(url, "dlq", "list", "--limit", "1")]  # newest first
        [more] = pages[0].stderr.splitlines()
        assert more.startswith("more: --cursor "), pages[0].output
        pages.append(cli(url, "dlq", "list", "--limit", "1", "--cursor", more.split()[-1]))
        assert discarded["dead_letter"] in pages[0].stdout
        assert retried["dead_letter"] not in pages[0].stdout
        assert retried["dead_letter"] in pages[1].stdout
        assert "--cursor" not in pages[1].stderr  # the last page

        first = cli(url, "runs", "--limit", "1", "--pipeline", "flaky")
        [more] = first.stderr.splitlines()
        second = cli(
            url, "runs", "--limit", "1", "--pipeline", "flaky", "--cursor", more.split()[-1]
        )
        assert discarded["run"] in first.stdout and retried["run"] in second.stdout
        assert second.stderr == "", second.output
        assert cli(url, "runs", "--pipeline", "memory-ingest").stdout.count("\n") == 1  # header

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
    assert closed.exit_code == 1 and "409 CONFLICT" in closed.stderr, closed.output
    assert closed.stdout == ""

    for args in (["retry", retried["run"]], ["cancel", retried["run"], "--reason", "late"]):
        ended = cli(url, *args)
        assert ended.exit_code == 1 and "409 CONFLICT" in ended.output, ended.output
    undo = cli(url, "undo", retried["run"])
    assert undo.exit_code == 0 and '"compensated"' in undo.output, undo.output
    retry = cli(url, "retry", discarded["run"])  # its dead letter is closed; the run still failed
    assert retry.exit_code == 0 and '"processing"' in retry.output, retry.output
    missing = cli(url, "undo", "nope")
    assert missing.exit_code == 1 and "404 NOT_FOUND" in missing.stderr, missing.output
    assert missing.stdout == ""
    check_submit_from_the_cli(url)


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
    assert "5 runs finished" in demo.stdout
    # notices and progress on stderr: stdout holds the results only
    for notice in ("starting an embedded stack", "waiting for the ontology to settle"):
        assert notice in demo.stderr and notice not in demo.stdout
    assert "submitted" not in demo.stdout  # the progress bars
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
    assert result.stdout == ""
    assert "STAGELINE_REDIS_URL" in result.stderr


def test_up_whose_server_is_killed_exits_saying_so(data_dir: Path) -> None:
    port = free_port()
    proc = start_up(data_dir, port)
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}")
        os.kill(int((data_dir / "redis.pid").read_text()), signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)  # it used to run on, every read failing
    finally:
        if proc.poll() is None:
            stop(proc, signal.SIGKILL)
    assert proc.returncode == 1, out
    said = [line for line in out.splitlines() if not line.startswith("{")]  # not a log line
    assert said[-1] == (
        f"error: embedded redis-server exited with -9 (SIGKILL); see {data_dir}/redis.log"
    ), out
    assert "stageline.stopped" in out  # in order, the drain included
    assert not (data_dir / "redis.sock").exists()


def test_a_request_outlasting_the_drain_is_answered_and_the_stop_is_clean(
    data_dir: Path,
) -> None:
    server = EmbeddedServer(data_dir / "srv")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **env_for(data_dir),
        "STAGELINE_REDIS_URL": server.start(),
        "STAGELINE_DRAIN_SECONDS": "2",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "stageline", "api", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    body = {"pipeline": "memory-ingest", "input": {"text": "Ada"}}
    try:
        wait_healthy(proc, url)
        first = httpx.post(f"{url}/v1/runs", json=body, timeout=30).json()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            # no worker and no projector: the run never ends, the view never moves, and
            # both requests would wait (30 s; STAGELINE_READ_WAIT_SECONDS, 5 s)
            submitting = pool.submit(
                httpx.post, f"{url}/v1/runs", params={"wait": 30}, json=body, timeout=30
            )
            reading = pool.submit(
                httpx.get,
                f"{url}{first['status_url']}",
                params={"min_position": first["position"]},
                timeout=30,
            )
            time.sleep(0.5)
            out = stop(proc)
            submitted, read = submitting.result(), reading.result()
    finally:
        if proc.poll() is None:
            stop(proc, signal.SIGKILL)
        server.stop()
    assert proc.returncode == 0, out
    # it used to run on past the drain, cancelled by the loop's end with two tracebacks
    assert "Traceback" not in out and "CancelledError" not in out, out
    # the run was recorded, only its wait was cut off: as a wait that ran out (it was a 503,
    # and a client submitting again had two runs)
    assert submitted.status_code == 202, submitted.text
    accepted = submitted.json()
    assert accepted["run"] is None and accepted["status_url"].endswith(accepted["run_id"])
    assert read.status_code == 503, read.text  # nothing done: retry
    assert read.json()["error"]["message"] == "the server is stopping; retry"


@pytest.mark.parametrize("command", ["up", "api"])
def test_a_port_in_use_exits_1_with_one_line_saying_so(
    data_dir: Path, redis_url: str, command: str
) -> None:
    env = env_for(data_dir)
    if command == "api":
        env["STAGELINE_REDIS_URL"] = redis_url
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "stageline", command, "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    # it exited 3 with uvicorn's SystemExit logged as a traceback (stageline.stop_failed)
    assert result.returncode == 1, result.stderr
    assert result.stderr == f"error: port 127.0.0.1:{port} is already in use\n"
    assert not (data_dir / "redis.pid").exists()  # `up` started no server (or stopped it)


async def test_the_apis_connections_send_responses_without_waiting_for_acks() -> None:
    # the API's own listening socket (bound before start-up) lost asyncio's TCP_NODELAY: a
    # keep-alive client then waited ~40 ms (delayed ACK) per response, 165 req/s at most
    listening = _listen("127.0.0.1", 0)
    nodelay: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Accepted(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            nodelay.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    server = await asyncio.get_running_loop().create_server(Accepted, sock=listening)
    async with server:
        _, writer = await asyncio.open_connection(*listening.getsockname())
        assert await asyncio.wait_for(nodelay, 5) != 0
        writer.close()


def test_a_start_up_failure_that_is_not_redis_exits_at_once_saying_why(data_dir: Path) -> None:
    not_a_dir = data_dir / "file"
    not_a_dir.write_text("")
    env = {**env_for(data_dir), "STAGELINE_DATA_DIR": str(not_a_dir / "data")}
    result = subprocess.run(
        [sys.executable, "-m", "stageline", "up", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,  # it used to retry forever, as if Redis were unreachable
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{not_a_dir}/data" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "redis_unreachable" not in result.stderr


def test_a_store_that_does_not_answer_yet_is_waited_for(data_dir: Path) -> None:
    env = {**env_for(data_dir), "STAGELINE_REDIS_URL": f"unix://{data_dir}/no.sock"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stageline", "worker"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(3)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert "stageline.redis_unreachable" in out


def test_a_server_refusing_the_credentials_is_not_waited_for(
    data_dir: Path, redis_url: str
) -> None:
    sep = "&" if "?" in redis_url else "?"
    env = {**env_for(data_dir), "STAGELINE_REDIS_URL": f"{redis_url}{sep}password=wrong"}
    result = subprocess.run(
        [sys.executable, "-m", "stageline", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,  # a refused password used to be waited for, forever
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    assert "refused stageline's credentials" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_an_installed_pipeline_that_could_never_run_stops_the_process_at_start(
    data_dir: Path,
) -> None:
    (data_dir / "my_stages.py").write_text(
        "from stageline.actors.pipeline import Pipeline, StageSpec\n"
        "def install(actors, catalog):\n"
        "    catalog.add(Pipeline(name='mine', stages=(StageSpec(name='a', actor='nobody'),)))\n"
    )
    env = {
        **env_for(data_dir),
        "PYTHONPATH": os.pathsep.join([str(data_dir), *sys.path]),
        "STAGELINE_REDIS_URL": f"unix://{data_dir}/no.sock",
        "STAGELINE_ACTORS": "my_stages:install",
    }
    result = subprocess.run(
        [sys.executable, "-m", "stageline", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,  # it used to start, and the pipeline's runs stayed `processing` for good
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert "STAGELINE_ACTORS entry 'my_stages:install': pipeline 'mine'" in line, line
    assert "unknown actor 'nobody'" in line, line


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"STAGELINE_LOG_LEVEL": "verbose"}, "STAGELINE_LOG_LEVEL: unknown log level 'verbose'"),
        ({"STAGELINE_BATCH_SIZE": "0"}, "STAGELINE_BATCH_SIZE: Input should be greater than"),
        (
            {"STAGELINE_ABANDON_GRACE_SECONDS": "inf"},
            "STAGELINE_ABANDON_GRACE_SECONDS: Input should be a finite number",
        ),
        # empty is unset, as everywhere: a worker needs a store URL
        ({"STAGELINE_REDIS_URL": ""}, "worker needs STAGELINE_REDIS_URL"),
        ({"STAGELINE_REDIS_URL": "http://nope"}, "STAGELINE_REDIS_URL: 'http://nope' must"),
        ({"STAGELINE_REDIS_URL": "redis://h:notaport/0"}, "STAGELINE_REDIS_URL: 'redis://h:notap"),
        ({"STAGELINE_BROKER_URL": "redis://[::1"}, "STAGELINE_BROKER_URL: 'redis://[::1' is"),
    ],
)
def test_a_bad_setting_exits_2_with_one_line_saying_which(env: dict[str, str], says: str) -> None:
    result = CliRunner().invoke(cli_app, ["worker"], env={"COLUMNS": "300", **env})
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert says in line, line


@pytest.mark.parametrize(
    ("argv", "command", "error"),
    [
        (["replay"], "replay", "Error: Missing argument 'log'."),
        (["tail", "--bogus"], "tail", "Error: No such option: --bogus"),
        (["dlq", "list", "--limit", "x"], "dlq list", "Error: Invalid value for '--limit': "),
    ],
)
def test_a_usage_error_is_the_usage_line_and_one_error_line(
    argv: list[str], command: str, error: str
) -> None:
    result = CliRunner().invoke(cli_app, argv, prog_name="stageline", env={"COLUMNS": "40"})
    assert (result.exit_code, result.stdout) == (2, ""), result.output
    usage, hint, blank, said = result.stderr.splitlines()
    assert usage.startswith(f"Usage: stageline {command} [OPTIONS]"), usage
    assert hint == f"Try 'stageline {command} --help' for help."
    assert blank == "" and said.startswith(error), said  # one line, however narrow


def test_a_usage_error_on_a_terminal_is_plain_text_too() -> None:
    import pty

    leader, follower = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "stageline", "tail", "--bogus"],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={k: v for k, v in os.environ.items() if k not in ("COLUMNS", "NO_COLOR")},
    ) as proc:
        os.close(follower)
        said = b""
        with contextlib.suppress(OSError):  # EIO once the process closed the terminal
            while chunk := os.read(leader, 4096):
                said += chunk
    os.close(leader)
    assert proc.returncode == 2
    assert said.decode().splitlines() == [
        "Usage: python -m stageline tail [OPTIONS]",
        "Try 'python -m stageline tail --help' for help.",
        "",
        "Error: No such option: --bogus",
    ]


@pytest.mark.parametrize("url", ["http://[::1", "127.0.0.1:8000", "http://"])
def test_a_bad_api_url_exits_2_with_one_line_saying_so(url: str) -> None:
    result = CliRunner().invoke(cli_app, ["runs"], env={"COLUMNS": "300", "STAGELINE_API_URL": url})
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"invalid --url/STAGELINE_API_URL: {url!r}"), line


def projections_cli(redis_url: str, *args: str) -> Result:
    """``stageline projections *args`` in this process, against the store at ``redis_url``."""
    env = {"STAGELINE_REDIS_URL": redis_url, "COLUMNS": "300"}
    return CliRunner().invoke(cli_app, ["projections", *args], env=env)


async def mentions_logged(redis_url: str, workspace: str, n: int) -> int:
    store = RedisEventStore.from_url(redis_url)
    try:
        for _ in range(n):
            mention = EntityMentioned(
                entity="Ada", entity_type="person", surface="Ada", start=0, end=3
            )
            await store.append(workspace, "notes-1", [new_event(mention)])
        return await store.head(workspace)
    finally:
        await store.close()


async def stored_view(
    redis_url: str, workspace: str
) -> tuple[dict[str, int], dict[str, Any] | None]:
    views = FalkorDBViews.from_url(redis_url)
    try:
        return await views.checkpoints(workspace), await views.entity(workspace, "person", "Ada")
    finally:
        await views.close()


def rebuilt_lines(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("rebuilt ")]


def test_a_rebuild_reports_the_view_up_to_the_head_and_what_a_running_projector_wrote() -> None:
    alone = RebuildResult("run_status", head=40_000, events=40_000, seconds=2.0)
    shared = RebuildResult("run_status", head=40_000, events=30_000, seconds=2.0)

    assert (
        rebuilt_line("w", alone)
        == "rebuilt run_status in w: 40000 events in 2.00s (20,000 events/s)"
    )
    assert rebuilt_line("w", shared) == (
        "rebuilt run_status in w: 40000 events in 2.00s (20,000 events/s);"
        " a projector running meanwhile wrote 10000 of them"
    )


def status_rows(output: str, workspace: str) -> dict[str, list[str]]:
    """Per projection, the cells of its row in the status table (tab-separated in a pipe)."""
    rows = {}
    for line in output.splitlines():
        cells = line.split("\t")
        if cells[0] == workspace:
            rows[cells[1]] = cells[2:]
    return rows


def test_projections_are_rebuilt_one_or_all_and_show_their_lag(
    redis_url: str, workspace: str
) -> None:
    head = asyncio.run(mentions_logged(redis_url, workspace, 3))

    before = projections_cli(redis_url, "status", "-w", workspace)
    rebuilt_all = projections_cli(redis_url, "rebuild", "-w", workspace)
    rebuilt_one = projections_cli(redis_url, "rebuild", "--projection", "entities", "-w", workspace)
    after = projections_cli(redis_url, "status", "-w", workspace)

    assert before.exit_code == 0, before.output
    assert status_rows(before.output, workspace) == {
        name: ["0", str(head), str(head)] for name in NAMES
    }
    assert rebuilt_all.exit_code == 0, rebuilt_all.output
    lines = rebuilt_lines(rebuilt_all)
    assert [line.split()[1] for line in lines] == list(NAMES)
    assert all(f"in {workspace}: {head} events" in line for line in lines)
    assert rebuilt_one.exit_code == 0, rebuilt_one.output
    [line] = rebuilt_lines(rebuilt_one)
    assert line.startswith(f"rebuilt entities in {workspace}: {head} events")
    assert status_rows(after.output, workspace) == {
        name: [str(head), str(head), "0"] for name in NAMES
    }
    checkpoints, ada = asyncio.run(stored_view(redis_url, workspace))
    assert checkpoints == dict.fromkeys(NAMES, head)
    assert ada is not None and ada["mentions"] == 3


def test_projection_status_shows_every_workspace_unless_one_is_named(
    redis_url: str, workspace: str
) -> None:
    asyncio.run(mentions_logged(redis_url, workspace, 1))
    env = {"STAGELINE_REDIS_URL": redis_url, "STAGELINE_WORKSPACE": "other", "COLUMNS": "300"}
    every = CliRunner().invoke(cli_app, ["projections", "status"], env=env)
    assert every.exit_code == 0, every.output
    assert set(status_rows(every.output, workspace)) == set(NAMES)


def test_rebuilding_an_unknown_projection_names_the_known_ones(redis_url: str) -> None:
    result = projections_cli(redis_url, "rebuild", "--projection", "nope")
    assert result.exit_code == 2
    assert "no projection named 'nope'" in result.output
    assert ", ".join(NAMES) in result.output.replace("\n", "")


def test_commands_run_with_the_tuned_garbage_collector() -> None:
    import gc

    from stageline import cli
    from stageline.gctune import GC_GEN0_THRESHOLD

    before = gc.get_threshold()

    async def threshold() -> tuple[int, int, int]:
        return gc.get_threshold()

    try:
        gc.set_threshold(700)  # Python's default (an earlier command here may have tuned it)
        assert cli._run(threshold())[0] == GC_GEN0_THRESHOLD
    finally:
        gc.set_threshold(*before)


def store_cli(data_dir: Path, *args: str) -> Result:
    """``stageline *args`` in this process without STAGELINE_REDIS_URL, on ``data_dir``."""
    env = {"STAGELINE_REDIS_URL": None, "STAGELINE_DATA_DIR": str(data_dir), "COLUMNS": "300"}
    return CliRunner().invoke(cli_app, list(args), env=env)


def said(result: Result) -> list[str]:
    """The lines on stderr that are not log lines (nor blank)."""
    return [line for line in result.stderr.splitlines() if line.strip() and line[0] != "{"]


def test_store_commands_use_the_server_an_up_runs_on_the_data_dir(
    data_dir: Path, workspace: str
) -> None:
    owner = EmbeddedServer(data_dir)  # as `stageline up` holds it: another owner is refused
    asyncio.run(mentions_logged(owner.start(), workspace, 2))
    event = {
        "event_id": str(uuid.uuid4()), "type": "Noted", "schema_version": 1,
        "stream": "notes-2", "version": 0, "position": 1, "workspace": "w",
        "occurred_at": "2026-11-23T10:00:00Z", "recorded_at": "2026-11-23T10:00:00Z",
        "correlation_id": None, "causation_id": None, "data": {"text": "t"},
    }  # fmt: skip
    log = data_dir / "log.jsonl"
    log.write_text(json.dumps(event) + "\n")
    try:
        status = store_cli(data_dir, "projections", "status", "-w", workspace)
        imported = store_cli(data_dir, "import", str(log), "-w", workspace)
        after = store_cli(data_dir, "projections", "status", "-w", workspace)
        socket_left = (data_dir / "redis.sock").exists()
    finally:
        owner.stop()
    # it used to exit 1: "another stageline process owns ..."
    assert status.exit_code == 0, status.output
    assert status_rows(status.stdout, workspace)["entities"] == ["0", "2", "2"]
    assert imported.exit_code == 0, imported.output
    assert imported.stdout.startswith(f"imported 1 events into {workspace}")
    assert status_rows(after.stdout, workspace)["entities"][1] == "3"  # the head
    assert said(status) == said(imported) == said(after) == []
    assert socket_left  # the owner's server was left running


def test_a_store_command_without_a_server_says_it_starts_the_embedded_one(
    data_dir: Path,
) -> None:
    result = store_cli(data_dir, "projections", "status")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["workspace\tprojection\tcheckpoint\thead\tlag"]
    assert said(result) == [
        f"no STAGELINE_REDIS_URL and no `stageline up` on {data_dir.resolve()}: "
        "started the embedded server there for this command"
    ]
    assert result.stderr.splitlines() == said(result)  # that line alone: no log lines
    assert not (data_dir / "redis.sock").exists()  # and stopped it


def test_submit_reading_stdin_from_a_terminal_says_so_first() -> None:
    """``--input -`` on a terminal waits for input, as ``cat`` does, but says so on stderr."""
    main, terminal = pty.openpty()
    try:
        nowhere = "http://127.0.0.1:9"  # nothing listens: exit 2 once it has read
        proc = subprocess.Popen(
            [sys.executable, "-m", "stageline", "submit", "--input", "-", "--url", nowhere],
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        os.write(main, b'{"text": "Met Bob"}\n\x04')  # then Ctrl-D, the terminal's end of input
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()  # by its own pid; a no-op once it has exited
    finally:
        os.close(main)
        os.close(terminal)
    assert proc.returncode == 2, out + err
    lines = err.decode().splitlines()
    assert lines[0] == "reading the input (a JSON object) from stdin; end it with Ctrl-D"
    assert "127.0.0.1:9" in err.decode()  # read whole, then sent: the API is not there
