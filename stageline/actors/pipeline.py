"""Pipelines as data: ordered stages, each with its actor, params, timeout and retry policy."""

from __future__ import annotations

from typing import Any

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


def validate(pipeline: Pipeline, actors: set[str]) -> Pipeline:
    """Raise ``InvalidArgument`` for a pipeline that could never run."""
    if not pipeline.stages:
        raise InvalidArgument("a pipeline needs at least one stage", pipeline=pipeline.name)
    names = pipeline.stage_names
    if len(set(names)) != len(names):
        raise InvalidArgument("stage names must be unique", pipeline=pipeline.name)
    for spec in pipeline.stages:
        if spec.actor not in actors:
            raise InvalidArgument(
                f"unknown actor {spec.actor!r}", stage=spec.name, known=sorted(actors)
            )
        if spec.timeout_seconds <= 0:
            raise InvalidArgument("timeout_seconds must be > 0", stage=spec.name)
        policy = spec.retry
        if policy.max_retries < 0 or policy.backoff_seconds < 0 or policy.backoff_multiplier < 1:
            raise InvalidArgument(
                "retry needs max_retries >= 0, backoff_seconds >= 0, backoff_multiplier >= 1",
                stage=spec.name,
            )
        if policy.fallback not in (None, "skip") and policy.fallback not in names:
            raise InvalidArgument(f"fallback {policy.fallback!r} is not a stage", stage=spec.name)
    return pipeline


MEMORY_INGEST = Pipeline(
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


class PipelineCatalog:
    """Looks pipelines up by (workspace, name, version); built-ins are in every workspace."""

    def __init__(self, pipelines: list[Pipeline] | None = None) -> None:
        self._builtin: dict[tuple[str, int], Pipeline] = {}
        self._latest: dict[str, Pipeline] = {}
        for p in pipelines if pipelines is not None else [MEMORY_INGEST, FLAKY]:
            self.add(p)

    def add(self, pipeline: Pipeline) -> None:
        self._builtin[(pipeline.name, pipeline.version)] = pipeline
        latest = self._latest.get(pipeline.name)
        if latest is None or latest.version <= pipeline.version:
            self._latest[pipeline.name] = pipeline

    def get(self, workspace: str, name: str, version: int | None = None) -> Pipeline:
        found = self._latest.get(name) if version is None else self._builtin.get((name, version))
        if found is None:
            raise NotFound(f"no pipeline {name!r}", pipeline=name, version=version)
        return found

    def names(self, workspace: str) -> list[str]:
        return sorted(self._latest)
