"""Runs stageline's long-lived services in this process until SIGINT or SIGTERM.

On the signal every service stops taking new work and gets
``STAGELINE_DRAIN_SECONDS`` in all to finish what it holds: a worker's batches
in hand complete (or stay pending for another worker's claimer), the projector
finishes its write, the API its requests. Whatever is still running then is
cancelled, so the process always exits within that bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import structlog
import uvicorn
from redis.exceptions import AuthenticationError, AuthorizationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stageline.actors.worker import Worker
from stageline.embedded import EmbeddedServer
from stageline.errors import Unavailable
from stageline.settings import Settings
from stageline.stack import Stack

log = structlog.get_logger(__name__)

T = TypeVar("T")

# redis-py raises these for a server that does not answer (its socket errors included);
# any other start-up failure (a file, a program, a module, a password the server refuses:
# redis-py's auth errors are ConnectionErrors too) would fail the same way again
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError)
_REFUSED = (AuthenticationError, AuthorizationError)
_MAX_RETRY_SECONDS = 5.0
SERVER_CHECK_SECONDS = 0.5
"""How often a process that started the embedded server looks whether it is still running."""


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGINT/SIGTERM instead of raising into whatever is running."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def serve(
    settings: Settings,
    *,
    worker: bool = True,
    projector: bool = True,
    api: tuple[str, int] | None = None,
    embedded: bool = True,
    then: Callable[[str | None], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """Open the stack, start the chosen services, and stop them in order.

    Without ``then`` it runs until SIGINT/SIGTERM; with it, until ``then(api_url)`` returns.
    A Redis that does not answer yet is waited for (until a signal), not a reason to exit;
    any other start-up failure is raised (a port the API cannot listen on, before anything
    starts: ``Unavailable`` naming it). If the embedded server it started exits, it
    stops everything and raises ``Unavailable`` saying so, for a supervisor to restart it.
    """
    # the API's port first: if it is taken, nothing was started that must be stopped
    listening = _listen(*api) if api is not None else None
    try:
        await _serve(settings, worker, projector, api, listening, embedded, then)
    finally:
        if listening is not None:
            listening.close()


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` for the API (uvicorn listens on it), or
    ``Unavailable`` saying why it cannot be (uvicorn exits the process, with a traceback)."""
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets that say so, and
    # without it a keep-alive client waits ~40 ms (delayed ACK) for every second response
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's own
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise Unavailable(f"port {host}:{port} is already in use") from exc
        raise Unavailable(f"the API cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


async def _serve(
    settings: Settings,
    worker: bool,
    projector: bool,
    api: tuple[str, int] | None,
    listening: socket.socket | None,
    embedded: bool,
    then: Callable[[str | None], Coroutine[Any, Any, None]] | None,
) -> None:
    stop = asyncio.Event()
    stop_on_signals(stop)
    stack = await _until_reachable("stack", lambda: Stack.open(settings, embedded=embedded), stop)
    if stack is None:
        return
    tasks: list[asyncio.Task[None]] = []
    server: uvicorn.Server | None = None
    the_worker: Worker | None = None
    died: list[str] = []
    # the services' share of the drain time; the rest is for closing the clients and the exit
    drain = max(settings.drain_seconds - 1.0, settings.drain_seconds * 0.75)
    try:
        if stack.server is not None:
            watch = _watch_server(stack.server, stop, died)
            tasks.append(asyncio.create_task(watch, name="embedded-server"))
        if worker:
            the_worker = await _start_worker(stack, stop)
            if the_worker is None:
                return
        if projector:
            tasks.append(asyncio.create_task(stack.projector().run(stop), name="projector"))
            tasks.append(asyncio.create_task(stack.reconciler().run(stop), name="reconciler"))
            reactor = stack.ontology_reactor()
            tasks.append(asyncio.create_task(reactor.run(stop), name="ontology-reactor"))
        api_url = None
        if api is not None and listening is not None:
            from stageline.api.app import create_app

            host, port = api
            # ``stop`` is set before the server is told to exit: open live feeds end first
            config = uvicorn.Config(
                create_app(stack=stack, stopping=stop),
                host=host,
                port=port,
                log_config=None,
                access_log=False,
            )
            # then uvicorn cancels the requests still running (the app answers them 503) and
            # ends its lifespan, within the drain and with the stack open; without it they ran
            # on until the loop's end cancelled them, each logged with a traceback
            # (uvicorn takes any number of seconds; it is typed int)
            config.timeout_graceful_shutdown = max(drain - 1.0, drain / 2)  # type: ignore[assignment]
            server = uvicorn.Server(config)
            # our handlers stop every service in order; uvicorn's own would replace them
            server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
            tasks.append(asyncio.create_task(server.serve([listening]), name="api"))
            while not server.started:
                if tasks[-1].done():
                    await tasks[-1]  # raises why the API could not start
                    raise RuntimeError("API server stopped during start-up")
                await asyncio.sleep(0.02)
            api_url = f"http://{host}:{port}"
        # what start-up built lives as long as the process: the oldest generation's
        # collections need not walk it again (one took 51 ms in `up` at half load; 1.5 ms now)
        gc.freeze()
        log.info(
            "stageline.ready",
            api=api_url,
            store=stack.store_url,
            broker=stack.broker_url,
            embedded=stack.server is not None,
        )
        if then is not None:
            waiter = asyncio.create_task(stop.wait())
            main = asyncio.create_task(then(api_url))
            await asyncio.wait({waiter, main}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if not main.done():
                main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await main  # re-raises what went wrong in it
        else:
            await stop.wait()
        log.info("stageline.stopping", drain_seconds=settings.drain_seconds)
    finally:
        stop.set()
        if server is not None:
            server.should_exit = True
        await _drain(the_worker, tasks, drain)
        await stack.close()
        log.info("stageline.stopped")
        if died:  # the cause of whatever else failed meanwhile
            raise Unavailable(died[0])


async def _watch_server(server: EmbeddedServer, stop: asyncio.Event, died: list[str]) -> None:
    """Until ``stop`` is set: if ``server`` exits, say why into ``died`` and set ``stop``.

    Without it, a process whose server was killed kept running, every read failing, and
    a supervisor never restarted it.
    """
    while not stop.is_set():
        exited = server.exited()
        if exited is not None:
            log.error("embedded.exited", error=exited)
            died.append(exited)
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SERVER_CHECK_SECONDS)


async def _start_worker(stack: Stack, stop: asyncio.Event) -> Worker | None:
    async def start() -> Worker:
        the_worker = stack.worker()
        try:
            await the_worker.start()
        except BaseException:
            await the_worker.client.aclose()
            raise
        return the_worker

    return await _until_reachable("worker", start, stop)


async def _until_reachable(
    what: str, attempt: Callable[[], Awaitable[T]], stop: asyncio.Event
) -> T | None:
    """``attempt()``, again while Redis is unreachable; None if ``stop`` is set first."""
    delay = 0.5
    while True:
        try:
            return await attempt()
        except _REFUSED as exc:  # waiting would not change the server's mind
            raise Unavailable(f"Redis refused stageline's credentials: {exc}") from exc
        except _UNREACHABLE as exc:
            log.warning(
                "stageline.redis_unreachable",
                starting=what,
                retry_in=delay,
                error=f"{type(exc).__name__}: {exc}",
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return None
        delay = min(delay * 2, _MAX_RETRY_SECONDS)


async def _drain(worker: Worker | None, tasks: list[asyncio.Task[None]], seconds: float) -> None:
    """Let the worker and the other services finish within ``seconds``; cancel the rest."""
    waiting = list(tasks)
    if worker is not None:
        waiting.append(asyncio.create_task(worker.stop(), name="worker"))
    if not waiting:
        return
    done, pending = await asyncio.wait(waiting, timeout=seconds)
    for task in pending:
        task.cancel()
    if pending:
        log.warning("stageline.drain_timeout", cancelled=sorted(t.get_name() for t in pending))
        await asyncio.wait(pending, timeout=1.0)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.error("stageline.stop_failed", service=task.get_name(), exc_info=task.exception())
