"""Request bodies the emulator validates, shaped like the platform's models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr


class _Body(BaseModel):
    # Unknown fields are ignored, as the platform ignores them; types are strict.
    model_config = ConfigDict(extra="ignore", strict=True)


class DefinitionRef(_Body):
    id: StrictStr


class PresencePatch(_Body):
    """``UserPresence`` as a PATCH body: each part optional, at least one present."""

    presenceDefinition: DefinitionRef | None = None
    message: StrictStr | None = None
    primary: StrictBool | None = None
    source: StrictStr | None = None


class BulkPresence(_Body):
    """``MutableUserPresence``: ``id`` is the user's id."""

    id: StrictStr
    presenceDefinition: DefinitionRef
    source: StrictStr | None = None
    sourceId: StrictStr | None = None
    message: StrictStr | None = None
    primary: StrictBool | None = None


class RoutingStatusPut(_Body):
    status: Literal["OFF_QUEUE", "IDLE", "INTERACTING", "NOT_RESPONDING", "COMMUNICATING"]


class TopicRef(_Body):
    id: StrictStr


class Predicate(_Body):
    type: Literal["dimension", "property", "metric"] = "dimension"
    dimension: StrictStr | None = None
    operator: Literal["matches", "exists", "notExists"] = "matches"
    value: StrictStr | None = None


class Clause(_Body):
    type: Literal["and", "or"]
    predicates: list[Predicate] = Field(default_factory=list)


class ObservationFilter(_Body):
    type: Literal["and", "or"]
    clauses: list[Clause] = Field(default_factory=list)
    predicates: list[Predicate] = Field(default_factory=list)


ObservationMetric = Literal[
    "oActiveUsers",
    "oAlerting",
    "oInteracting",
    "oMemberUsers",
    "oOffQueueUsers",
    "oOnQueueUsers",
    "oUserPresences",
    "oUserRoutingStatuses",
    "oWaiting",
]


class ObservationQuery(_Body):
    filter: ObservationFilter
    metrics: list[ObservationMetric] = Field(min_length=1)
    detailMetrics: list[ObservationMetric] = Field(default_factory=list)
