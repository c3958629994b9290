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
SCHEDULED = f"{PREFIX}:scheduled"
"""Sorted set of delayed channel entries: member = channel NUL payload, score = due time."""

_WORKSPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_STREAM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@=+-]{0,199}$")


def check_workspace(workspace: str) -> str:
    if not _WORKSPACE.fullmatch(workspace):  # match() lets a trailing "\n" through
        raise InvalidArgument(
            "workspace must be 1-64 characters of letters, digits, '_', '.', '-'",
            workspace=workspace,
        )
    return workspace


def check_stream(stream: str) -> str:
    if not _STREAM.fullmatch(stream):
        raise InvalidArgument(
            "stream name must be 1-200 characters of letters, digits and _.:@=+-",
            stream=stream,
        )
    return stream


def log_key(workspace: str) -> str:
    """The workspace's global log: a Redis Stream whose entry ids are ``0-<position>``."""
    return f"{PREFIX}:{{{workspace}}}:log"


def stream_key(workspace: str, stream: str) -> str:
    """Per-stream hash: ``n`` (length), ``<version>`` -> position, ``i:<event id>`` -> version."""
    return f"{PREFIX}:{{{workspace}}}:s:{stream}"


def graph_name(workspace: str) -> str:
    """The FalkorDB graph holding the workspace's read models."""
    return f"{PREFIX}:{{{workspace}}}:views"


def stage_channel(actor: str) -> str:
    """The Redis Stream an actor's commands arrive on."""
    return f"{PREFIX}:actor:{actor}"


def stage_group(actor: str) -> str:
    return f"{PREFIX}:actor:{actor}"


def run_stream(run_id: str) -> str:
    return f"run-{run_id}"


PIPELINE_STREAM_PREFIX = "pipeline-"


def pipeline_stream(name: str) -> str:
    """The stream of a workspace's pipeline config ``name`` (its definitions and its deletion)."""
    return f"{PIPELINE_STREAM_PREFIX}{name}"
