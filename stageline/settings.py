"""One Settings object, read from ``STAGELINE_*`` environment variables at entry points."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

WORKSPACE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
REDIS_SCHEMES = ("redis", "rediss", "unix")
HTTP_SCHEMES = ("http", "https")


def check_url(url: str, schemes: tuple[str, ...]) -> str:
    """``url`` if it has one of ``schemes`` and, but for ``unix``, a host and port that parse
    (a Redis URL's path, if any, a database number); ``ValueError`` saying what is wrong,
    with any password in it masked."""
    shown = repr(_PASSWORD.sub(r"\1***@", url))
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a port that is not a number, or out of range: ValueError)
    except ValueError as exc:
        raise ValueError(f"{shown} is not a URL ({exc})") from None
    if parts.scheme not in schemes:
        raise ValueError(f"{shown} must start with {', '.join(s + '://' for s in schemes)}")
    if parts.scheme == "unix" and not parts.path:
        raise ValueError(f"{shown} names no socket path")
    named_host = parts.scheme in HTTP_SCHEMES or (parts.scheme != "unix" and parts.netloc)
    if named_host and not parts.hostname:
        raise ValueError(f"{shown} names no host")
    database = parts.path.strip("/")
    if parts.scheme in ("redis", "rediss") and database and not database.isdigit():
        raise ValueError(f"{shown}: its path must be a database number, as in redis://host:6379/0")
    return url


_PASSWORD = re.compile(r"(//[^:@/]*:)[^@/]*@")


def _cpus() -> int:
    """The CPUs this process may run on (its affinity: ``taskset``, a cpuset; not a CPU quota)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Settings(BaseSettings):
    """Every knob of stageline, with a default that works on a laptop.

    Read once at an entry point (CLI command, app factory) and passed down;
    library code never reads the environment itself. An empty variable is an unset one.
    """

    # allow_inf_nan: a bound like ``ge=0`` alone lets ``inf`` through
    model_config = SettingsConfigDict(
        env_prefix="STAGELINE_", extra="ignore", env_ignore_empty=True, allow_inf_nan=False
    )

    redis_url: str | None = Field(
        default=None,
        description="The store: event log and FalkorDB views. Unset: start the embedded server.",
    )
    broker_url: str | None = Field(
        default=None, description="Redis for the stage channels. Defaults to the store's URL."
    )
    data_dir: Path = Field(
        default=Path(".stageline"), description="Where the embedded server keeps its data."
    )
    appendfsync: Literal["always", "everysec", "no"] = Field(
        default="everysec", description="AOF fsync policy of the embedded server."
    )
    workspace: str = Field(
        default="default",
        pattern=WORKSPACE_PATTERN,
        description="Workspace of requests without X-Workspace.",
    )
    batch_size: int = Field(default=200, ge=1, le=5000, description="Max commands per actor batch.")
    claim_idle_ms: int = Field(
        default=30_000,
        ge=100,
        description="Pending entries idle this long are claimed by another worker.",
    )
    # above the clients' 5 s socket timeout a blocking read would time out instead of returning
    poll_ms: int = Field(default=100, ge=1, le=2_000, description="Block time of channel reads.")
    max_deliveries: int = Field(
        default=5,
        ge=1,
        description="A command delivered more often than this (it kept crashing or failing its "
        "worker) is recorded as dead-lettered instead of handled again.",
    )
    supervise_seconds: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="How often a worker checks its consumer groups (recreating lost ones) and "
        "restarts stopped subscribers.",
    )
    drain_seconds: float = Field(
        default=15.0,
        gt=0,
        le=600,
        description="On SIGTERM/SIGINT a process exits within this long: batches in hand finish "
        "or stay pending for another worker.",
    )
    abandon_grace_seconds: float = Field(
        default=5.0,
        ge=0,
        description="An attempt with no result this long after its stage timeout is presumed "
        "lost with its worker, and retried.",
    )
    max_stage_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Caps every stage's timeout in this worker (and so how long a lost "
        "attempt waits before it is retried). Unset: each stage's own timeout.",
    )
    ingest: bool = Field(
        default=True,
        description="Workers consume the ingest channel (stageline:ingest on the broker): "
        "events published there are appended as POST /v1/streams/{stream}/events would.",
    )
    reconcile_after_seconds: float = Field(
        default=60.0,
        ge=1,
        description="An unfinished run with no new event for this long is nudged by the "
        "projector process, so a command lost in a crash never leaves a run waiting forever.",
    )
    promote_after_runs: int = Field(
        default=2,
        ge=1,
        description="A discovered pattern seen in this many distinct runs is promoted.",
    )
    confirm_after_mentions: int = Field(
        default=3,
        ge=1,
        description="A provisional entity type with this many live mentions is confirmed.",
    )
    projection_batch: int = Field(
        default=1000, ge=1, le=20_000, description="Events per projector write."
    )
    rebuild_workers: int = Field(
        default_factory=lambda: min(_cpus() + 1, 8),
        ge=0,
        le=64,
        description="Processes that fold a long rebuild's batches while the rebuilding process "
        "writes them (0: it folds them itself). Default: one more than the CPUs this process "
        "may use (each also waits on its reads), at most 8.",
    )
    read_wait_seconds: float = Field(
        default=5.0, ge=0, le=60, description="Longest a read waits for min_position."
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest accepted request body."
    )
    max_text_chars: int = Field(default=100_000, ge=1, description="Largest memory item text.")
    actors: str = Field(
        default="",
        description=(
            "Your own stage actors and pipelines: comma-separated `module:function` entries,"
            " each called once at start-up with (ActorRegistry, PipelineCatalog)."
        ),
    )
    log_level: str = Field(default="INFO")
    log_format: Literal["auto", "json", "console"] = Field(default="auto")

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, level: str) -> str:
        name = level.strip().upper()
        if name not in logging.getLevelNamesMapping():
            raise ValueError(
                f"unknown log level {level!r}; use DEBUG, INFO, WARNING, ERROR or CRITICAL"
            )
        return name

    @field_validator("redis_url", "broker_url")
    @classmethod
    def _redis_url(cls, url: str | None) -> str | None:
        return None if url is None else check_url(url, REDIS_SCHEMES)

    @property
    def effective_broker_url(self) -> str | None:
        return self.broker_url or self.redis_url


def describe(error: ValidationError) -> str:
    """One line naming each offending ``STAGELINE_*`` variable and what is wrong with it."""
    return "; ".join(
        f"STAGELINE_{'_'.join(map(str, e['loc'])).upper()}: {e['msg'].removeprefix('Value error, ')}"
        for e in error.errors()
    )
