"""Pipelines as data: ordered stages, each with its actor, params, timeout and retry policy."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Collection, Iterable
from typing import Any, Protocol

import msgspec

from stageline.errors import InvalidArgument, NotFound


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    max_retries: int = 0
    backoff_seconds: float = 1.0
    backoff_multiplier: float = 2.0
    max_backoff_seconds: float | None = None
    fallback: str | None = None  # None, "skip", or the name of another stage


class StageSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One step of a pipeline: which actor runs it, with which params."""

    name: str
    actor: str
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    timeout_seconds: float = 30.0
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)


class Pipeline(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    version: int = 1
    description: str = ""
    stages: tuple[StageSpec, ...] = ()

    def stage(self, index: int) -> StageSpec:
        return self.stages[index]

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]


NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
"""What pipeline and stage names look like: 1-64 of lowercase letters, digits, '_' and '-'."""
MAX_STAGES = 100

_NAME = re.compile(NAME_PATTERN)


def check_name(name: str, *, what: str = "pipeline name", **details: Any) -> str:
    """Raise ``InvalidArgument`` unless ``name`` matches ``NAME_PATTERN``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"{what} must be 1-64 characters of lowercase letters, digits, '_' and '-', "
            "starting with a letter or digit",
            **details,
            name=name,
        )
    return name


def validate(pipeline: Pipeline, actors: Collection[str]) -> Pipeline:
    """Raise ``InvalidArgument`` for a pipeline that could never run as intended.

    Checks the name, that there are 1-100 stages with unique names, that each
    stage's actor is one of ``actors``, that timeouts and retry policies are
    sane (finite, non-negative, multiplier >= 1) and that a fallback is
    ``"skip"`` or a *later* stage (an earlier one would loop). ``details.field``
    names the offending field, as in ``stages[1].retry.fallback``.
    """
    check_name(pipeline.name, field="name")
    if not pipeline.stages:
        raise InvalidArgument(
            "a pipeline needs at least one stage", pipeline=pipeline.name, field="stages"
        )
    if len(pipeline.stages) > MAX_STAGES:
        raise InvalidArgument(
            f"a pipeline has at most {MAX_STAGES} stages",
            pipeline=pipeline.name,
            field="stages",
        )
    names = pipeline.stage_names
    for i, spec in enumerate(pipeline.stages):
        at = f"stages[{i}]"
        check_name(spec.name, what="stage name", field=f"{at}.name")
        if spec.name == "skip":
            raise InvalidArgument(
                "'skip' is reserved (a fallback of 'skip' skips the stage)", field=f"{at}.name"
            )
        if names.index(spec.name) != i:
            raise InvalidArgument(
                f"stage names must be unique: {spec.name!r} is repeated",
                stage=spec.name,
                field=f"{at}.name",
            )
        if spec.actor not in actors:
            raise InvalidArgument(
                f"unknown actor {spec.actor!r}",
                stage=spec.name,
                field=f"{at}.actor",
                known=sorted(actors),
            )
        if not _positive(spec.timeout_seconds):
            raise InvalidArgument(
                "timeout_seconds must be a finite number > 0",
                stage=spec.name,
                field=f"{at}.timeout_seconds",
            )
        _check_retry(spec, i, names)
    return pipeline


def _positive(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _not_negative(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value >= 0


def _check_retry(spec: StageSpec, index: int, names: list[str]) -> None:
    policy, at = spec.retry, f"stages[{index}].retry"
    problems = {
        "max_retries": "must be an integer >= 0",
        "backoff_seconds": "must be a finite number >= 0",
        "backoff_multiplier": "must be a finite number >= 1",
        "max_backoff_seconds": "must be null or a finite number >= 0",
    }
    bad = None
    if isinstance(policy.max_retries, bool) or not (
        isinstance(policy.max_retries, int) and policy.max_retries >= 0
    ):
        bad = "max_retries"
    elif not _not_negative(policy.backoff_seconds):
        bad = "backoff_seconds"
    elif not (_not_negative(policy.backoff_multiplier) and policy.backoff_multiplier >= 1):
        bad = "backoff_multiplier"
    elif policy.max_backoff_seconds is not None and not _not_negative(policy.max_backoff_seconds):
        bad = "max_backoff_seconds"
    if bad is not None:
        raise InvalidArgument(f"retry.{bad} {problems[bad]}", stage=spec.name, field=f"{at}.{bad}")
    fallback = policy.fallback
    if fallback is None or fallback == "skip":
        return
    if fallback not in names[index + 1 :]:
        raise InvalidArgument(
            f"fallback {fallback!r} must be 'skip' or the name of a later stage",
            stage=spec.name,
            field=f"{at}.fallback",
        )


MEMORY_INGEST_V1 = Pipeline(
    name="memory-ingest",
    version=1,
    description="Normalize, classify, extract entity mentions and summarize a memory item.",
    stages=(
        StageSpec(name="normalize", actor="normalize"),
        StageSpec(name="classify", actor="classify"),
        StageSpec(name="extract", actor="extract"),
        StageSpec(name="summarize", actor="summarize", params={"max_words": 24}),
    ),
)
"""Kept so that runs started on version 1 finish on it."""

MEMORY_INGEST = Pipeline(
    name="memory-ingest",
    version=2,
    description=(
        "Normalize, classify, extract entity mentions with the workspace's patterns, "
        "discover candidate patterns for unknown names and summarize a memory item."
    ),
    stages=(
        StageSpec(name="normalize", actor="normalize"),
        StageSpec(name="classify", actor="classify"),
        StageSpec(name="extract", actor="extract"),
        StageSpec(name="discover", actor="discover"),
        StageSpec(name="summarize", actor="summarize", params={"max_words": 24}),
    ),
)


FLAKY = Pipeline(
    name="flaky",
    version=1,
    description=(
        "normalize, then a stage that fails on purpose (tune it per run with input.flaky: "
        "fail_times, permanent, sleep_seconds, effect), then summarize. Retries 3 times."
    ),
    stages=(
        StageSpec(name="normalize", actor="normalize"),
        StageSpec(
            name="flaky",
            actor="flaky",
            params={"fail_times": 1},
            timeout_seconds=5.0,
            retry=RetryPolicy(max_retries=3, backoff_seconds=0.2, backoff_multiplier=2.0),
        ),
        StageSpec(name="summarize", actor="summarize"),
    ),
)


class PipelineSource(Protocol):
    """Where a workspace's own pipeline configs come from (``pipelines_store.PipelineConfigs``)."""

    async def definition(self, workspace: str, name: str, version: int | None) -> Pipeline | None:
        """Config ``name`` at ``version`` (None: the latest, if not deleted); None if there is none."""
        ...


