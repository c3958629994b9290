"""Runs stageline's long-lived services in this process until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable

import structlog
import uvicorn

from stageline.settings import Settings
from stageline.stack import Stack

log = structlog.get_logger(__name__)

DRAIN_SECONDS = 15.0


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
    then: Callable[[str | None], Awaitable[None]] | None = None,
) -> None:
    """Open the stack, start the chosen services, and stop them in order.

    Without ``then`` it runs until SIGINT/SIGTERM; with it, until ``then(api_url)`` returns.
    """
    stop = asyncio.Event()
    stop_on_signals(stop)
    stack = await Stack.open(settings, embedded=embedded)
    tasks: list[asyncio.Task[None]] = []
    server: uvicorn.Server | None = None
    the_worker = stack.worker() if worker else None
    try:
        if the_worker is not None:
            await the_worker.start()
        if projector:
            tasks.append(asyncio.create_task(stack.projector().run(stop), name="projector"))
        api_url = None
        if api is not None:
            from stageline.api.app import create_app

            host, port = api
            config = uvicorn.Config(
                create_app(stack=stack), host=host, port=port, log_config=None, access_log=False
            )
            server = uvicorn.Server(config)
            server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
            tasks.append(asyncio.create_task(server.serve(), name="api"))
            while not server.started:
                if tasks[-1].done():
                    await tasks[-1]  # raises why the API could not start (e.g. port in use)
                    raise RuntimeError("API server stopped during start-up")
                await asyncio.sleep(0.02)
            api_url = f"http://{host}:{port}"
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
        log.info("stageline.stopping")
    finally:
        stop.set()
        if server is not None:
            server.should_exit = True
        if the_worker is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(the_worker.stop(), DRAIN_SECONDS)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=DRAIN_SECONDS)
            for task in pending:
                task.cancel()
        await stack.close()
        log.info("stageline.stopped")
