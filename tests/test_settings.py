"""``Settings`` from ``STAGELINE_*``: an empty variable is an unset one, a bad one is refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stageline.settings import Settings, describe


def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "BROKER_URL", "WORKSPACE", "BATCH_SIZE", "LOG_LEVEL"):
        monkeypatch.setenv(f"STAGELINE_{name}", "")
    settings = Settings()
    assert (settings.redis_url, settings.broker_url) == (None, None)
    assert (settings.workspace, settings.batch_size, settings.log_level) == ("default", 200, "INFO")


@pytest.mark.parametrize(
    ("given", "level"), [("debug", "DEBUG"), (" Warning ", "WARNING"), ("critical", "CRITICAL")]
)
def test_a_log_level_is_any_case(monkeypatch: pytest.MonkeyPatch, given: str, level: str) -> None:
    monkeypatch.setenv("STAGELINE_LOG_LEVEL", given)
    assert Settings().log_level == level


def test_an_unknown_log_level_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGELINE_LOG_LEVEL", "verbose")
    with pytest.raises(ValidationError, match="log_level") as refused:
        Settings()
    # every level it takes, CRITICAL too
    assert "use DEBUG, INFO, WARNING, ERROR or CRITICAL" in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "rediss://:secret@example.com:6380",
        "redis://[::1]:6379",
        "unix:///tmp/stageline/redis.sock",
    ],
)
def test_a_redis_url_is_taken(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("STAGELINE_REDIS_URL", url)
    monkeypatch.setenv("STAGELINE_BROKER_URL", url)
    assert (Settings().redis_url, Settings().broker_url) == (url, url)


@pytest.mark.parametrize(
    ("variable", "url", "says"),
    [
        ("REDIS_URL", "http://nope", "must start with redis://, rediss://, unix://"),
        ("REDIS_URL", "redis://host:notaport/0", "is not a URL"),
        ("REDIS_URL", "redis://host:99999", "is not a URL"),
        ("REDIS_URL", "redis://host/zero", "database number"),
        ("REDIS_URL", "unix://", "names no socket path"),
        ("BROKER_URL", "localhost:6379", "must start with"),
        ("BROKER_URL", "redis://[::1", "is not a URL"),
    ],
)
def test_a_bad_redis_url_is_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, url: str, says: str
) -> None:
    monkeypatch.setenv(f"STAGELINE_{variable}", url)
    with pytest.raises(ValidationError, match=variable.lower()) as caught:
        Settings()
    assert says in describe(caught.value)


def test_a_password_in_a_refused_url_is_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGELINE_REDIS_URL", "redis://user:s3cret@host:port/0")
    with pytest.raises(ValidationError) as caught:
        Settings()
    said = describe(caught.value)
    assert "s3cret" not in said and "'redis://user:***@host:port/0' is not a URL" in said


FLOAT_SETTINGS = [
    name
    for name, field in Settings.model_fields.items()
    if field.annotation in (float, float | None)
]


def test_the_float_settings_are_the_ones_with_seconds() -> None:
    assert "abandon_grace_seconds" in FLOAT_SETTINGS and len(FLOAT_SETTINGS) >= 6


@pytest.mark.parametrize("value", ["inf", "-inf", "Infinity", "nan"])
@pytest.mark.parametrize("name", FLOAT_SETTINGS)
def test_a_float_setting_that_is_not_finite_is_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    variable = f"STAGELINE_{name.upper()}"
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as caught:  # inf used to be taken where no bound was
        Settings()
    said = describe(caught.value)
    assert said.startswith(f"{variable}: "), said
    assert "\n" not in said
