"""Emulator settings: fixed at start (world shape) or adjustable at run time (limits, timings)."""

from __future__ import annotations

from dataclasses import dataclass, field

ALL_PERMISSIONS = "*"


@dataclass(frozen=True, slots=True)
class WorldShape:
    """What the seeded organisation looks like; the same seed always builds the same org."""

    users: int = 1000
    queues: int = 20
    seed: int = 42


@dataclass(slots=True)
class Limits:
    """Platform limits and timings. Mutable at run time through ``PUT /__emulator/settings``."""

    token_lifetime_s: int = 86_400
    # Requests per rolling 60 s per token; 0 turns the limit off (counting goes on).
    rate_limit_per_minute: int = 300
    bulk_max: int = 50
    heartbeat_s: float = 30.0
    channel_ttl_s: float = 86_400.0
    max_channels: int = 20
    max_topics: int = 1_000
    max_body_bytes: int = 512_000
    # Grace between `v2.system.socket_closing` and the close itself.
    socket_closing_grace_s: float = 60.0
    # A channel ends (``token_revoked``, then close) when the token that created it does.
    token_bound_channels: bool = True
    # > 0: a PATCH of a definition is applied this much later, shown meanwhile as
    # ``futurePresenceDefinition`` (as the platform does for a change it defers).
    presence_defer_s: float = 0.0


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """Everything the emulator needs to start."""

    host: str = "127.0.0.1"
    port: int = 8080
    world: WorldShape = field(default_factory=WorldShape)
    limits: Limits = field(default_factory=Limits)
    client_id: str = "presence-worker"
    client_secret: str = "emulator-secret"  # noqa: S105 - a sandbox credential, printed on start
    wfm_secret: str = "wfm-sink-secret"  # noqa: S105 - the sink's HMAC key, sandbox only
