"""Pure logic (events, folds, stage decisions, retry maths) imports no I/O library."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE = [
    "stageline.events.envelope",
    "stageline.events.codec",
    "stageline.events.finite",
    "stageline.actors.events",
    "stageline.actors.decide",
    "stageline.actors.reported",
    "stageline.actors.retry",
    "stageline.actors.compensation",
    "stageline.actors.configs",
    "stageline.actors.builtin",
    "stageline.ontology.events",
    "stageline.ontology.model",
    "stageline.ontology.policy",
    "stageline.ontology.discover",
    "stageline.ontology.seed",
    "stageline.projections.batch",
    "stageline.projections.compact",
    "stageline.projections.cursors",
    "stageline.projections.run_status",
    "stageline.projections.durations",
    "stageline.projections.patterns",
    "stageline.projections.ontology",
]
IO = ("redis", "falkordb", "faststream", "fastapi", "uvicorn", "httpx", "hiredis")


@pytest.mark.parametrize("module", PURE)
def test_pure_module_loads_no_io_library(module: str) -> None:
    # a fresh interpreter: this test process has every library loaded already
    code = f"import sys, {module}; print(sorted({{m.split('.')[0] for m in sys.modules}}))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    leaked = [name for name in IO if f"'{name}'" in loaded]
    assert leaked == [], f"{module} pulls in {leaked}"


def test_the_client_loads_no_server_library() -> None:
    # a publisher imports the client (and, once it reports a run, the reporter) into its own
    # process: only httpx comes along
    code = (
        "import sys, stageline.client, stageline.reporting;"
        " print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    leaked = [name for name in IO if name not in ("httpx",) and f"'{name}'" in loaded]
    assert leaked == [], f"stageline.client pulls in {leaked}"
