"""Emulator settings: fixed at start (world shape) or adjustable at run time (limits, timings)."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

ALL_PERMISSIONS = "*"
DEFAULT_ORG = "default"
ORG_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


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


def org_client_id(org: str) -> str:
    """The OAuth client id an extra org is created with (``presence-worker-<org>``)."""
    return f"presence-worker-{org}"


def org_client_secret(org: str) -> str:
    """That client's secret (``emulator-secret-<org>``): a sandbox credential, printed on start."""
    return f"emulator-secret-{org}"


def org_seed(seed: int, org: str) -> int:
    """The seed an extra org's world is built from: stable, and different for every name."""
    return seed + zlib.crc32(org.encode())


@dataclass(frozen=True, slots=True)
class OrgSpec:
    """An org besides ``default``; None fields take the default org's value (the seed one
    derived from the name, so every org has its own users, queues and presences)."""

    name: str
    users: int | None = None
    queues: int | None = None
    seed: int | None = None
    rate_limit_per_minute: int | None = None

    def shape(self, default: WorldShape) -> WorldShape:
        return WorldShape(
            users=self.users if self.users is not None else default.users,
            queues=self.queues if self.queues is not None else default.queues,
            seed=self.seed if self.seed is not None else org_seed(default.seed, self.name),
        )


def parse_org(text: str) -> OrgSpec:
    """``NAME[,users=N][,queues=N][,seed=N][,rate-limit=N]`` as given to ``--org``.

    Raises ValueError with a one-line reason.
    """
    name, *options = [part.strip() for part in text.split(",")]
    if not ORG_NAME.match(name):
        raise ValueError(
            f"org name {name!r} must be 1-40 lowercase letters, digits or dashes "
            "(starting with a letter or digit)"
        )
    if name == DEFAULT_ORG:
        raise ValueError(f"org name {DEFAULT_ORG!r} is taken by the org every emulator serves")
    values: dict[str, int] = {}
    keys = {"users": "users", "queues": "queues", "seed": "seed", "rate-limit": "rate_limit"}
    for option in options:
        key, sep, raw = option.partition("=")
        if not sep or key not in keys:
            raise ValueError(f"org option {option!r}: expected one of {', '.join(keys)} =N")
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"org option {option!r}: {raw!r} is not an integer") from None
        low = 1 if key == "users" else 0 if key != "seed" else None
        if low is not None and value < low:
            raise ValueError(f"org option {option!r}: must be at least {low}")
        values[keys[key]] = value
    return OrgSpec(
        name,
        users=values.get("users"),
        queues=values.get("queues"),
        seed=values.get("seed"),
        rate_limit_per_minute=values.get("rate_limit"),
    )


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
    # Orgs served beside ``default``, each with its own world, client, budget and channels.
    orgs: tuple[OrgSpec, ...] = ()
    # Every extra org's users carry ``default``'s user ids (in listing order), as when one
    # fleet serves orgs whose ids could be confused; their state stays their org's own.
    shared_user_ids: bool = False
