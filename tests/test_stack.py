"""The composition root: what ``Stack.open`` builds from the settings."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from stageline.actors.pipeline import Pipeline, PipelineCatalog, RetryPolicy, StageSpec
from stageline.actors.stage import ActorRegistry, StageContext, StageResult
from stageline.errors import InvalidArgument
from stageline.settings import Settings
from stageline.stack import Stack

MINE = Pipeline(
    name="mine",
    version=1,
    description="A pipeline of the user's own stage.",
    stages=(StageSpec(name="shout", actor="shout"),),
)


def shout(item: dict[str, object], ctx: StageContext) -> StageResult:
    return StageResult(output={"shouted": str(item.get("text", "")).upper()})


def install(actors: ActorRegistry, catalog: PipelineCatalog) -> None:
    actors.register("shout", shout)
    catalog.add(MINE)


async def test_user_actors_and_pipelines_are_installed_from_the_settings(redis_url: str) -> None:
    stack = await Stack.open(Settings(redis_url=redis_url, actors=f" {__name__}:install, "))
    try:
        assert "shout" in stack.actors.names()
        assert "normalize" in stack.actors.names()  # the built-ins stay
        assert MINE in stack.catalog.builtins()
    finally:
        await stack.close()


@pytest.mark.parametrize(
    "entry", ["no_such_module_here:install", f"{__name__}:nothing", f"{__name__}:MINE", "install"]
)
async def test_a_bad_actors_entry_fails_before_anything_starts(entry: str) -> None:
    # no server: the entry is refused before the stack connects or starts one
    settings = Settings(redis_url="unix:///nonexistent/redis.sock", actors=entry)
    with pytest.raises(InvalidArgument, match="STAGELINE_ACTORS entry"):
        await Stack.open(settings)


async def test_an_actors_module_that_fails_on_import_is_a_bad_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "reads_a_missing_file.py").write_text("open('/nonexistent/config.yaml')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    settings = Settings(
        redis_url="unix:///nonexistent/redis.sock", actors="reads_a_missing_file:install"
    )
    with pytest.raises(InvalidArgument, match=r"STAGELINE_ACTORS entry.*nonexistent/config\.yaml"):
        await Stack.open(settings)


async def test_an_actors_install_that_fails_leaves_no_embedded_server_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bad_install.py").write_text(
        "def install(actors, catalog):\n    raise RuntimeError('no such model')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir, actors="bad_install:install")
    with pytest.raises(InvalidArgument, match=r"bad_install:install'.*install failed: no such"):
        await Stack.open(settings)
    pidfile = data_dir / "redis.pid"
    assert not pidfile.exists()
    assert not _processes_naming(data_dir)


BAD_PIPELINES = {
    "an unknown actor": (
        Pipeline(name="bad", stages=(StageSpec(name="a", actor="nobody"),)),
        r"unknown actor 'nobody'.*field='stages\[0\]\.actor'",
    ),
    "a name with a space": (
        Pipeline(name="my pipeline", stages=(StageSpec(name="a", actor="shout"),)),
        r"pipeline 'my pipeline'.*pipeline name must be.*field='name'",
    ),
    "a negative timeout": (
        Pipeline(name="bad", stages=(StageSpec(name="a", actor="shout", timeout_seconds=-1),)),
        r"timeout_seconds must be.*field='stages\[0\]\.timeout_seconds'",
    ),
    "negative retries": (
        Pipeline(
            name="bad",
            stages=(StageSpec(name="a", actor="shout", retry=RetryPolicy(max_retries=-1)),),
        ),
        r"retry\.max_retries must be.*field='stages\[0\]\.retry\.max_retries'",
    ),
    "a fallback to an earlier stage": (
        Pipeline(
            name="bad",
            stages=(
                StageSpec(name="a", actor="shout"),
                StageSpec(name="b", actor="shout", retry=RetryPolicy(fallback="a")),
            ),
        ),
        r"fallback 'a' must be 'skip' or .*field='stages\[1\]\.retry\.fallback'",
    ),
    "no stages": (Pipeline(name="bad"), r"at least one stage.*field='stages'"),
    "version 0, the version of reported runs": (
        Pipeline(name="bad", version=0, stages=(StageSpec(name="a", actor="shout"),)),
        r"version must be an integer >= 1",
    ),
}


@pytest.mark.parametrize("case", list(BAD_PIPELINES))
async def test_an_installed_pipeline_is_checked_as_a_config_sent_over_http(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline, says = BAD_PIPELINES[case]

    def install_bad(actors: ActorRegistry, catalog: PipelineCatalog) -> None:
        install(actors, catalog)
        catalog.add(pipeline)

    monkeypatch.setattr(sys.modules[__name__], "install_bad", install_bad, raising=False)
    settings = Settings(
        redis_url="unix:///nonexistent/redis.sock", actors=f"{__name__}:install_bad"
    )
    # they used to be accepted: their runs stuck in `processing`, or a 500 on submit
    with pytest.raises(InvalidArgument) as raised:
        await Stack.open(settings)
    line = str(raised.value)
    assert line.startswith(f"STAGELINE_ACTORS entry '{__name__}:install_bad': pipeline "), line
    assert re.search(says, line), line
    assert "\n" not in line


def install_actor_only(actors: ActorRegistry, catalog: PipelineCatalog) -> None:
    actors.register("shout", shout)


def install_pipeline_only(actors: ActorRegistry, catalog: PipelineCatalog) -> None:
    catalog.add(MINE)


async def test_an_installed_pipeline_may_use_an_actor_a_later_entry_registers(
    redis_url: str,
) -> None:
    entries = f"{__name__}:install_pipeline_only,{__name__}:install_actor_only"
    stack = await Stack.open(Settings(redis_url=redis_url, actors=entries))
    try:
        assert MINE in stack.catalog.builtins()
    finally:
        await stack.close()


def _processes_naming(path: Path) -> list[Path]:
    """The ``/proc/<pid>/cmdline`` files of running processes that name ``path``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(path).encode() in cmdline.read_bytes():
                found.append(cmdline)
        except OSError:  # the process ended meanwhile
            pass
    return found


@pytest.mark.parametrize(("cpus", "workers"), [(1, 2), (2, 3), (7, 8), (64, 8), (256, 8)])
def test_rebuild_workers_default_to_one_more_than_the_cpus_at_most_8(
    monkeypatch: pytest.MonkeyPatch, cpus: int, workers: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.delenv("STAGELINE_REBUILD_WORKERS", raising=False)
    assert Settings().rebuild_workers == workers


async def test_the_projector_rebuilds_with_a_fold_pool_unless_it_is_turned_off(
    redis_url: str,
) -> None:
    for workers in (3, 0):
        stack = await Stack.open(Settings(redis_url=redis_url, rebuild_workers=workers))
        try:
            pool = stack.projector().fold_pool
            if workers:
                assert pool is not None and (pool.workers, pool.store_url) == (3, redis_url)
            else:
                assert pool is None
        finally:
            await stack.close()
