"""Start checks shared by a fleet: a worker whose fleet-mate passed every check with the same
Genesys settings within ``PREFLIGHT_REUSE_S`` does not repeat the Genesys rows, so starting a
fleet of N processes costs the checks' API requests once instead of N times (they are spent
from the same budget the updates need).

The mark is a digest of the settings the Genesys rows depend on (URLs, client id and secret,
presence source, channel slots, budget): a different secret or URL never reuses a pass. The
digest is one-way; neither the secret nor any part of it is stored. Marks and claims sit under
``prefix`` (the org's key prefix), per OAuth client.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable

import redis

from worker.settings import Settings

WAIT_S = 30.0
POLL_S = 0.2


def fingerprint(settings: Settings) -> str:
    """A one-way digest of everything the Genesys checks read."""
    parts = (
        settings.api_base,
        settings.login_base,
        settings.genesys_client_id,
        settings.genesys_client_secret.get_secret_value(),
        settings.presence_source,
        str(settings.channel_slots),
        str(settings.rate_limit_per_minute),
    )
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _key(settings: Settings, prefix: str) -> str:
    return f"{prefix}:preflight:passed:{{{settings.genesys_client_id}}}"


def await_pass(
    client: redis.Redis,
    settings: Settings,
    *,
    wait_s: float = WAIT_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    prefix: str = "presence",
) -> bool:
    """True when a worker passed with these settings recently, or passes while another worker
    runs its checks (waited for up to ``wait_s``); False when this worker is to check (it then
    holds the claim until :func:`record_passed` or :func:`release`). Never raises."""
    deadline = clock() + wait_s
    while True:
        if passed_recently(client, settings, prefix=prefix):
            return True
        try:
            claimed = client.set(_checking(settings, prefix), 1, nx=True, px=int(wait_s * 1000))
        except redis.RedisError:
            return False
        if claimed or clock() >= deadline:
            return False
        sleep(POLL_S)


def release(client: redis.Redis, settings: Settings, *, prefix: str = "presence") -> None:
    """Give up the claim to check (the checks failed): the next worker checks itself."""
    with contextlib.suppress(redis.RedisError):
        client.delete(_checking(settings, prefix))


def _checking(settings: Settings, prefix: str) -> str:
    return f"{prefix}:preflight:checking:{{{settings.genesys_client_id}}}"


def passed_recently(client: redis.Redis, settings: Settings, *, prefix: str = "presence") -> bool:
    """Whether a worker passed every check with these settings within its reuse window. Never
    raises: when Redis cannot tell, the checks run."""
    try:
        stored = client.get(_key(settings, prefix))
    except redis.RedisError:
        return False
    return isinstance(stored, bytes) and stored.decode() == fingerprint(settings)


def record_passed(
    client: redis.Redis, settings: Settings, reuse_s: float, *, prefix: str = "presence"
) -> None:
    """Mark these settings as passed for ``reuse_s`` seconds. Never raises (an unrecorded pass
    only costs the next worker its checks)."""
    with contextlib.suppress(redis.RedisError), client.pipeline() as pipe:
        pipe.set(_key(settings, prefix), fingerprint(settings), px=max(1, int(reuse_s * 1000)))
        pipe.delete(_checking(settings, prefix))
        pipe.execute()
