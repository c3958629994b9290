"""``Settings`` from ``STAGELINE_*``: an empty variable is an unset one, a bad one is refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stageline.settings import Settings


def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "BROKER_URL", "WORKSPACE", "BATCH_SIZE", "LOG_LEVEL"):
        monkeypatch.setenv(f"STAGELINE_{name}", "")
    settings = Settings()
    assert (settings.redis_url, settings.broker_url) == (None, None)
    assert (settings.workspace, settings.batch_size, settings.log_level) == ("default", 200, "INFO")


@pytest.mark.parametrize(("given", "level"), [("debug", "DEBUG"), (" Warning ", "WARNING")])
def test_a_log_level_is_any_case(monkeypatch: pytest.MonkeyPatch, given: str, level: str) -> None:
    monkeypatch.setenv("STAGELINE_LOG_LEVEL", given)
    assert Settings().log_level == level


def test_an_unknown_log_level_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGELINE_LOG_LEVEL", "verbose")
    with pytest.raises(ValidationError, match="log_level"):
        Settings()
