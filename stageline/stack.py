"""The composition root: builds store, views, actors and services from ``Settings``.

Entry points (CLI commands, the API app) open one ``Stack`` and hand its parts
down; nothing below this module reads settings or builds clients itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import importlib
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog

from stageline.actors import outside
from stageline.actors.builtin import default_actors
from stageline.actors.channels import CommandBus
from stageline.actors.deadletters import DeadLetters
from stageline.actors.decide import RunState
from stageline.actors.operations import RunOperations
from stageline.actors.pipeline import Pipeline, PipelineCatalog, validate
from stageline.actors.pipelines_store import PipelineConfigs
from stageline.actors.reconcile import Reconciler
from stageline.actors.stage import ActorRegistry
from stageline.actors.submit import Submitter
from stageline.actors.worker import Worker, WorkerConfig
from stageline.embedded import EmbeddedServer
from stageline.errors import InvalidArgument, NotFound
from stageline.events.coalesce import AppendCoalescer, Coalescer
from stageline.events.redis_store import Claim, RedisEventStore, connect
from stageline.ontology.model import Rules
from stageline.ontology.reactor import OntologyReactor
from stageline.ontology.store import OntologyStore
from stageline.projections.falkordb_views import FalkorDBViews
from stageline.projections.fold_pool import FoldPool
from stageline.projections.projector import Projector
from stageline.settings import Settings

log = structlog.get_logger(__name__)


@dataclass
class Stack:
    """Everything a stageline process talks to, opened once and closed once."""

    settings: Settings
    store_url: str
    broker_url: str
    store: RedisEventStore
    views: FalkorDBViews
    broker_client: aioredis.Redis
    catalog: PipelineCatalog
    pipelines: PipelineConfigs
    actors: ActorRegistry
    bus: CommandBus
    submitter: Submitter
    operations: RunOperations
    dead_letters: DeadLetters
    ontology: OntologyStore
    server: EmbeddedServer | None = None
    server_log_level: int = logging.INFO
    """The level ``server``'s start and stop are logged at: debug for the server a one-shot
    command started for itself (``share``), which the command says in one line of its own."""
    outside_appends: AppendCoalescer = dataclasses.field(init=False)
    """Appends from outside (``POST /v1/streams/{stream}/events``) to ``store``: those of
    concurrent requests go to it together (``outside.append_batch``)."""
    claims: Coalescer[Claim, bytes | Exception | None] = dataclasses.field(init=False)
    """Idempotency-Key claims (``store.claim_many``): those of concurrent requests go to
    ``store`` in one round trip."""

    def __post_init__(self) -> None:
        self.outside_appends = AppendCoalescer(functools.partial(outside.append_batch, self.store))
        self.claims = Coalescer(self.store.claim_many)

    @classmethod
    async def open(cls, settings: Settings, *, embedded: bool = True, share: bool = False) -> Stack:
        """Connect to ``settings.redis_url``, or start the embedded server when it is unset.

        With ``share``, an embedded server another process owns on the data directory
        (a ``stageline up``) is connected to instead of failing; ``server`` stays None.
        ``share`` is for one-shot commands: a server started for one is logged at debug.
        """
        server_log_level = logging.DEBUG if share else logging.INFO
        entries = [entry.strip() for entry in settings.actors.split(",") if entry.strip()]
        installs = [(entry, _installer(entry)) for entry in entries]
        server = None
        store_url = settings.redis_url
        if store_url is None:
            if not embedded:
                raise ValueError("STAGELINE_REDIS_URL is not set")
            server = EmbeddedServer(settings.data_dir, appendfsync=settings.appendfsync)
            owners = await asyncio.to_thread(server.owners_url) if share else None
            if owners is not None:
                store_url, server = owners, None
            else:
                store_url = await asyncio.to_thread(server.start)
                log.log(
                    server_log_level,
                    "embedded.started",
                    url=store_url,
                    data_dir=str(server.data_dir),
                )
        clients: list[aioredis.Redis] = []
        try:  # whatever fails from here (a bad URL, a bad install) leaves no server behind
            broker_url = settings.broker_url or store_url
            store = RedisEventStore.from_url(store_url)
            clients.append(store.client)
            broker_client = connect(broker_url)
            clients.append(broker_client)
            ontology = OntologyStore(store)
            actors = default_actors(ontology.view)
            catalog = PipelineCatalog()
            added: list[tuple[str, Pipeline]] = []
            for entry, install in installs:
                before = catalog.builtin_versions()
                try:
                    install(actors, catalog)
                except Exception as exc:  # whatever the user's install raised
                    raise InvalidArgument(
                        f"STAGELINE_ACTORS entry {entry!r}: install failed: {exc}"
                    ) from exc
                added += [
                    (entry, pipeline)
                    for key, pipeline in catalog.builtin_versions().items()
                    if before.get(key) is not pipeline
                ]
            # after every install: one entry's pipeline may use another entry's actor
            for entry, pipeline in added:
                _check_installed(entry, pipeline, actors.names())
        except BaseException:
            for client in clients:
                await client.aclose()
            if server is not None:
                await asyncio.to_thread(server.stop)
            raise
        pipelines = PipelineConfigs(store, actors.names, [p.name for p in catalog.builtins()])
        catalog.source = pipelines  # workspace configs: loaded from their streams, then cached
        bus = CommandBus(broker_client)
        return cls(
            settings=settings,
            store_url=store_url,
            broker_url=broker_url,
            store=store,
            views=FalkorDBViews.from_url(store_url),
            broker_client=broker_client,
            catalog=catalog,
            pipelines=pipelines,
            actors=actors,
            bus=bus,
            submitter=Submitter(store, catalog, bus),
            operations=RunOperations(store, catalog, actors, bus),
            dead_letters=DeadLetters(store, bus, actors.names),
            ontology=ontology,
            server=server,
            server_log_level=server_log_level,
        )

    def worker(self, consumer: str | None = None) -> Worker:
        s = self.settings
        config = WorkerConfig(
            batch_size=s.batch_size,
            claim_idle_ms=s.claim_idle_ms,
            poll_ms=s.poll_ms,
            abandon_grace_seconds=s.abandon_grace_seconds,
            max_deliveries=s.max_deliveries,
            supervise_seconds=s.supervise_seconds,
            drain_seconds=s.drain_seconds,
            max_stage_timeout_seconds=s.max_stage_timeout_seconds,
            workspace=s.workspace,
            ingest=s.ingest,
            max_body_bytes=s.max_body_bytes,
        )
        if consumer is not None:
            config = dataclasses.replace(config, consumer=consumer)
        return Worker(self.store, self.broker_url, self.catalog, self.actors, config)

    def projector(self) -> Projector:
        workers = self.settings.rebuild_workers
        pool = FoldPool(self.store_url, workers) if workers else None
        return Projector(
            self.store, self.views, batch_size=self.settings.projection_batch, fold_pool=pool
        )

    def ontology_reactor(self) -> OntologyReactor:
        """Applies the ontology's rules; runs beside the projector."""
        rules = Rules(
            promote_after_runs=self.settings.promote_after_runs,
            confirm_after_mentions=self.settings.confirm_after_mentions,
        )
        return OntologyReactor(self.store, self.store.client, rules)

    def reconciler(self) -> Reconciler:
        """Nudges runs left without a command; runs beside the projector (it needs the view)."""

        async def pipeline_of(workspace: str, state: RunState) -> Pipeline | None:
            if state.pipeline is None:
                return None
            try:
                return await self.catalog.resolve(workspace, state.pipeline, state.pipeline_version)
            except NotFound:
                return None

        return Reconciler(
            self.store,
            self.bus,
            self.views.stale_runs,
            pipeline_of,
            idle_seconds=self.settings.reconcile_after_seconds,
        )

    async def close(self) -> None:
        await self.views.close()
        await self.store.close()
        await self.broker_client.aclose()
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
            log.log(self.server_log_level, "embedded.stopped", data_dir=str(self.server.data_dir))


