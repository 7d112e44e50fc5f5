"""Worker runtime pieces built exactly as ``worker.runtime`` builds them, against the real
emulator and a real Redis."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis

from emulator.launcher import EmulatorProcess
from tests.conftest import Api
from worker.runtime import Runtime
from worker.settings import Settings

# The platform's well-known system presence ids (the emulator serves the same).
SYSTEM_IDS = {
    "Available": "6a3af858-942f-489d-9700-5f9bcdcdae9b",
    "On Queue": "e08eaf1b-ee47-4fa9-a231-1200e284798f",
    "Busy": "31fe3bac-dea6-44b7-bed7-47f91660a1a0",
    "Break": "227b37e2-f1d0-4dd0-8f50-badd7cf6d158",
    "Meal": "3fd96123-badb-4f69-bc03-1b1ccc6d8014",
    "Offline": "ccf3c10a-aa2c-4845-8e8d-f59fa48c58e5",
}


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def settings(emulator: EmulatorProcess, redis_url: str) -> Settings:
    """Worker settings pointing at the session emulator; no ``.env`` file is read."""
    return Settings(
        _env_file=None,
        genesys_api_url=emulator.base_url,
        genesys_client_id=emulator.client_id,
        genesys_client_secret=emulator.client_secret,
        redis_url=redis_url,
        rate_limit_per_minute=6000,
        http_timeout_s=2.0,
        limiter_max_inline_wait_s=2.0,
        notification_prime_agents=0,
    )


@pytest.fixture
def runtime(settings: Settings, api: Api) -> Iterator[Runtime]:
    """A process runtime (HTTP pool, limiter, tokens, client, caches) on a freshly reset emulator.

    Its own listener is never started; listener tests build theirs from these pieces.
    """
    rt = Runtime.build(settings)
    yield rt
    rt.listener.stop()
    rt.http.close()
    rt.redis.close()


def route_count(api: Api, route: str, status: int | None = None) -> int:
    """Requests the emulator answered on ``route`` (with ``status``, or any status)."""
    counts = api.admin("GET", "/stats").json()["requests"].get(route, {})
    if status is not None:
        return int(counts.get(str(status), 0))
    return sum(int(n) for n in counts.values())


def eventually(
    condition: Callable[[], object], timeout_s: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until it is truthy; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)
