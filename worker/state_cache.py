"""The shared view of each agent's current presence, kept in Redis.

Fed by notification events (from every worker process), by PATCH answers and by read-backs.
An entry is replaced only by a newer one (``modifiedDate``), so a late event never rolls the
cache back.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import redis

from worker.genesys.models import UserPresence

# KEYS[1] entry, KEYS[2…] the caller's plain writes. ARGV: json, modified_ms, ttl_s, then each
# plain write's value and ttl_s. Writes the entry when newer than (or as new as) what is stored;
# returns 1 when written. The entry is written with the stored one read back (one command in the
# usual case, a newer change); when the stored one was newer it is put back, inside the same
# script, so no reader ever sees the older entry. The plain writes are made whatever the entry.
_SET_IF_NEWER = """
for j = 1, #KEYS - 1 do
  redis.call('SET', KEYS[j + 1], ARGV[2 + 2 * j], 'EX', tonumber(ARGV[3 + 2 * j]))
end
local cur = redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[3]), 'GET')
if cur and cur ~= ARGV[1] then
  local stored = cjson.decode(cur)['modified_ms']
  if stored and tonumber(stored) > tonumber(ARGV[2]) then
    redis.call('SET', KEYS[1], cur, 'EX', tonumber(ARGV[3]))
    return 0
  end
end
return 1
"""


@dataclass(frozen=True, slots=True)
class AgentState:
    definition_id: str
    system_presence: str  # as the platform spelled it (REST "On Queue" or event "ON_QUEUE")
    modified_ms: int
    seen_via: str  # event | patch | read

    def to_json(self) -> str:
        """The stored form (``AgentState(**json.loads(text))`` reads it back); its fields by name,
        without ``dataclasses.asdict``'s deep copy (written on every update)."""
        return json.dumps({name: getattr(self, name) for name in self.__slots__})


def state_of(presence: UserPresence, seen_via: str) -> AgentState:
    """The cache entry for a presence the platform answered (a write's answer or a read)."""
    modified = presence.modified_date
    return AgentState(
        presence.presence_definition.id,
        presence.presence_definition.system_presence or "",
        int(modified.timestamp() * 1000) if modified is not None else 0,
        seen_via,
    )


# States this process stored lately, so the socket need not store the same change again.
_STORED_HERE_MAX = 4096


class StateCache:
    """Entries under ``{prefix}:state:<user id>`` (``prefix``: the org's key prefix)."""

    def __init__(self, client: redis.Redis, *, ttl_s: int = 3600, prefix: str = "presence") -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self.prefix = prefix
        self._set_if_newer = client.register_script(_SET_IF_NEWER)
        # user id → (definition id, modified ms, monotonic time stored)
        self._stored: OrderedDict[str, tuple[str, int, float]] = OrderedDict()
        self._stored_lock = threading.Lock()

    def stored_here(self, user_id: str, definition_id: str, modified_ms: int) -> bool:
        """Whether this process itself stored exactly this state for the agent lately."""
        with self._stored_lock:
            return self._recent(user_id, definition_id, modified_ms)

    def _recent(self, user_id: str, definition_id: str, modified_ms: int) -> bool:
        """:meth:`stored_here`, with ``_stored_lock`` held."""
        stored = self._stored.get(user_id)
        return (
            stored is not None
            and stored[:2] == (definition_id, modified_ms)
            and time.monotonic() - stored[2] < self.ttl_s / 2  # still there: it outlives this
        )

    def key(self, user_id: str) -> str:
        return f"{self.prefix}:state:{user_id}"

    def get(self, user_id: str) -> AgentState | None:
        raw = self.redis.get(self.key(user_id))
        return AgentState(**json.loads(raw)) if raw is not None else None

    def get_many(self, user_ids: list[str]) -> dict[str, AgentState]:
        """The cached entries of ``user_ids`` (one round trip); agents without one are absent."""
        if not user_ids:
            return {}
        raws = self.redis.mget([self.key(u) for u in user_ids])
        return {u: AgentState(**json.loads(r)) for u, r in zip(user_ids, raws, strict=True) if r}

    def put(
        self,
        user_id: str,
        state: AgentState,
        *,
        also_set: Mapping[str, tuple[str, int]] | None = None,
    ) -> bool:
        """Store ``state`` unless a newer one is already there; True when stored (or when this
        process stored or is storing the same change
        lately: the PATCH answer and the socket event of one write, which arrive together, are
        stored once). ``also_set`` (key → (value, ttl s)): the caller's own plain writes, made
        in the same round trip whatever becomes of ``state``."""
        plain = dict(also_set or {})
        mine: tuple[str, int, float] | None = None
        if state.modified_ms:
            mine = (state.definition_id, state.modified_ms, time.monotonic())
            with self._stored_lock:
                recent = self._recent(user_id, state.definition_id, state.modified_ms)
                if not recent:
                    self._stored[user_id] = mine  # claimed before the write: a twin waits
                    self._stored.move_to_end(user_id)
                    if len(self._stored) > _STORED_HERE_MAX:
                        self._stored.popitem(last=False)
            if recent:
                for key, (value, ttl_s) in plain.items():
                    self.redis.set(key, value, ex=ttl_s)
                return True
        stored = False
        try:
            stored = bool(
                self._set_if_newer(
                    keys=[self.key(user_id), *plain],
                    args=[
                        state.to_json(),
                        state.modified_ms,
                        self.ttl_s,
                        *(part for value_and_ttl in plain.values() for part in value_and_ttl),
                    ],
                )
            )
        finally:
            if mine is not None and not stored:
                with self._stored_lock:
                    if self._stored.get(user_id) is mine:
                        del self._stored[user_id]
        return stored

    def forget(self, user_ids: list[str]) -> None:
        """Drop entries that may have missed events (a socket was down)."""
        if user_ids:
            self.redis.delete(*[self.key(u) for u in user_ids])
            with self._stored_lock:
                for user_id in user_ids:
                    self._stored.pop(user_id, None)
