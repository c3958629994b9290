"""What a stage actor is to the runtime: a named async function from item to result."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stageline.events.envelope import DomainEvent, RecordedEvent


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

    def register(
        self,
        name: str,
        fn: StageFn,
        *,
        compensate: Compensator | None = None,
        load: Loader | None = None,
    ) -> None:
        """Add an actor; ``compensate`` turns its recorded effects into compensating events,
        ``load`` gives it ``StageContext.state`` for the workspace before each call."""
        if name in self._actors:
            raise ValueError(f"actor {name!r} is already registered")
        self._actors[name] = fn
        if compensate is not None:
            self._compensators[name] = compensate
        if load is not None:
            self._loaders[name] = load

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

    async def call(self, name: str, item: dict[str, Any], ctx: StageContext) -> StageResult:
        result = self._actors[name](item, ctx)
        if inspect.isawaitable(result):
            result = await result
        return result
