"""Presence definitions: the ten system presences and the org's secondary presences.

Each surface of the platform spells a system presence differently (reference §2.3):
``/api/v2/presencedefinitions`` and user presence reads say "On Queue", the newer
``/api/v2/presence/definitions`` says "OnQueue", notification events say "ON_QUEUE".
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import Enum
from typing import Any

CREATED_DATE = "2020-01-01T00:00:00.000Z"
HOME_DIVISION_ID = "b3a2c1d0-0000-4000-8000-000000000001"


class SystemPresence(Enum):
    """A system presence; the value is the title-case REST spelling."""

    AVAILABLE = "Available"
    AWAY = "Away"
    BUSY = "Busy"
    OFFLINE = "Offline"
    IDLE = "Idle"
    ON_QUEUE = "On Queue"
    MEAL = "Meal"
    TRAINING = "Training"
    MEETING = "Meeting"
    BREAK = "Break"

    @property
    def rest(self) -> str:
        """Spelling on ``/api/v2/presencedefinitions`` and user presence reads."""
        return self.value

    @property
    def enum_name(self) -> str:
        """Spelling on ``/api/v2/presence/definitions`` (``OnQueue``)."""
        return self.value.replace(" ", "")

    @property
    def event(self) -> str:
        """Spelling in notification events and analytics (``ON_QUEUE``)."""
        return self.name

    @classmethod
    def parse(cls, text: str) -> SystemPresence | None:
        """Accept any of the three spellings, case-insensitively."""
        key = text.replace(" ", "").replace("_", "").lower()
        for member in cls:
            if member.enum_name.lower() == key:
                return member
        return None


# Primary ids seen across unrelated orgs (reference §2.2); the platform treats them as global.
SYSTEM_IDS: dict[SystemPresence, str] = {
    SystemPresence.AVAILABLE: "6a3af858-942f-489d-9700-5f9bcdcdae9b",
    SystemPresence.BUSY: "31fe3bac-dea6-44b7-bed7-47f91660a1a0",
    SystemPresence.IDLE: "7ffa01cd-7866-4ad7-8faa-31e11b42f51f",
    SystemPresence.AWAY: "5e5c5c66-ea97-4e7f-ac41-6424784829f2",
    SystemPresence.MEETING: "bbdff279-7ae1-48ea-bade-7831d7234c64",
    SystemPresence.MEAL: "3fd96123-badb-4f69-bc03-1b1ccc6d8014",
    SystemPresence.TRAINING: "d2390a99-8546-bad9-8f0a-219548e8aeb0",
    SystemPresence.ON_QUEUE: "e08eaf1b-ee47-4fa9-a231-1200e284798f",
    SystemPresence.BREAK: "227b37e2-f1d0-4dd0-8f50-badd7cf6d158",
    SystemPresence.OFFLINE: "ccf3c10a-aa2c-4845-8e8d-f59fa48c58e5",
}

_SECONDARY_NAMESPACE = uuid.UUID("5f1d1c8e-6a0b-4d7e-9a55-3c2f61b0a7e4")

# (label, system presence, deactivated)
SECONDARY: tuple[tuple[str, SystemPresence, bool], ...] = (
    ("Lunch", SystemPresence.MEAL, False),
    ("Coffee", SystemPresence.BREAK, False),
    ("Team Meeting", SystemPresence.MEETING, False),
    ("Pre-Break", SystemPresence.BUSY, False),
    ("Coaching", SystemPresence.TRAINING, False),
    ("Personal Time", SystemPresence.AWAY, False),
    ("Smoke Break", SystemPresence.BREAK, True),
    ("Legacy Lunch", SystemPresence.MEAL, True),
)


@dataclass(frozen=True, slots=True)
class PresenceDefinition:
    """One definition, system (primary) or org-defined (secondary)."""

    id: str
    label: str
    system: SystemPresence
    primary: bool
    deactivated: bool = False

    def legacy_json(self) -> dict[str, Any]:
        """``OrganizationPresence`` as served by ``/api/v2/presencedefinitions``."""
        return {
            "id": self.id,
            "name": self.label,
            "languageLabels": {"en_US": self.label},
            "systemPresence": self.system.rest,
            "deactivated": self.deactivated,
            "primary": self.primary,
            "createdDate": CREATED_DATE,
            "modifiedDate": CREATED_DATE,
            "selfUri": f"/api/v2/presencedefinitions/{self.id}",
        }

    def new_json(self) -> dict[str, Any]:
        """``OrganizationPresenceDefinition`` as served by ``/api/v2/presence/definitions``."""
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.label,
            "type": "System" if self.primary else "User",
            "languageLabels": {"en_US": self.label},
            "systemPresence": self.system.enum_name,
            "deactivated": self.deactivated,
            "selfUri": f"/api/v2/presence/definitions/{self.id}",
        }
        if not self.primary:
            out["divisionId"] = HOME_DIVISION_ID
        return out

    def reference_json(self) -> dict[str, Any]:
        """The ``PresenceDefinition`` reference inside a ``UserPresence``."""
        return {
            "id": self.id,
            "systemPresence": self.system.rest,
            "selfUri": f"/api/v2/presencedefinitions/{self.id}",
        }

    def event_json(self) -> dict[str, Any]:
        """The reference inside a ``v2.users.{id}.presence`` event."""
        return {"id": self.id, "systemPresence": self.system.event}


class DefinitionCatalog:
    """All definitions of the org, in listing order (system first).

    System ids are the platform's global ones in every org; secondary ids are the org's own
    (``default`` keeps its historical ids, another org's are derived from its name).
    """

    def __init__(self, org: str | None = None) -> None:
        self.ordered: list[PresenceDefinition] = [
            PresenceDefinition(
                id=SYSTEM_IDS[system], label=system.rest, system=system, primary=True
            )
            for system in SystemPresence
        ]
        for label, system, deactivated in SECONDARY:
            self.ordered.append(
                PresenceDefinition(
                    id=str(uuid.uuid5(_SECONDARY_NAMESPACE, f"{org}/{label}" if org else label)),
                    label=label,
                    system=system,
                    primary=False,
                    deactivated=deactivated,
                )
            )
        self.by_id = {d.id: d for d in self.ordered}

    def system(self, system: SystemPresence) -> PresenceDefinition:
        return self.by_id[SYSTEM_IDS[system]]

    def find(self, ref: str) -> PresenceDefinition | None:
        """A definition by id, label (case-insensitive) or system presence spelling."""
        if ref in self.by_id:
            return self.by_id[ref]
        system = SystemPresence.parse(ref)
        if system is not None:
            return self.system(system)
        lowered = ref.lower()
        for definition in self.ordered:
            if definition.label.lower() == lowered:
                return definition
        return None

    def system_to_organization(self) -> dict[str, list[str]]:
        """``systemToOrganizationMappings`` of a queue observation response."""
        out: dict[str, list[str]] = {}
        for definition in self.ordered:
            if not definition.deactivated:
                out.setdefault(definition.system.event, []).append(definition.id)
        return out
