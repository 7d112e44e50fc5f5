"""Registered presence sources and the organisation's presence settings.

A user's effective presence is the presence of their primary source. ``PURECLOUD`` (Genesys
Cloud itself) is always available and is nobody's registered source; integrations (Teams, Zoom, a
custom app) are registered sources with ids. An org may make a registered source the default
primary one (``defaultPrimaryPresenceRegisteredSourceId``): then a ``PURECLOUD`` write changes the
``PURECLOUD`` presence only, not the effective one, and produces no presence event.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

PURECLOUD = "PURECLOUD"
# One integration every seeded org has registered (not primary unless configured).
TEAMS_SOURCE_ID = "5b0b8d7e-1c3a-4f6e-9d2b-7a8c9e0f1a2b"
SETTINGS_ID = "3f9e2d1c-0b8a-4c7d-9e6f-5a4b3c2d1e0f"


@dataclass(slots=True)
class RegisteredSource:
    id: str
    name: str
    description: str = ""
    deactivated: bool = False

    def json(self) -> dict[str, Any]:
        """``Source`` as served by ``/api/v2/presence/sources``."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "type": "User",
            "deactivated": self.deactivated,
            "selfUri": f"/api/v2/presence/sources/{self.id}",
        }


@dataclass(slots=True)
class PresenceSources:
    """The org's registered sources and its default primary source (None: ``PURECLOUD``)."""

    registered: dict[str, RegisteredSource] = field(
        default_factory=lambda: {
            TEAMS_SOURCE_ID: RegisteredSource(
                TEAMS_SOURCE_ID, "Microsoft Teams", "Presence synced from Microsoft Teams"
            )
        }
    )
    default_primary: str | None = None

    def resolve(self, raw: str) -> str | None:
        """``PURECLOUD`` (any case) or an active registered source id; None otherwise."""
        if raw.lower() == PURECLOUD.lower():
            return PURECLOUD
        source = self.registered.get(raw)
        return source.id if source is not None and not source.deactivated else None

    def add(self, name: str, description: str = "") -> RegisteredSource:
        source = RegisteredSource(str(uuid.uuid4()), name, description)
        self.registered[source.id] = source
        return source

    def name_of(self, source_id: str) -> str:
        if source_id == PURECLOUD:
            return PURECLOUD
        source = self.registered.get(source_id)
        return source.name if source is not None else source_id

    def settings_json(self) -> dict[str, Any]:
        """``PresenceSettings``."""
        out: dict[str, Any] = {
            "id": SETTINGS_ID,
            "name": "Presence settings",
            "restorePresenceSettings": {
                "enabled": False,
                "restoreTimeMilliseconds": 0,
                "restoreOnQueueEnabled": False,
            },
            "requestingOffQueueEnabled": False,
            "selfUri": "/api/v2/presence/settings",
        }
        if self.default_primary is not None:
            out["defaultPrimaryPresenceRegisteredSourceId"] = self.default_primary
        return out
