"""The bundled redis-server + FalkorDB: start, stop, durability, ownership, orphans.

Every test runs real redis-server processes in its own short directory (unix
socket paths are limited to ~107 bytes) and kills whatever it started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from stageline.embedded import EmbeddedServer, FsyncPolicy, IdleChildren
from stageline.errors import Unavailable
from stageline.events import NO_STREAM, NewEvent
from stageline.events.redis_store import RedisEventStore


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sl", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def servers() -> Iterator[list[EmbeddedServer]]:
    """Servers a test starts: stopped afterwards whatever happened."""
    started: list[EmbeddedServer] = []
    yield started
    for srv in started:
        srv.stop()


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """Stray redis-server pids a test created on purpose: SIGKILLed afterwards if still there."""
    stray: list[int] = []
    yield stray
    for pid in stray:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def client(srv: EmbeddedServer) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(srv.socket), socket_timeout=5)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def config(srv: EmbeddedServer, name: str) -> str:
    with client(srv) as r:
        return r.config_get(name)[name]


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def start(servers: list[EmbeddedServer], data_dir: Path, **kw: FsyncPolicy) -> EmbeddedServer:
    srv = EmbeddedServer(data_dir, **kw)
    servers.append(srv)
    srv.start()
    return srv


def test_start_answers_ping_with_falkordb_loaded(
    servers: list[EmbeddedServer], data_dir: Path
) -> None:
    srv = start(servers, data_dir)

    assert srv.url == f"unix://{data_dir.resolve()}/redis.sock"
    assert srv.pid is not None and alive(srv.pid)
    with client(srv) as r:
        assert r.ping() is True
        modules = {m[b"name"] for m in r.module_list()}
        assert b"graph" in modules
        reply = r.execute_command("GRAPH.QUERY", "probe", "RETURN 40 + 2")
        assert reply[1] == [[42]]
    assert int(srv.pidfile.read_text()) == srv.pid


@pytest.mark.parametrize("policy", ["always", "everysec", "no"])
def test_aof_is_on_with_the_configured_fsync(
    servers: list[EmbeddedServer], data_dir: Path, policy: FsyncPolicy
) -> None:
    srv = start(servers, data_dir, appendfsync=policy)

    assert config(srv, "appendonly") == "yes"
    assert config(srv, "appendfsync") == policy
    assert config(srv, "save") == ""  # no RDB snapshots: the AOF is the durability story
    assert config(srv, "dir") == str(data_dir.resolve())
    assert (data_dir / "appendonlydir").is_dir()


def test_a_view_write_is_kept_as_its_effects_and_survives_a_crash(
    servers: list[EmbeddedServer], data_dir: Path
) -> None:
    """Replayed as a query, a write runs again when the AOF loads; as effects it is applied
    (118 MB of AOF, a workspace whose graph was created in it: 66 s against 1.3 s)."""
    srv = start(servers, data_dir)
    with client(srv) as r:
        r.execute_command("GRAPH.QUERY", "views", "CREATE INDEX FOR (r:Run) ON (r.id)")
        r.execute_command("GRAPH.QUERY", "views", "UNWIND range(1, 3) AS i CREATE (:Run {id: i})")
        r.execute_command("GRAPH.QUERY", "views", "MATCH (r:Run {id: 2}) SET r.status = 'done'")
    srv.kill()

    aof = b"".join(p.read_bytes() for p in (data_dir / "appendonlydir").glob("*.incr.aof"))
    assert b"GRAPH.EFFECT" in aof
    assert b"MATCH (r:Run" not in aof and b"UNWIND" not in aof
    srv.start()
    with client(srv) as r:
        reply = r.execute_command(
            "GRAPH.RO_QUERY", "views", "MATCH (r:Run) RETURN r.id, r.status ORDER BY r.id"
        )
    assert reply[1] == [[1, None], [2, b"done"], [3, None]]


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux only")
def test_the_child_of_an_aof_rewrite_runs_at_idle_priority(
    servers: list[EmbeddedServer], data_dir: Path
) -> None:
    srv = start(servers, data_dir)
    assert srv.pid is not None
    with client(srv) as r:
        r.mset({f"k{i}": i for i in range(50)})
        r.config_set("rdb-key-save-delay", 100_000)  # µs per key: the child lives for 5 s
        r.bgrewriteaof()
        children = Path(f"/proc/{srv.pid}/task/{srv.pid}/children")
        deadline = time.monotonic() + 5
        while not (pids := children.read_text().split()):
            assert time.monotonic() < deadline, "no rewrite child appeared"
            time.sleep(0.005)
        [child] = pids
        deadline = time.monotonic() + 2
        while os.sched_getscheduler(int(child)) != os.SCHED_IDLE:
            assert time.monotonic() < deadline, "the rewrite's child kept its priority"
            time.sleep(0.005)
        assert os.sched_getscheduler(srv.pid) != os.SCHED_IDLE  # the server keeps its own
        assert r.info("persistence")["aof_rewrite_in_progress"] == 1


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux only")
def test_idle_children_go_on_after_a_read_that_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    """An error other than the server being gone (e.g. no file descriptor left) must not
    leave every later child at the default priority."""
    failures = 2
    read_bytes = Path.read_bytes

    def flaky(path: Path) -> bytes:
        nonlocal failures
        if path.name == "children" and failures:
            failures -= 1
            raise OSError(24, "Too many open files")
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", flaky)
    parent = subprocess.Popen(["sh", "-c", "sleep 5 & wait"])
    watcher = IdleChildren(parent.pid)
    watcher.start()
    children: list[int] = []
    try:
        deadline = time.monotonic() + 5
        while True:
            with open(f"/proc/{parent.pid}/task/{parent.pid}/children") as f:
                children = [int(pid) for pid in f.read().split()]
            if children and os.sched_getscheduler(children[0]) == os.SCHED_IDLE:
                break
            assert time.monotonic() < deadline, "the child kept its priority"
            time.sleep(0.01)
        assert failures == 0 and watcher.is_alive()
    finally:
        watcher.stop()
        parent.kill()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        parent.wait()


def test_listens_on_the_unix_socket_only(servers: list[EmbeddedServer], data_dir: Path) -> None:
    srv = start(servers, data_dir)
    assert srv.pid is not None

    assert config(srv, "port") == "0"
    assert config(srv, "unixsocket") == str(srv.socket)
    mine = socket_inodes(srv.pid)
    listening_tcp = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in mine:  # 0A: LISTEN
                    listening_tcp.append(line)
    assert listening_tcp == []
    unix = [line.split() for line in Path("/proc/net/unix").read_text().splitlines()[1:]]
    assert any(cols[-1] == str(srv.socket) and cols[6] in mine for cols in unix if len(cols) > 7)


def test_stop_removes_socket_pidfile_and_process(
    servers: list[EmbeddedServer], data_dir: Path
) -> None:
    srv = start(servers, data_dir)
    pid = srv.pid
    assert pid is not None and srv.socket.exists() and srv.pidfile.exists()

    srv.stop()

    assert not alive(pid)
    assert not srv.socket.exists()
    assert not srv.pidfile.exists()
    assert srv.pid is None
    srv.stop()  # a second stop is harmless
    # and the directory is free for the next owner
    again = start(servers, data_dir)
    assert again.pid not in (None, pid)


def test_start_twice_keeps_the_running_server(
    servers: list[EmbeddedServer], data_dir: Path
) -> None:
    srv = start(servers, data_dir)
    pid = srv.pid
    assert srv.start() == srv.url
    assert srv.pid == pid and pid is not None and alive(pid)


def test_context_manager_starts_and_stops(data_dir: Path) -> None:
    with EmbeddedServer(data_dir) as srv:
        pid = srv.pid
        with client(srv) as r:
            assert r.ping()
    assert pid is not None and not alive(pid)
    assert not srv.socket.exists()


async def _append_and_read(url: str, workspace: str, events: list[NewEvent] | None) -> list:
    store = RedisEventStore.from_url(url)
    try:
        if events is not None:
            await store.append(workspace, "run-1", events, NO_STREAM)
        return await store.read_stream(workspace, "run-1")
    finally:
        await store.close()


async def test_data_survives_stop_and_start(servers: list[EmbeddedServer], data_dir: Path) -> None:
    events = [NewEvent(type="RunSubmitted", data={"i": i, "text": "ü" * i}) for i in range(50)]
    first = start(servers, data_dir)
    written = await _append_and_read(first.url, "ws", events)
    first.stop()

    second = start(servers, data_dir)
    assert second.pid != first.pid
    read = await _append_and_read(second.url, "ws", None)

    assert len(read) == 50
    assert read == written
    assert [e.event_id for e in read] == [e.event_id for e in events]


async def test_acknowledged_appends_survive_a_server_crash(
    servers: list[EmbeddedServer], data_dir: Path
) -> None:
    srv = start(servers, data_dir, appendfsync="everysec")
    written = await _append_and_read(srv.url, "ws", [NewEvent(type="A", data={"n": 1})])
    pid = srv.pid
    srv.kill()  # SIGKILL: no shutdown, socket and pid file left behind
    assert pid is not None and not alive(pid)
    assert srv.socket.exists() and srv.pidfile.exists()

    srv.start()  # same owner, stale socket and pid file

    assert await _append_and_read(srv.url, "ws", None) == written


def test_second_owner_of_a_directory_is_refused(
    servers: list[EmbeddedServer], data_dir: Path
) -> None:
    first = start(servers, data_dir)
    second = EmbeddedServer(data_dir)

    with pytest.raises(Unavailable) as info:
        second.start()

    message = str(info.value)
    assert "another stageline process owns" in message
    assert str(data_dir.resolve()) in message
    assert first.url in message  # tells the user how to reach the running server
    assert info.value.code == "UNAVAILABLE"
    assert second.pid is None
    second.stop()  # must not tear down the owner's socket or pid file
    assert first.socket.exists() and first.pidfile.exists()
    with client(first) as r:
        assert r.ping()


def test_orphan_whose_owner_let_go_is_replaced(
    servers: list[EmbeddedServer], data_dir: Path, pids: list[int]
) -> None:
    owner = start(servers, data_dir)
    with client(owner) as r:
        r.set("k", "from-orphan")
    orphan = owner._proc
    assert orphan is not None
    pids.append(orphan.pid)
    # the owner goes away without stopping its server: only the lock is released
    owner._proc = None
    owner._release_lock()
    threading.Thread(target=orphan.wait, daemon=True).start()  # reap it like init would

    successor = start(servers, data_dir)

    assert wait_gone(orphan.pid)
    assert successor.pid != orphan.pid
    with client(successor) as r:
        assert r.get("k") == b"from-orphan"  # the orphan was stopped cleanly (AOF flushed)
    assert int(successor.pidfile.read_text()) == successor.pid


def test_orphan_of_a_killed_owner_process_is_replaced(
    servers: list[EmbeddedServer], data_dir: Path, pids: list[int]
) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        import redis
        from stageline.embedded import EmbeddedServer
        srv = EmbeddedServer(sys.argv[1])
        srv.start()
        redis.Redis(unix_socket_path=str(srv.socket)).set("k", "v")
        print(srv.pid, flush=True)
        time.sleep(60)
        """
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script, str(data_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        orphan_pid = int(owner.stdout.readline())
        pids.append(orphan_pid)
    finally:
        owner.kill()  # SIGKILL: no cleanup, the server keeps running
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()
    assert alive(orphan_pid)
    assert (data_dir / "redis.sock").exists()

    successor = start(servers, data_dir)

    assert wait_gone(orphan_pid)
    assert successor.pid != orphan_pid
    with client(successor) as r:
        assert r.get("k") == b"v"


def test_stale_socket_and_pid_file_of_a_crashed_server(
    servers: list[EmbeddedServer], data_dir: Path
) -> None:
    crashed = start(servers, data_dir)
    crashed_pid = crashed.pid
    crashed.kill()  # server and owner both die: everything is left behind
    crashed._release_lock()
    assert crashed.socket.exists()
    assert int(crashed.pidfile.read_text()) == crashed_pid

    successor = start(servers, data_dir)

    assert successor.pid != crashed_pid
    assert int(successor.pidfile.read_text()) == successor.pid
    with client(successor) as r:
        assert r.ping()


def test_pid_file_naming_an_unrelated_process_kills_nothing(
    servers: list[EmbeddedServer], data_dir: Path, server: EmbeddedServer, pids: list[int]
) -> None:
    # a stale pid file whose pid now belongs to someone else: a sleeping process,
    # and another directory's redis-server (the session's shared server)
    sleeper = subprocess.Popen(["sleep", "30"])
    pids.append(sleeper.pid)
    try:
        for pid in (sleeper.pid, server.pid):
            assert pid is not None
            (data_dir / "redis.pid").write_text(f"{pid}\n")
            srv = start(servers, data_dir)
            assert alive(pid)
            srv.stop()
        assert sleeper.poll() is None
        with client(server) as r:
            assert r.ping()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_server_that_cannot_start_raises_unavailable(
    servers: list[EmbeddedServer], data_dir: Path
) -> None:
    bad = EmbeddedServer(data_dir, appendfsync="sometimes")  # type: ignore[arg-type]
    servers.append(bad)

    with pytest.raises(Unavailable, match="exited with 1"):
        bad.start()

    assert bad.pid is not None and not alive(bad.pid)
    good = start(servers, data_dir)  # the failed start let go of the directory
    with client(good) as r:
        assert r.ping()
