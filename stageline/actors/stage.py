"""What a stage actor is to the runtime: a named async function from item to result."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stageline.errors import InvalidArgument
from stageline.events import keys
from stageline.events.envelope import DomainEvent, RecordedEvent

MAX_ERROR_CHARS = 2000
"""A recorded error's text (a failed attempt's, a dead letter's) is cut to this many characters."""


@dataclass(frozen=True, slots=True)
class StageContext:
    """What a stage may know about the run it works for."""

    workspace: str
    run_id: str
    stage: str
    attempt: int
    params: Mapping[str, Any]
    correlation_id: str | None = None
    state: Any = None
    """What the actor's ``load`` hook returned for the workspace (None without one)."""


@dataclass(frozen=True, slots=True)
class StageResult:
    """A stage's output: the keys it adds to the item, its domain events, metadata for the view."""

    output: dict[str, Any] = field(default_factory=dict)
    events: list[DomainEvent] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


class StageError(Exception):
    """Raised by a stage to fail its attempt; ``permanent`` errors are never retried.

    ``events`` are effects the attempt had already caused: they are recorded
    with the failure so that they can be compensated.
    """

    def __init__(
        self, message: str, *, permanent: bool = False, events: list[DomainEvent] | None = None
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.events = events or []


class InvalidResult(InvalidArgument):
    """What a stage returned cannot be recorded as its result (e.g. a number JSON cannot
    carry in its output): its attempt fails for good, as the same code would return the
    same again."""


StageFn = Callable[[dict[str, Any], StageContext], StageResult | Awaitable[StageResult]]
Compensator = Callable[[Sequence[RecordedEvent]], list[DomainEvent]]
Loader = Callable[[str], Awaitable[Any]]
"""Workspace -> read-only state the actor decides with (e.g. the ontology's patterns)."""


class ActorRegistry:
    """Actor name -> stage function; the worker subscribes one channel per registered actor."""

    def __init__(self) -> None:
        self._actors: dict[str, StageFn] = {}
        self._compensators: dict[str, Compensator] = {}
        self._loaders: dict[str, Loader] = {}
        self._marked: set[str] = set()

    def register(
        self,
        name: str,
        fn: StageFn,
        *,
        compensate: Compensator | None = None,
        load: Loader | None = None,
        mark_start: bool | None = None,
    ) -> None:
        """Add an actor; ``compensate`` turns its recorded effects into compensating events,
        ``load`` gives it ``StageContext.state`` for the workspace before each call.

        ``mark_start`` records ``StageStarted`` in an append of its own before
        the stage runs: the run shows the stage running, and a duplicate
        command waits for the attempt instead of running the stage as well.
        Unmarked, ``StageStarted`` is appended with the result (one append,
        one round trip fewer), which suits short stages that may run twice: a
        duplicate runs the stage too, and only its append loses. The default
        marks coroutine functions, not plain ones: a plain function holds the
        event loop while it runs, so it must be short, and no timeout can stop
        it. Commands a worker may have died on (claimed ones) are always marked.

        A coroutine stage is interrupted when its timeout passes, its worker
        stops, or its run is cancelled or undone: it gets ``CancelledError`` at
        its next ``await``, and may clean up (``try``/``finally``) before letting
        it through; whatever it returns instead is discarded. Work it handed to a
        thread (``asyncio.to_thread``) runs on to its end, unawaited.
        """
        if name in self._actors:
            raise ValueError(f"actor {name!r} is already registered")
        if name == keys.INGEST_ACTOR:  # names the ingest channel's dead letters
            raise ValueError(f"actor name {name!r} is reserved")
        self._actors[name] = fn
        if mark_start is None:
            mark_start = _is_async(fn)
        if mark_start:
            self._marked.add(name)
        if compensate is not None:
            self._compensators[name] = compensate
        if load is not None:
            self._loaders[name] = load

    def has_state(self, name: str) -> bool:
        """Whether the actor has a ``load`` hook."""
        return name in self._loaders

    async def load(self, name: str, workspace: str) -> Any:
        """The actor's state for ``workspace``, None if it has no ``load`` hook."""
        loader = self._loaders.get(name)
        return None if loader is None else await loader(workspace)

    def compensator(self, name: str) -> Compensator | None:
        return self._compensators.get(name)

    def actor(self, name: str) -> Callable[[StageFn], StageFn]:
        """Decorator form of ``register``."""

        def deco(fn: StageFn) -> StageFn:
            self.register(name, fn)
            return fn

        return deco

    def __contains__(self, name: object) -> bool:
        return name in self._actors

    def names(self) -> set[str]:
        return set(self._actors)

    def marks_start(self, name: str) -> bool:
        """Whether the actor's attempts record ``StageStarted`` before they run."""
        return name in self._marked or name not in self._actors

    def function(self, name: str) -> StageFn:
        """The stage function registered as ``name``."""
        return self._actors[name]


def _is_async(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )
