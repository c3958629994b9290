"""A workspace's named pipeline configs, kept as events in the log.

Each config is the stream ``pipeline-<name>``. Every write validates the
definition against the registered actors first, decides from the folded
stream and appends with the stream's version as the expected version, so two
writers can never both think they made the same change. ``PipelineConfigs``
is also the ``PipelineSource`` behind ``PipelineCatalog``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import msgspec
import structlog

from stageline.actors.configs import (
    ConfigState,
    ConfigVersion,
    PipelineDefined,
    PipelineDeleted,
    defined,
    fold_config,
    stream_version_of,
)
from stageline.actors.pipeline import Pipeline, check_name, validate
from stageline.errors import ConcurrencyError, Conflict, InvalidArgument, NotFound
from stageline.events import keys
from stageline.events.envelope import new_event
from stageline.events.store import EventStore

__all__ = ["PipelineConfigs", "PipelineWrite"]

log = structlog.get_logger(__name__)

_ATTEMPTS = 5


class PipelineWrite(msgspec.Struct, frozen=True):
    """The outcome of a create, update or delete; ``position`` is where to read it at."""

    name: str
    version: int
    position: int
    changed: bool


class PipelineConfigs:
    """Creates, updates, deletes and reads the pipeline configs of every workspace.

    ``actors`` gives the names of the registered actors (a definition may only
    use those); ``builtins`` the names no workspace config may take.
    """

    def __init__(
        self,
        store: EventStore,
        actors: Callable[[], Collection[str]],
        builtins: Collection[str],
    ) -> None:
        self.store = store
        self.actors = actors
        self.builtins = frozenset(builtins)

    # -- reads --------------------------------------------------------------------

    async def definition(self, workspace: str, name: str, version: int | None) -> Pipeline | None:
        """Config ``name`` at ``version`` (None: the latest unless deleted), by one stream read."""
        if name in self.builtins or not _valid_name(name):
            return None
        stream = keys.pipeline_stream(name)
        if version is None:
            events = await self.store.read_stream(workspace, stream, backwards=True, limit=1)
        elif version < 1:
            return None
        else:
            at = stream_version_of(version)
            events = await self.store.read_stream(workspace, stream, from_version=at, limit=1)
            events = [e for e in events if e.version == at]
        pipeline = defined(events[0], name) if events else None
        if pipeline is None or (version is not None and pipeline.version != version):
            return None
        try:
            return validate(pipeline, self.actors())
        except InvalidArgument as exc:  # not written by us: an event appended by hand
            log.warning(
                "pipeline.invalid_definition",
                workspace=workspace,
                pipeline=name,
                version=pipeline.version,
                error=str(exc),
            )
            return None

    async def state(self, workspace: str, name: str) -> ConfigState:
        """The config as its whole stream tells it (configs are a few events each)."""
        check_name(name)
        events = await self.store.read_stream(workspace, keys.pipeline_stream(name))
        return fold_config(name, events)

    async def show(
        self, workspace: str, name: str, version: int | None = None
    ) -> tuple[ConfigVersion, ConfigState]:
        """A version of the config (default: the latest) and the config's state.

        ``NotFound`` if the config does not exist (or was deleted) and no
        ``version`` is asked for, or if it never had that version. A deleted
        config's versions stay readable: runs may still be using them.
        """
        state = await self.state(workspace, name)
        found = state.latest if version is None else state.versions.get(version)
        if found is None or (version is None and state.deleted):
            what = f"no pipeline {name!r}" + (f" version {version}" if version else "")
            raise NotFound(f"{what} in workspace {workspace!r}", pipeline=name, version=version)
        return found, state

    # -- writes -------------------------------------------------------------------

    async def create(
        self, workspace: str, pipeline: Pipeline, *, correlation_id: str | None = None
    ) -> PipelineWrite:
        """Define a new config (version 1, or the next one after a delete).

        ``InvalidArgument`` for an invalid definition, ``Conflict`` if a config
        or a built-in has that name. Nothing is appended on an error.
        """
        pipeline = self._checked(pipeline)

        def plan(state: ConfigState) -> PipelineDefined:
            if state.exists:
                raise Conflict(
                    f"pipeline {pipeline.name!r} already exists (version "
                    f"{state.latest.pipeline.version if state.latest else 0}); "
                    f"PUT /v1/pipelines/{pipeline.name} changes it",
                    pipeline=pipeline.name,
                )
            return PipelineDefined.of(pipeline, state.next_version)

        return await self._apply(workspace, pipeline.name, plan, correlation_id)

    async def update(
        self,
        workspace: str,
        pipeline: Pipeline,
        *,
        expected_version: int | None = None,
        correlation_id: str | None = None,
    ) -> PipelineWrite:
        """Define the next version of an existing config.

        With ``expected_version``, ``Conflict`` unless that is the current
        version. A definition equal to the current one appends nothing
        (``changed`` is False). ``NotFound`` if the config does not exist.
        """
        pipeline = self._checked(pipeline)

        def plan(state: ConfigState) -> PipelineDefined | None:
            current = self._current(state, expected_version)
            if msgspec.structs.replace(pipeline, version=current.version) == current:
                return None
            return PipelineDefined.of(pipeline, state.next_version)

        return await self._apply(workspace, pipeline.name, plan, correlation_id)

    async def delete(
        self,
        workspace: str,
        name: str,
        *,
        expected_version: int | None = None,
        reason: str = "",
        correlation_id: str | None = None,
    ) -> PipelineWrite:
        """Record ``PipelineDeleted``: new runs cannot use the config, running ones go on.

        ``Conflict`` for a built-in or when ``expected_version`` is not the
        current version; ``NotFound`` if the config does not exist.
        """
        self._writable(name)

        def plan(state: ConfigState) -> PipelineDeleted:
            current = self._current(state, expected_version)
            return PipelineDeleted(name=name, version=current.version, reason=reason)

        return await self._apply(workspace, name, plan, correlation_id)

    # -- helpers ------------------------------------------------------------------

    def _writable(self, name: str) -> None:
        check_name(name, field="name")
        if name in self.builtins:
            raise Conflict(
                f"{name!r} is a built-in pipeline: it cannot be created, changed or deleted",
                pipeline=name,
                builtin=True,
            )

    def _checked(self, pipeline: Pipeline) -> Pipeline:
        self._writable(pipeline.name)
        return validate(pipeline, self.actors())

    @staticmethod
    def _current(state: ConfigState, expected_version: int | None) -> Pipeline:
        if not state.exists or state.latest is None:
            raise NotFound(f"no pipeline {state.name!r}", pipeline=state.name)
        current = state.latest.pipeline
        if expected_version is not None and expected_version != current.version:
            raise Conflict(
                f"pipeline {state.name!r} is at version {current.version}, not {expected_version}",
                pipeline=state.name,
                expected_version=expected_version,
                actual_version=current.version,
            )
        return current

    async def _apply(
        self,
        workspace: str,
        name: str,
        plan: Callable[[ConfigState], PipelineDefined | PipelineDeleted | None],
        correlation_id: str | None,
    ) -> PipelineWrite:
        """Fold, plan, append at the folded version; on a clash fold again and re-plan."""
        stream = keys.pipeline_stream(name)
        for _ in range(_ATTEMPTS):
            state = await self.state(workspace, name)
            payload = plan(state)
            if payload is None:
                assert state.latest is not None
                return PipelineWrite(name, state.latest.pipeline.version, state.position, False)
            event = new_event(payload, correlation_id=correlation_id)
            try:
                result = await self.store.append(workspace, stream, [event], state.stream_version)
            except ConcurrencyError:
                continue  # someone else wrote in between: decide again on what they wrote
            log.info(
                "pipeline.recorded",
                workspace=workspace,
                pipeline=name,
                type=payload.topic,
                version=payload.version,
            )
            return PipelineWrite(name, payload.version, result.position, True)
        raise Conflict(f"pipeline {name!r} kept changing; try again", pipeline=name)


def _valid_name(name: str) -> bool:
    try:
        check_name(name)
    except InvalidArgument:
        return False
    return True