def _check_installed(entry: str, pipeline: Pipeline, actors: Collection[str]) -> None:
    """Refuse a pipeline a ``STAGELINE_ACTORS`` entry added that a config could not be.

    The checks are those of configs sent over HTTP (``validate``), plus a version
    of at least 1 (0 is the version of reported runs, which no worker drives).
    """
    try:
        validate(pipeline, actors)
        if isinstance(pipeline.version, bool) or not (
            isinstance(pipeline.version, int) and pipeline.version >= 1
        ):
            raise InvalidArgument("version must be an integer >= 1", field="version")
    except InvalidArgument as exc:
        raise InvalidArgument(
            f"STAGELINE_ACTORS entry {entry!r}: pipeline {pipeline.name!r} "
            f"version {pipeline.version!r}: {exc}"
        ) from exc


def _installer(entry: str) -> Callable[[ActorRegistry, PipelineCatalog], None]:
    """The function a ``STAGELINE_ACTORS`` entry (``module:function``) names."""
    module_name, _, name = entry.strip().partition(":")
    try:
        if not module_name or not name:
            raise ValueError("expected module:function")
        install = getattr(importlib.import_module(module_name), name)
        if not callable(install):
            raise TypeError(f"{name} is not a function")
    except Exception as exc:  # whatever importing the user's module raised
        raise InvalidArgument(f"STAGELINE_ACTORS entry {entry.strip()!r}: {exc}") from exc
    return install
