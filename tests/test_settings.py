"""Settings: read from the environment in one place, typed, secrets hidden."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from generation_analytics.service.settings import ENVIRONMENT, SettingsError, describe, load_settings
from tests.fix_processes import CLI


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


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GA_MAX_BATCH_EVENTS", "many"),
        ("GA_SCHEDULER_ENABLED", "maybe"),
        ("GA_REDIS_WAIT_REPLICAS", "-1"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings({name: value})


@pytest.mark.parametrize("timeout_ms", ["0", "1000", "5000"])  # 1000: not shorter than GA_REDIS_TIMEOUT_S
def test_a_replica_wait_that_the_socket_timeout_would_cut_short_is_refused(timeout_ms: str) -> None:
    with pytest.raises(SettingsError, match="GA_REDIS_WAIT_TIMEOUT_MS"):
        load_settings({"GA_REDIS_WAIT_REPLICAS": "1", "GA_REDIS_WAIT_TIMEOUT_MS": timeout_ms})
    assert load_settings({"GA_REDIS_WAIT_TIMEOUT_MS": timeout_ms}).redis.wait_replicas == 0  # unused: no check
    assert load_settings({"GA_REDIS_WAIT_REPLICAS": "2", "GA_REDIS_WAIT_TIMEOUT_MS": "999"}).redis.wait_replicas == 2


def test_secrets_are_hidden() -> None:
    settings = load_settings({"GA_POSTGRES_DSN": "postgresql://u:secret@db/x", "GA_REDIS_URL": "redis://:pw@r/0"})
    assert "secret" not in repr(settings.postgres)
    assert "pw" not in repr(settings.redis)
    assert all("secret" not in value and ":pw@" not in value for _, value in describe(settings))
    kv = load_settings({"GA_POSTGRES_DSN": "host=db password=secret dbname=x"})
    assert "secret" not in repr(kv.postgres)


# (value, fragments of the secret that must never be shown, parts that must stay readable). Secrets are
# spelled so that no fragment can appear by chance (`Zq9`, `wX7`); a space or quote splits a fragment.
SECRET_FORMS = [
    # libpq key=value: quoted with a space (the reported leak: `password=*** cret'`), escaped quotes,
    # unquoted, backslash-escaped, spaces around `=`, sslpassword, a dbname that is itself a DSN.
    ("host=h user=u password='Zq9 wX7' dbname=d", ["Zq9", "wX7"], ["host=h", "user=u", "dbname=d"]),
    (r"host=h password='Qk\'s Zq9 wX7' dbname=d", ["Qk", "Zq9", "wX7"], ["host=h", "dbname=d"]),
    ("host=h password=Zq9wX7 port=5433", ["Zq9"], ["host=h", "port=5433"]),
    (r"host=h password=Zq9\ wX7 dbname=d", ["Zq9", "wX7"], ["host=h", "dbname=d"]),
    ("host=h password = Zq9wX7 dbname=d", ["Zq9"], ["host=h", "dbname=d"]),
    ("host=h sslpassword='Zq9 wX7' sslmode=verify-full", ["Zq9", "wX7"], ["host=h", "sslmode=verify-full"]),
    ("dbname='host=h password=Zq9wX7'", ["Zq9"], ["host=h"]),
    # URL userinfo, Postgres and Redis, with and without a user; passwords with an `@` or escapes.
    ("postgresql://u:Zq9wX7@h:5432/d", ["Zq9"], ["postgresql://u:", "@h:5432/d"]),
    ("postgres://u:Zq9%40wX7@h/d?sslmode=require", ["Zq9", "wX7"], ["@h/d?sslmode=require"]),
    ("postgresql://u:Zq9@wX7@h/d", ["Zq9", "wX7"], ["@h/d"]),
    ("redis://:Zq9wX7@h:6379/0", ["Zq9"], ["redis://", "@h:6379/0"]),
    ("rediss://user:Zq9wX7@h:6380/1", ["Zq9"], ["rediss://user:", "@h:6380/1"]),
    # Passwords in query strings: first or later parameter, sslpassword, Redis' ?password=, encoded names.
    ("postgresql://u@h/d?password=Zq9wX7", ["Zq9"], ["postgresql://u@h/d?password="]),
    ("postgresql://h/d?sslmode=require&password=Zq9wX7&application_name=x", ["Zq9"], ["application_name=x"]),
    ("postgresql://h/d?sslpassword=Zq9wX7", ["Zq9"], ["postgresql://h/d?sslpassword="]),
    ("postgresql:///d?host=/tmp&password=Zq9wX7", ["Zq9"], ["postgresql:///d?host=/tmp"]),
    ("rediss://h:6379/0?password=Zq9wX7", ["Zq9"], ["rediss://h:6379/0?password="]),
    ("redis://h:6379/0?ssl_cert_reqs=none&password=Zq9+wX7", ["Zq9", "wX7"], ["ssl_cert_reqs=none"]),
    ("postgresql://h/d?pass%77ord=Zq9wX7", ["Zq9"], ["postgresql://h/d"]),
    # What does not parse (or parses doubtfully) is cut where a secret could start.
    ("host=h password='Zq9 wX7", ["Zq9", "wX7"], ["host=h"]),
    ("host=h no_such_option=1 password=Zq9wX7", ["Zq9"], ["host=h"]),
    ("postgresql://u:Zq9#wX7@h/d", ["Zq9", "wX7"], ["postgresql://u"]),
    ("redis://:Zq9?wX7@h/0", ["Zq9", "wX7"], ["redis://"]),
    ("postgresql://u:Zq9/wX7@h/d", ["Zq9", "wX7"], ["postgresql://u"]),
    ("postgresql://u:Zq9wX7@[::1/d", ["Zq9"], ["postgresql://u"]),
    ("u:Zq9wX7@h/d", ["Zq9"], ["u:"]),
]


def _shown(dsn: str, redis_url: str) -> str:
    settings = load_settings({"GA_POSTGRES_DSN": dsn, "GA_REDIS_URL": redis_url})
    rows = "\n".join(f"{name}={value}" for name, value in describe(settings))
    return "\n".join([rows, repr(settings.postgres), repr(settings.redis), repr(settings)])


@pytest.mark.parametrize(("value", "secret", "readable"), SECRET_FORMS, ids=[f[0] for f in SECRET_FORMS])
def test_no_form_of_password_is_ever_shown(value: str, secret: list[str], readable: list[str]) -> None:
    shown = _shown(value, value)
    assert [fragment for fragment in secret if fragment in shown] == []
    assert "***" in shown
    dsn_line = next(line for line in shown.splitlines() if line.startswith("GA_POSTGRES_DSN="))
    assert [part for part in readable if part not in dsn_line] == []


@pytest.mark.parametrize(("value", "secret", "readable"), SECRET_FORMS, ids=[f[0] for f in SECRET_FORMS])
def test_without_libpq_every_form_is_still_hidden(
    value: str, secret: list[str], readable: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client-only install has no psycopg: key=value strings take the fallback, which cuts at `password`.
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.setitem(sys.modules, "psycopg.conninfo", None)
    shown = _shown(value, value)
    assert [fragment for fragment in secret if fragment in shown] == []


def test_values_without_secrets_are_shown_unchanged() -> None:
    env = {
        "GA_POSTGRES_DSN": "host=/tmp port=5433 dbname=ga",
        "GA_REDIS_URL": "redis://127.0.0.1:6379/0",
        "GA_LISTEN_ADDR": "0.0.0.0:50051",
        "GA_TLS_CERT": "/etc/ga/cert.pem",
        "GA_TLS_KEY": "/etc/ga/key.pem",
    }
    shown = dict(describe(load_settings(env)))
    assert shown["GA_REDIS_URL"] == "redis://127.0.0.1:6379/0"
    assert shown["GA_LISTEN_ADDR"] == "0.0.0.0:50051"
    assert (shown["GA_TLS_CERT"], shown["GA_TLS_KEY"]) == ("/etc/ga/cert.pem", "/etc/ga/key.pem")
    assert sorted(shown["GA_POSTGRES_DSN"].split()) == ["dbname=ga", "host=/tmp", "port=5433"]


def test_print_settings_hides_the_reported_dsn() -> None:
    # The report: `serve --print-settings` with this DSN printed `password=*** cret'`.
    env = {
        "GA_POSTGRES_DSN": "host=h user=u password='s3 cret' dbname=d",
        "GA_REDIS_URL": "rediss://user:s3cret@h:6380/0?password=s3cret2",
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [CLI, "serve", "--print-settings"], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert "cret" not in result.stdout + result.stderr
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert sorted(lines["GA_POSTGRES_DSN"].split()) == ["dbname=d", "host=h", "password=***", "user=u"]
    assert lines["GA_REDIS_URL"] == "rediss://user:***@h:6380/0?password=***"


def test_every_variable_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    missing = [name for name in ENVIRONMENT if f"`{name}`" not in readme]
    assert missing == []
