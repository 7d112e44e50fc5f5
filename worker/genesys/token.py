"""Client-credentials tokens cached in Redis and shared by every process.

One process renews at a time (a Redis lock); the others wait for the new token to appear.
Renewal happens ``renew_margin`` before expiry, and on a 401 (only if the failing token is still
the cached one, so a burst of 401s renews once).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import deque
from collections.abc import Callable

import httpx
import redis

from worker.genesys.errors import TokenError, TransportError

_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_DROP_IF_SAME = """
local raw = redis.call('GET', KEYS[1])
if raw and cjson.decode(raw)['access_token'] == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class TokenProvider:
    """Hands out a valid bearer token. Thread-safe; never logs or raises with the token inside.

    The token is cached under ``{prefix}:token:{<client id>}`` (``prefix``: the org's key
    prefix)."""

    def __init__(
        self,
        client: redis.Redis,
        http: httpx.Client,
        *,
        login_base: str,
        client_id: str,
        client_secret: str,
        timeout_s: float,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        prefix: str = "presence",
    ) -> None:
        self.redis = client
        self.http = http
        self.url = f"{login_base}/oauth/token"
        self.client_id = client_id
        self._secret = client_secret
        self.timeout_s = timeout_s
        self.clock = clock
        self.sleep = sleep
        self.key = f"{prefix}:token:{{{client_id}}}"
        self.lock_key = f"{prefix}:token:{{{client_id}}}:renewing"
        self._release_lock = client.register_script(_RELEASE_LOCK)
        self._drop_if_same = client.register_script(_DROP_IF_SAME)
        self.renewals = 0
        self._local: tuple[str, float] | None = None  # (token, renew_at)
        # Tokens that answered 401 here: never handed out again, even if a thread that read one
        # just before the 401 puts it back into ``_local`` (or it still sits in Redis).
        self._dead: deque[str] = deque(maxlen=16)

    def get(self) -> str:
        """A token valid for a while yet; renews (once across processes) when needed."""
        local = self._local
        if local is not None and local[1] > self.clock() and local[0] not in self._dead:
            return local[0]
        cached = self._cached()
        if cached is not None:
            return cached
        return self._renew()

    def invalidate(self, token: str) -> None:
        """Forget ``token`` after a 401, unless another process already replaced it."""
        self._dead.append(token)
        if self._local is not None and self._local[0] == token:
            self._local = None
        self._drop_if_same(keys=[self.key], args=[token])

    def _cached(self) -> str | None:
        raw = self.redis.get(self.key)
        if raw is None:
            return None
        data = json.loads(raw)
        if data["renew_at"] <= self.clock():
            return None
        token: str = data["access_token"]
        if token in self._dead:
            return None
        # Held in memory too, so a call costs no Redis round trip; a 401 still clears it.
        self._local = (token, float(data["renew_at"]))
        return token

    def _renew(self) -> str:
        owner = uuid.uuid4().hex
        deadline = time.monotonic() + self.timeout_s * 2
        while True:
            if self.redis.set(self.lock_key, owner, nx=True, px=int(self.timeout_s * 1000) + 1000):
                try:
                    cached = self._cached()  # renewed while we waited for the lock
                    return cached if cached is not None else self._fetch()
                finally:
                    self._release_lock(keys=[self.lock_key], args=[owner])
            if time.monotonic() > deadline:
                raise TransportError(
                    "Timed out waiting for another process to renew the Genesys token"
                )
            self.sleep(0.05)
            cached = self._cached()
            if cached is not None:
                return cached

    def _fetch(self) -> str:
        try:
            response = self.http.post(
                self.url,
                auth=(self.client_id, self._secret),
                data={"grant_type": "client_credentials"},
                timeout=self.timeout_s,
            )
        except httpx.HTTPError as exc:
            raise TransportError(f"Genesys token request failed: {type(exc).__name__}") from None
        if response.status_code != 200:
            try:
                body = response.json()
                reason = (
                    body.get("error_description") or body.get("error") or response.reason_phrase
                )
            except ValueError:
                reason = response.reason_phrase
            raise TokenError(
                f"Genesys refused the client credentials of {self.client_id!r} "
                f"(HTTP {response.status_code}: {reason}); check GENESYS_CLIENT_ID/SECRET",
                status=response.status_code,
            )
        data = response.json()
        lifetime = float(data.get("expires_in", 86_400))
        now = self.clock()
        # Renew with 10 % (at most 5 minutes) of the lifetime left.
        renew_at = now + lifetime - min(300.0, lifetime * 0.1)
        token: str = data["access_token"]
        self.redis.set(
            self.key,
            json.dumps({"access_token": token, "renew_at": renew_at, "expires_at": now + lifetime}),
            ex=max(1, int(lifetime)),
        )
        self._local = (token, renew_at)
        self.renewals += 1
        return token
