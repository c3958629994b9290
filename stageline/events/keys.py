"""Every Redis key and channel name stageline uses, built in one place.

All keys of a workspace share the Redis Cluster hash tag ``{workspace}``, so
the atomic append script works on a cluster and a workspace is the unit of
sharding.
"""

from __future__ import annotations

import re

from stageline.errors import InvalidArgument

PREFIX = "stageline"
WORKSPACES = f"{PREFIX}:workspaces"
WORKSPACES_ADDED = f"{PREFIX}:workspaces:added"
"""Stream of ``w=<workspace>`` entries, one when a store first lists a workspace: a blocking
read of the logs (``tail``) wakes on it, so a new workspace is followed at once."""
WORKSPACES_ADDED_MAXLEN = 1000
SCHEDULED = f"{PREFIX}:scheduled"
"""Sorted set of delayed channel entries: member = channel NUL payload, score = due time."""

GLOBAL_WORKSPACE = "_global"
"""Where global patterns live: every workspace matches them. No client can name it (a
workspace name starts with a letter or digit); only the store and the ontology write it."""

_WORKSPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_STREAM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@=+-]{0,199}$")


def check_workspace(workspace: str, *, internal: bool = False) -> str:
    """``workspace`` if it is a valid name; ``internal`` also lets ``GLOBAL_WORKSPACE`` pass."""
    if workspace == GLOBAL_WORKSPACE:
        if internal:
            return workspace
        raise InvalidArgument(
            f"workspace {GLOBAL_WORKSPACE!r} is reserved: global patterns live there, and "
            "only the ontology writes it",
            workspace=workspace,
        )
    if not _WORKSPACE.fullmatch(workspace):  # match() lets a trailing "\n" through
        raise InvalidArgument(
            "workspace must be 1-64 characters of letters, digits, '_', '.', '-', "
            "starting with a letter or digit",
            workspace=workspace,
        )
    return workspace


def is_workspace(workspace: str, *, internal: bool = False) -> bool:
    """Whether ``check_workspace`` lets ``workspace`` pass."""
    return (internal and workspace == GLOBAL_WORKSPACE) or bool(_WORKSPACE.fullmatch(workspace))


def check_stream(stream: str) -> str:
    if not _STREAM.fullmatch(stream):
        raise InvalidArgument(
            "stream name must be 1-200 characters of letters, digits and _.:@=+-, "
            "starting with a letter or digit",
            stream=stream,
        )
    return stream


def log_key(workspace: str) -> str:
    """The workspace's global log: a Redis Stream whose entry ids are ``0-<position>``."""
    return f"{PREFIX}:{{{workspace}}}:log"


def stream_key(workspace: str, stream: str) -> str:
    """Per-stream hash: ``n`` (length), ``<version>`` -> position, ``i:<event id>`` -> version."""
    return f"{PREFIX}:{{{workspace}}}:s:{stream}"


IDEMPOTENCY_TTL_SECONDS = 24 * 3600
"""How long an append's ``Idempotency-Key`` stays bound to the request first sent with it."""


def held_key(workspace: str) -> str:
    """Hash of the workspace's held streams: ``<stream>`` -> the length it is held at (an
    imported run, which nothing drives while it has no event past those it was imported
    with)."""
    return f"{PREFIX}:{{{workspace}}}:held"


def idempotency_key(workspace: str, key: str) -> str:
    """The digest of the append request first sent with Idempotency-Key ``key``."""
    return f"{PREFIX}:{{{workspace}}}:idem:{key}"


def graph_name(workspace: str) -> str:
    """The FalkorDB graph holding the workspace's read models."""
    return f"{PREFIX}:{{{workspace}}}:views"


def checkpoints_channel(workspace: str) -> str:
    """The pub/sub channel on which the projector says how far the workspace's views moved."""
    return f"{PREFIX}:{{{workspace}}}:checkpoints"


def stage_channel(actor: str) -> str:
    """The Redis Stream an actor's commands arrive on."""
    return f"{PREFIX}:actor:{actor}"


def stage_group(actor: str) -> str:
    return f"{PREFIX}:actor:{actor}"


INGEST_CHANNEL = f"{PREFIX}:ingest"
"""The ingest channel: a Redis Stream on the broker that publishers ``XADD`` events to
(``stageline.actors.ingest`` describes its entries). One channel for every workspace, each
entry naming its own, like the stage channels: it is no key of the append script (it needs
no ``{workspace}`` tag), and one subscriber per worker reads it however many workspaces
there are, a new one included, where a channel per workspace would need one per workspace,
found as they appear."""
INGEST_GROUP = f"{PREFIX}:ingest"
INGEST_ACTOR = "@ingest"
"""The ``actor`` of the ingest channel's dead letters: no registered actor may take it."""

RUN_STOPS_CHANNEL = f"{PREFIX}:runs:stopped"
"""The pub/sub channel on the broker on which a cancel or an undo says that a run stopped, so
that a worker running one of its attempts interrupts it (``stageline.actors.stops``). One
channel for every workspace, each notice naming its own: a worker runs any workspace's runs,
and cancels are rare enough that every worker hearing every one costs nothing."""


RUN_STREAM_PREFIX = "run-"


def run_stream(run_id: str) -> str:
    return f"{RUN_STREAM_PREFIX}{run_id}"


DEAD_LETTERS_STREAM = "dead-letters"
"""A workspace's poison commands: ``DeadLettered`` entries, and what closed them."""

ONTOLOGY_STREAM = "ontology"
"""A workspace's ontology: its types and patterns, and the evidence the rules count."""


def reactor_checkpoint(workspace: str, reactor: str) -> str:
    """The last log position a reactor (e.g. ``ontology``) has handled in ``workspace``."""
    return f"{PREFIX}:{{{workspace}}}:reactor:{reactor}"


PIPELINE_STREAM_PREFIX = "pipeline-"


def pipeline_stream(name: str) -> str:
    """The stream of a workspace's pipeline config ``name`` (its definitions and its deletion)."""
    return f"{PIPELINE_STREAM_PREFIX}{name}"


_OWN_STREAMS = {
    ONTOLOGY_STREAM: "POST /v1/ontology/patterns, DELETE /v1/ontology/patterns/{id} "
    "or POST /v1/ontology/import",
    DEAD_LETTERS_STREAM: "POST /v1/dlq/{id}/redrive or DELETE /v1/dlq/{id}",
}


def check_outside_stream(stream: str) -> str:
    """``stream`` if a publisher may append to it (HTTP, the ingest channel); ``InvalidArgument``
    naming the route to use for a stream stageline writes itself: a workspace's ontology, its
    dead letters and its pipeline configs. Their folds trust what is in them (a seed appended
    at ``NO_STREAM``, a config's version as its place in its stream), so an event from outside
    would corrupt them. ``stageline import`` restores them, through the store."""
    check_stream(stream)
    route = _OWN_STREAMS.get(stream)
    if route is None and stream.startswith(PIPELINE_STREAM_PREFIX):
        route = "POST /v1/pipelines, PUT or DELETE /v1/pipelines/{name}"
    if route is not None:
        raise InvalidArgument(
            f"stream {stream!r} is stageline's own and takes no events from outside: use {route}",
            stream=stream,
        )
    return stream
