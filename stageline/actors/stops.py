"""Stop notices: a run cancelled or undone interrupts the attempt a worker is running of it.

Once a cancel or an undo has recorded that a run stopped (``RunCancelled``,
``RunCompensated``), it publishes a notice on the broker's ``keys.RUN_STOPS_CHANNEL``.
Each worker listens to that channel and keeps, in ``Running``, the runs whose commands
it holds and the tasks running their attempts: a notice for one of them cancels those
tasks, so the stage gets ``CancelledError`` at its next ``await`` instead of running to
its end. The runtime then plans the attempt as interrupted; its append clashes with the
run's end and records nothing (``StageRuntime._plan``). A plain function holds the event
loop while it runs: nothing, a notice included, is heard until it returns.

Pub/sub is best effort: a notice published while a worker's subscription is down is
lost, and so is one that comes before the worker holds the command (which matters only
to a stage that runs before its start is recorded, ``mark_start=False``: a marked
stage's start clashes with the run's end, and it never begins). Nothing depends on the
notice: the attempt then runs to its end, and its result is discarded at the stage
boundary, as it is without notices. A notice never records anything by itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import msgspec
import redis.asyncio as aioredis
import structlog
from redis.exceptions import NoPermissionError, RedisError

from stageline.actors.commands import StageCommand
from stageline.events import keys

__all__ = ["PUBLISH_S", "Running", "StopListener", "StopNotice", "publish"]

log = structlog.get_logger(__name__)

PUBLISH_S = 1.0
"""Longest a cancel or an undo waits for the broker to take its notice: it is recorded
already, and the run stops at its next stage boundary without the notice."""
_READ_S = 0.5
"""How long one read of the subscription waits: how soon the listener sees its stop."""
_RETRY_S = 1.0


class StopNotice(msgspec.Struct, frozen=True):
    """A run of ``workspace`` stopped (cancelled or undone): its attempts in hand are moot."""

    workspace: str
    run_id: str


_encode = msgspec.json.encode
_decode = msgspec.json.Decoder(StopNotice).decode


async def publish(client: aioredis.Redis, workspace: str, run_id: str) -> bool:
    """Tell the workers that the run stopped; whether the broker took the notice.

    Best effort: the run's end is recorded, so a broker that fails or takes longer than
    ``PUBLISH_S`` costs one warning, and the attempt in hand runs on to the boundary.
    """
    try:
        async with asyncio.timeout(PUBLISH_S):
            await client.publish(keys.RUN_STOPS_CHANNEL, _encode(StopNotice(workspace, run_id)))
    except (RedisError, TimeoutError) as exc:
        log.warning(
            "run.stop_notice_failed",
            workspace=workspace,
            run_id=run_id,
            error=f"{type(exc).__name__}: {exc}",
        )
        return False
    return True


class Running:
    """The runs whose commands a worker holds, and the tasks running their attempts.

    A command is held for the whole of its batch (``hold`` before its start is appended,
    ``release`` once the batch is done), so a notice that comes between the start's
    append and the attempt's task is not lost: the attempt is not begun. A run stopped
    before its start was appended needs no notice: the append clashes with the run's end.
    """

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], dict[int, asyncio.Task[Any] | None]] = {}
        self._stopped: set[int] = set()

    def hold(self, commands: Iterable[StageCommand]) -> None:
        for c in commands:
            self._held.setdefault((c.workspace, c.run_id), {})[id(c)] = None

    def release(self, commands: Iterable[StageCommand]) -> None:
        for c in commands:
            key = (c.workspace, c.run_id)
            held = self._held.get(key)
            if held is not None:
                held.pop(id(c), None)
                if not held:
                    del self._held[key]
            self._stopped.discard(id(c))

    def started(self, command: StageCommand, task: asyncio.Task[Any]) -> None:
        """``task`` runs ``command``'s attempt: a notice for its run cancels it."""
        held = self._held.get((command.workspace, command.run_id))
        if held is not None and id(command) in held:
            held[id(command)] = task

    def stopped(self, command: StageCommand) -> bool:
        """Whether a notice said ``command``'s run stopped while it was held."""
        return id(command) in self._stopped

    def stop(self, workspace: str, run_id: str) -> int:
        """Mark the run's held commands stopped and cancel their attempts' tasks; how many
        were running. A run this worker holds nothing of is none of its business."""
        interrupted = 0
        for command_id, task in self._held.get((workspace, run_id), {}).items():
            self._stopped.add(command_id)
            if task is not None and not task.done():
                task.cancel()
                interrupted += 1
        return interrupted

    def __len__(self) -> int:
        return sum(map(len, self._held.values()))


class StopListener:
    """Reads the stop notices on the broker and hands each to ``running``, until stopped."""

    def __init__(self, client: aioredis.Redis, running: Running) -> None:
        self.client = client
        self.running = running

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until ``stop`` is set. A failing broker is logged once per outage; redis-py
        subscribes again as it reconnects, and notices published meanwhile are lost. A
        server that refuses the channel (an ACL without it) is logged once, and the
        listener ends: attempts of stopped runs run to their end, as without notices."""
        pubsub = self.client.pubsub()
        failing = False
        try:
            while not stop.is_set():
                try:
                    if not pubsub.subscribed:
                        await pubsub.subscribe(keys.RUN_STOPS_CHANNEL)
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=_READ_S
                    )
                except NoPermissionError as exc:
                    log.warning("worker.stop_notices_refused", error=str(exc))
                    return
                except (RedisError, OSError) as exc:
                    if not failing:
                        failing = True
                        log.warning(
                            "worker.stop_notices_unavailable", error=f"{type(exc).__name__}: {exc}"
                        )
                    await _sleep_unless(stop, _RETRY_S)
                    continue
                if failing:
                    failing = False
                    log.info("worker.stop_notices_resumed")
                if message is not None and message.get("type") == "message":
                    self.deliver(message["data"])
        finally:
            await pubsub.aclose()

    def deliver(self, data: bytes) -> None:
        """Interrupt the attempts in hand of the run ``data`` names."""
        try:
            notice = _decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("worker.stop_notice_unreadable")
            return
        interrupted = self.running.stop(notice.workspace, notice.run_id)
        if interrupted:
            log.info(
                "stage.interrupted",
                workspace=notice.workspace,
                run_id=notice.run_id,
                attempts=interrupted,
            )


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass
