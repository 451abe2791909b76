"""Settings: read from the environment in one place, typed, secrets hidden."""

from __future__ import annotations

from pathlib import Path

import pytest

from generation_analytics.service.settings import ENVIRONMENT, SettingsError, describe, load_settings


def test_defaults_without_environment() -> None:
    settings = load_settings({})
    assert settings.server.listen_addr == "127.0.0.1:50051"
    assert settings.redis.namespace == "ga"
    assert settings.embedded


def test_environment_overrides_are_typed() -> None:
    settings = load_settings(
        {
            "GA_POSTGRES_DSN": "postgresql://u:secret@db/x",
            "GA_REDIS_URL": "redis://r:6379/1",
            "GA_NAMESPACE": "prod",
            "GA_MAX_BATCH_EVENTS": "500",
            "GA_REDIS_TIMEOUT_S": "0.25",
            "GA_SCHEDULER_ENABLED": "false",
            "GA_DATA_DIR": "/tmp/ga",
        }
    )
    assert settings.limits.max_batch_events == 500
    assert settings.redis.socket_timeout_s == 0.25
    assert settings.schedule.enabled is False
    assert settings.data_dir == Path("/tmp/ga")
    assert not settings.embedded


@pytest.mark.parametrize(("name", "value"), [("GA_MAX_BATCH_EVENTS", "many"), ("GA_SCHEDULER_ENABLED", "maybe")])
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings({name: value})


def test_secrets_are_hidden() -> None:
    settings = load_settings({"GA_POSTGRES_DSN": "postgresql://u:secret@db/x", "GA_REDIS_URL": "redis://:pw@r/0"})
    assert "secret" not in repr(settings.postgres)
    assert "pw" not in repr(settings.redis)
    assert all("secret" not in value and ":pw@" not in value for _, value in describe(settings))
    kv = load_settings({"GA_POSTGRES_DSN": "host=db password=secret dbname=x"})
    assert "secret" not in repr(kv.postgres)


def test_every_variable_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    missing = [name for name in ENVIRONMENT if f"`{name}`" not in readme]
    assert missing == []
