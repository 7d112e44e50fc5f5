"""Shared fixtures: a real emulator process over real sockets, reset before each test.

The end-to-end pipeline fixtures (a module emulator, a module-private Redis, a migrated audit
database) live in :mod:`tests.support.pipeline`, registered here as a plugin.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, settings

from emulator.launcher import EmulatorProcess
from tests.support.redis_db import (
    ClaimedDatabase,
    claim_database,
    claim_given_database,
    split_database,
)
from worker.embedded_redis import ensure_redis

pytest_plugins = ["tests.support.pipeline"]

# Fuzzing budgets: "ci" (the default, a short form) and "long" (HYPOTHESIS_PROFILE=long, random
# examples: run it to explore).
settings.register_profile(  # the same examples on every run: CI fails only on a change
    "ci",
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorProcess]:
    """One emulator for the session: 200 agents, 6 queues, fast heartbeats, limit off."""
    proc = EmulatorProcess(
        args=["--users", "200", "--queues", "6", "--heartbeat", "0.5", "--rate-limit", "0"]
    )
    with proc:
        yield proc


class Api:
    """A thin test client: an authenticated httpx session plus the admin API."""

    def __init__(self, emulator: EmulatorProcess) -> None:
        self.emulator = emulator
        self.http = httpx.Client(base_url=emulator.base_url, timeout=10)
        self.token = self.fetch_token()
        self.http.headers["Authorization"] = f"Bearer {self.token}"

    def fetch_token(self, client_id: str | None = None, client_secret: str | None = None) -> str:
        response = httpx.post(
            f"{self.emulator.base_url}/oauth/token",
            auth=(
                client_id or self.emulator.client_id,
                client_secret or self.emulator.client_secret,
            ),
            data={"grant_type": "client_credentials"},
        )
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token

    def admin(self, method: str, path: str, json: object = None) -> httpx.Response:
        response = httpx.request(method, f"{self.emulator.base_url}/__emulator{path}", json=json)
        response.raise_for_status()
        return response

    def active_users(self) -> list[dict[str, object]]:
        return [u for u in self.admin("GET", "/users").json() if u["state"] == "active"]

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def api(emulator: EmulatorProcess) -> Iterator[Api]:
    """A fresh, reset emulator and a client holding a valid token."""
    httpx.post(f"{emulator.base_url}/__emulator/reset").raise_for_status()
    client = Api(emulator)
    yield client
    client.close()


# ``REDIS_URL`` names the tests' Redis and the one database they may use; without it they use the
# local server (or a private one when none answers) and any free database there. Either way the
# database is claimed first (:mod:`tests.support.redis_db`): never one that holds someone else's
# data, never one another test run is using.
TEST_REDIS_URL = os.environ.get("REDIS_URL")
LOCAL_REDIS = "redis://127.0.0.1:6379"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The base URL (no database number) of a real Redis: ``REDIS_URL``'s server (else the local
    one) when it answers, else a private one."""
    base = split_database(TEST_REDIS_URL)[0] if TEST_REDIS_URL else LOCAL_REDIS
    handle = ensure_redis(f"{base}/0")
    yield handle.url.rsplit("/", 1)[0]
    handle.stop()


@pytest.fixture(scope="session")
def _redis_database(redis_server: str) -> Iterator[ClaimedDatabase]:
    """This run's claimed database: ``REDIS_URL``'s number on its server, else any free one."""
    if TEST_REDIS_URL and split_database(TEST_REDIS_URL)[0] == redis_server:
        claimed = claim_given_database(redis_server, split_database(TEST_REDIS_URL)[1])
    else:
        claimed = claim_database(redis_server)
    yield claimed
    claimed.release()


@pytest.fixture
def redis_url(_redis_database: ClaimedDatabase) -> str:
    """The tests' own Redis database, emptied before each test."""
    _redis_database.empty()
    return _redis_database.url
