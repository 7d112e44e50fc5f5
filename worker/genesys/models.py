"""The few platform shapes the worker reads, validated leniently (unknown fields ignored)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class DefinitionRef(_Model):
    id: str
    system_presence: str | None = Field(default=None, alias="systemPresence")


class UserPresence(_Model):
    """``UserPresence`` from GET/PATCH ``/api/v2/users/{id}/presences/purecloud``."""

    presence_definition: DefinitionRef = Field(alias="presenceDefinition")
    message: str | None = None
    modified_date: datetime | None = Field(default=None, alias="modifiedDate")
    # False when the written source is not the agent's primary one: the effective presence
    # (what routing and other clients see) did not change.
    primary: bool | None = None


class PresenceDefinition(_Model):
    """``OrganizationPresenceDefinition`` from ``/api/v2/presence/definitions``."""

    id: str
    type: str  # System | User
    system_presence: str = Field(alias="systemPresence")  # OnQueue spelling
    language_labels: dict[str, str] = Field(default_factory=dict, alias="languageLabels")
    deactivated: bool = False

    @property
    def label(self) -> str:
        return self.language_labels.get("en_US") or next(
            iter(self.language_labels.values()), self.id
        )


class Channel(_Model):
    id: str
    connect_uri: str = Field(alias="connectUri")
    expires: datetime | None = None
