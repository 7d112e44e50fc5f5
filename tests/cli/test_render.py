"""cli/render.py helpers."""

from __future__ import annotations

import pytest

from cli.render import safe_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://user:pw@cache:6380/2", "redis://cache:6380/2"),
        ("rediss://cache/1", "rediss://cache/1"),
        (
            "postgresql+psycopg://presence:x@db:5432/presence",
            "postgresql+psycopg://db:5432/presence",
        ),
    ],
)
def test_safe_url_drops_user_and_password(url, shown):
    assert safe_url(url) == shown
