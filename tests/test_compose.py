"""compose.yaml and the Dockerfile, checked statically (no Docker engine needed)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = {"api": "api", "worker": "worker", "projector": "projector"}
SERVERS = ("falkordb", "broker")

# a full version (x.y.z, optional v prefix and variant suffix) or a digest
PINNED_TAG = re.compile(r"^v?\d+\.\d+\.\d+([-.][\w.-]+)?$")


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def _is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and bool(PINNED_TAG.match(tag))


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def _healthcheck(service: dict[str, Any]) -> str:
    check = service.get("healthcheck") or {}
    assert not check.get("disable"), "healthcheck disabled"
    test = check.get("test")
    assert test, "no healthcheck test"
    return test if isinstance(test, str) else " ".join(test)


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("redis:8.2.3-alpine", True),
        ("falkordb/falkordb:v4.16.3", True),
        ("python:3.11.14-slim-bookworm", True),
        ("redis@sha256:" + "0" * 64, True),
        ("redis", False),
        ("redis:latest", False),
        ("redis:8", False),
        ("python:3.11-slim", False),
        ("localhost:5000/redis", False),
    ],
)
def test_pin_rule(image: str, pinned: bool) -> None:
    assert _is_pinned(image) is pinned


def test_every_service_has_a_pinned_image_or_a_build(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "build" in service:
            continue
        assert "image" in service, f"{name}: neither image nor build"
        assert _is_pinned(service["image"]), f"{name}: image {service['image']} is not pinned"


def test_expected_services_exist(services: dict[str, dict[str, Any]]) -> None:
    assert {*SERVERS, *APP_SERVICES} <= services.keys()


@pytest.mark.parametrize("name", SERVERS)
def test_servers_are_healthchecked_with_ping(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    test = _healthcheck(services[name])
    assert "redis-cli" in test
    assert "ping" in test


@pytest.mark.parametrize("name", SERVERS)
def test_servers_keep_an_aof_on_a_volume(services: dict[str, dict[str, Any]], name: str) -> None:
    service = services[name]
    args = " ".join([*_command(service), *_environment(service).values()])
    assert re.search(r"--appendonly\s+yes", args), f"{name}: AOF not enabled"
    assert service.get("volumes"), f"{name}: data not on a volume"


def test_falkordb_keeps_view_writes_as_their_effects(services: dict[str, dict[str, Any]]) -> None:
    # as the embedded server does: a restart then does not run the view queries again
    args = _environment(services["falkordb"]).get("FALKORDB_ARGS", "")
    assert re.search(r"EFFECTS_THRESHOLD\s+0\b", args)


def test_api_is_healthchecked_over_http(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    test = _healthcheck(api)
    assert "/healthz" in test
    assert "curl" not in test  # python:*-slim has no curl
    port = _command(api)[_command(api).index("--port") + 1]
    assert f":{port}/healthz" in test


def test_worker_runs_at_least_two_replicas(services: dict[str, dict[str, Any]]) -> None:
    assert services["worker"]["deploy"]["replicas"] >= 2


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_get_both_urls(services: dict[str, dict[str, Any]], name: str) -> None:
    env = _environment(services[name])
    store = urlsplit(env["STAGELINE_REDIS_URL"])
    broker = urlsplit(env["STAGELINE_BROKER_URL"])
    assert store.hostname == "falkordb"
    assert broker.hostname == "broker"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_wait_for_healthy_servers(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    depends_on = services[name]["depends_on"]
    assert isinstance(depends_on, dict), "depends_on must use the long form with conditions"
    assert set(SERVERS) <= depends_on.keys()
    for dependency, spec in depends_on.items():
        assert spec["condition"] == "service_healthy", f"{name} -> {dependency}"


@pytest.mark.parametrize(("name", "subcommand"), APP_SERVICES.items())
def test_app_services_run_their_stageline_subcommand(
    services: dict[str, dict[str, Any]], name: str, subcommand: str
) -> None:
    service = services[name]
    assert service["build"] == "."
    assert _command(service)[:2] == ["stageline", subcommand]
    assert service.get("restart") in {"always", "unless-stopped", "on-failure"}


@pytest.mark.skipif(
    importlib.util.find_spec("stageline.cli") is None, reason="stageline.cli not written yet"
)
@pytest.mark.parametrize("name", APP_SERVICES)
def test_commands_are_accepted_by_the_cli(services: dict[str, dict[str, Any]], name: str) -> None:
    """Each service's subcommand exists and knows every --option compose passes it."""
    _, subcommand, *args = _command(services[name])
    run = [sys.executable, "-c", "import sys; from stageline.cli import main; sys.exit(main())"]
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    result = subprocess.run(
        [*run, subcommand, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr or result.stdout
    for option in (arg for arg in args if arg.startswith("--")):
        assert option in result.stdout, f"stageline {subcommand} has no {option}"


def _dockerfile() -> list[str]:
    """Dockerfile instructions, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    lines = (line.strip() for line in joined.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_dockerfile_base_images_are_pinned() -> None:
    stages: set[str] = set()
    froms = [line.split() for line in _dockerfile() if line.upper().startswith("FROM ")]
    assert froms
    for words in froms:
        image = next(word for word in words[1:] if not word.startswith("--"))
        if image not in stages:
            assert _is_pinned(image), f"base image {image} is not pinned"
        if len(words) >= 4 and words[-2].upper() == "AS":
            stages.add(words[-1])
    assert froms[-1][1].startswith("python:3.11")


def test_dockerfile_runs_the_api_as_a_non_root_user() -> None:
    lines = _dockerfile()
    users = [line.split()[1] for line in lines if line.upper().startswith("USER ")]
    assert users
    assert users[-1] not in {"root", "0"}
    [cmd] = [line for line in lines if line.upper().startswith("CMD ")]
    assert yaml.safe_load(cmd[4:])[:2] == ["stageline", "api"]


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".stageline"} <= set(ignored)
