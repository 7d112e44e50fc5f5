"""One-line explanations: they name the setting, and never show a secret."""

from __future__ import annotations

import pytest
import redis
from pydantic import ValidationError
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from worker.problems import explain, mask_url, settings_problem
from worker.settings import Settings

SECRET = "s3cr3t-value-abcdef"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{SECRET}@cache:6379/0", "redis://:***@cache:6379/0"),
        (f"postgresql+psycopg://app:{SECRET}@db:5432/p", "postgresql+psycopg://app:***@db:5432/p"),
        ("sqlite:///presence.sqlite3", "sqlite:///presence.sqlite3"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("redis://user@cache:6379/0", "redis://user@cache:6379/0"),
    ],
)
def test_urls_show_everything_but_the_password(url, shown):
    assert mask_url(url) == shown


def test_a_settings_error_names_each_variable_and_none_of_the_values():
    with pytest.raises(ValidationError) as caught:
        Settings(
            _env_file=None,
            genesys_client_secret=SECRET,
            rate_limit_per_minute="lots",
            channel_slots=99,
        )

    line = settings_problem(caught.value)

    assert line.startswith("invalid settings: ")
    assert "RATE_LIMIT_PER_MINUTE: " in line
    assert "CHANNEL_SLOTS: " in line
    assert "lots" not in line
    assert "99" not in line
    assert SECRET not in line


def test_a_missing_table_asks_for_presence_migrate(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    with pytest.raises(OperationalError) as caught, create_engine(url).connect() as connection:
        connection.execute(text("select * from presence_audit"))

    line = explain(caught.value, redis_url=None, database_url=url)

    assert line is not None
    assert line.endswith("run `presence migrate`")
    assert "DATABASE_URL" in line


def test_an_unreachable_redis_is_named_with_its_password_masked():
    url = f"redis://:{SECRET}@127.0.0.1:1/0"
    with pytest.raises(redis.ConnectionError) as caught:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()

    line = explain(caught.value, redis_url=url, database_url=None)

    assert line is not None
    assert line.startswith("cannot reach Redis at REDIS_URL (redis://:***@127.0.0.1:1/0)")
    assert SECRET not in line


def test_anything_else_is_left_alone():
    assert explain(KeyError("x"), redis_url=None, database_url=None) is None
