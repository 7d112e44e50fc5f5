"""Notification channel slots, budgeted per OAuth client through Redis.

The platform allows 20 channels per client and evicts the oldest idle one beyond that, so the
fleet claims at most ``max_slots`` (default 16, leaving room for other tools). A process without
a slot confirms by read-back instead.
"""

from __future__ import annotations

import uuid

import redis

# KEYS[1] zset of owner → lease expiry (ms). ARGV: owner, max, lease_ms.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
  return 1
end
return 0
"""


class ChannelSlots:
    """The fleet's slots of one OAuth client (``key``) under ``{prefix}:channels:`` (``prefix``:
    the org's key prefix)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        key: str,
        max_slots: int,
        lease_s: float = 120.0,
        prefix: str = "presence",
    ) -> None:
        self.redis = client
        self.key = f"{prefix}:channels:{{{key}}}:slots"
        self.max_slots = max_slots
        self.lease_ms = int(lease_s * 1000)
        self.owner = uuid.uuid4().hex
        self._claim = client.register_script(_CLAIM)

    def claim(self) -> bool:
        """Claim or renew this process's slot; False when the fleet's slots are all taken."""
        if self.max_slots <= 0:
            return False
        return bool(self._claim(keys=[self.key], args=[self.owner, self.max_slots, self.lease_ms]))

    def release(self) -> None:
        self.redis.zrem(self.key, self.owner)

    def in_use(self) -> int:
        return int(self.redis.zcard(self.key))