PipelineKey = tuple[str, str, int]
"""(workspace, name, version): what a stage command names its pipeline by."""


class PipelineCatalog:
    """Looks pipelines up by (workspace, name, version).

    Built-ins are in every workspace and read-only. A workspace's own configs
    come from ``source``; a definition at a version never changes (a new
    version is a new event, a delete leaves old versions readable), so every
    version loaded is cached for good and ``get`` is a dict lookup. ``get`` is
    synchronous and never does I/O: callers first ``prefetch`` (a batch of
    commands, concurrently) or ``resolve`` (one name; ``version=None`` reads
    the latest from the source every time, so a new version is seen at once).

    Async-safe without locks: the dicts are only changed between awaits, and
    two tasks loading the same version store equal, immutable values.
    """

    def __init__(
        self, pipelines: list[Pipeline] | None = None, *, source: PipelineSource | None = None
    ) -> None:
        self._builtin: dict[tuple[str, int], Pipeline] = {}
        self._latest: dict[str, Pipeline] = {}
        self._loaded: dict[PipelineKey, Pipeline] = {}
        self.source = source
        for p in pipelines if pipelines is not None else [MEMORY_INGEST_V1, MEMORY_INGEST, FLAKY]:
            self.add(p)

    def add(self, pipeline: Pipeline) -> None:
        """Add a built-in: present in every workspace, never changed through the API."""
        self._builtin[(pipeline.name, pipeline.version)] = pipeline
        latest = self._latest.get(pipeline.name)
        if latest is None or latest.version <= pipeline.version:
            self._latest[pipeline.name] = pipeline

    def is_builtin(self, name: str) -> bool:
        return name in self._latest

    def builtins(self) -> list[Pipeline]:
        """The latest version of every built-in, by name."""
        return [self._latest[name] for name in sorted(self._latest)]

    def builtin_versions(self) -> dict[tuple[str, int], Pipeline]:
        """Every version of every built-in, by (name, version)."""
        return dict(self._builtin)

    def get(self, workspace: str, name: str, version: int | None = None) -> Pipeline:
        """A built-in, or a workspace config version already loaded; ``NotFound`` otherwise.

        ``version=None`` finds built-ins only: a config's latest version needs ``resolve``.
        """
        if name in self._latest:
            found = self._latest[name] if version is None else self._builtin.get((name, version))
        elif version is None:
            found = None
        else:
            found = self._loaded.get((workspace, name, version))
        if found is None:
            raise NotFound(f"no pipeline {name!r}", pipeline=name, version=version)
        return found

    async def resolve(self, workspace: str, name: str, version: int | None = None) -> Pipeline:
        """Like ``get``, loading from the source on a miss; ``version=None``: the latest.

        The latest version of a workspace config is read from the source on every
        call (one read of the config's stream); a deleted config is ``NotFound``,
        though its versions stay resolvable by number.
        """
        if name in self._latest or (
            version is not None and (workspace, name, version) in self._loaded
        ):
            return self.get(workspace, name, version)
        found = await self._load(workspace, name, version)
        if found is None:
            raise NotFound(
                f"no pipeline {name!r}" + (f" version {version}" if version is not None else ""),
                pipeline=name,
                version=version,
            )
        return found

    async def prefetch(self, keys: Iterable[PipelineKey]) -> None:
        """Load every (workspace, name, version) not known yet, concurrently, so ``get`` finds it.

        Versions the source does not have stay missing: ``get`` then raises ``NotFound``.
        """
        if self.source is None:
            return
        missing = {key for key in keys if key[1] not in self._latest and key not in self._loaded}
        if missing:
            await asyncio.gather(*(self._load(*key) for key in missing))

    async def _load(self, workspace: str, name: str, version: int | None) -> Pipeline | None:
        if self.source is None:
            return None
        found = await self.source.definition(workspace, name, version)
        if found is None:
            return None
        # keep the first copy: equal anyway, and callers may key caches by identity
        return self._loaded.setdefault((workspace, found.name, found.version), found)

    def names(self, workspace: str) -> list[str]:
        """The built-ins' names (a workspace's own configs are listed by the pipelines view)."""
        return sorted(self._latest)
