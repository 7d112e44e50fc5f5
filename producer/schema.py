"""The producer contract: task name, queue and the versioned payload schema.

Changing a field incompatibly requires a new ``version``; the worker keeps accepting the old one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

SCHEMA_VERSION: Literal[1] = 1
TASK_NAME = "presence.update"
WAVE_TASK_NAME = "presence.wave"  # many agents at once, applied with bulk PUTs
QUEUE = "presence"  # the default org's queue; see queue_for
WAVE_MAX_AGENTS = 1000  # a notification channel's topic limit: one subscription call per wave

DEFAULT_ORG = "default"  # the org of the single-org settings (GENESYS_*)
ORG_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,39}$"
ORG_HINT = "lower-case letters, digits, - and _, starting with a letter or digit, at most 40"
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
ShortText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


def check_user_id(value: str) -> str:
    """``value`` when it is a Genesys user id (a UUID); raises ValueError saying what one is."""
    if not re.fullmatch(UUID_PATTERN, value):
        raise ValueError(
            f"{value[:60]!r} is not a Genesys user id (a UUID such as "
            "3ce84f47-4e65-4756-a815-67a2b32e58b8)"
        )
    return value


def check_org(value: str) -> str:
    """``value`` when it is an org name (``ORG_NAME_PATTERN``); raises ValueError saying what one
    is."""
    if not isinstance(value, str) or not re.fullmatch(ORG_NAME_PATTERN, value):
        raise ValueError(f"{str(value)[:60]!r} is not an org name ({ORG_HINT})")
    return value


def queue_for(org: str) -> str:
    """The queue an org's ``presence.update`` and ``presence.wave`` messages go to:
    ``"presence"`` for the default org, ``"presence.<org>"`` for any other. Raises ValueError for
    a name that is no org name."""
    check_org(org)
    return QUEUE if org == DEFAULT_ORG else f"{QUEUE}.{org}"


def org_of_queue(queue: str) -> str | None:
    """The org whose queue ``queue`` is (the inverse of :func:`queue_for`); None for a name that
    is no org's queue."""
    if queue == QUEUE:
        return DEFAULT_ORG
    prefix, dot, org = queue.partition(".")
    if prefix == QUEUE and dot and re.fullmatch(ORG_NAME_PATTERN, org) and org != DEFAULT_ORG:
        return org
    return None


class PresenceUpdate(BaseModel):
    """Set one agent's Genesys Cloud presence.

    ``state`` names a system presence ("On Queue", "Break", …), an org presence label ("Coffee")
    or a presence definition id. ``reason`` picks a secondary presence of that system presence.
    ``expected_state``, when given, makes the change a compare-and-set. Among requests for the
    same agent the one with the newest ``requested_at`` wins; older ones end ``superseded``.
    A change that takes the agent off queue passes the capacity guard: ``capacity_policy``
    ``reject`` (default) refuses when a queue would be understaffed, ``defer`` waits for room until
    ``defer_until``, ``force`` bypasses the guard and records ``force_reason``. ``org`` names the
    Genesys org (as the workers configure it) the agent belongs to; left out, it is ``default``.
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    version: Literal[1] = SCHEMA_VERSION
    user_id: Annotated[str, Field(json_schema_extra={"pattern": UUID_PATTERN})]
    state: ShortText
    reason: ShortText | None = None
    expected_state: ShortText | None = None
    source: ShortText = "api"
    requested_at: datetime
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    message: Annotated[str, StringConstraints(max_length=500)] | None = None
    capacity_policy: Literal["reject", "defer", "force"] = "reject"
    defer_until: datetime | None = None
    force_reason: ShortText | None = None
    # Set by `presence requeue`: the original request's identity (its idempotency key, else its
    # request id), whose place in the agent's ordering the copy takes.
    requeue_of: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    org: Annotated[str, Field(json_schema_extra={"pattern": ORG_NAME_PATTERN})] = DEFAULT_ORG

    @field_validator("user_id")
    @classmethod
    def _user_id(cls, value: str) -> str:
        return check_user_id(value)

    @field_validator("org")
    @classmethod
    def _org(cls, value: str) -> str:
        return check_org(value)

    @field_validator("idempotency_key", "requeue_of")
    @classmethod
    def _key_is_text(cls, value: str | None) -> str | None:
        # The key identifies the request in the database, where NUL cannot be stored.
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    @field_validator("requested_at", "defer_until", mode="before")
    @classmethod
    def _iso_text(cls, value: Any) -> Any:
        # Lax parsing would read 1 or true as a Unix time: only ISO-8601 text is a timestamp.
        if isinstance(value, bool | int | float):
            raise ValueError("must be an ISO-8601 timestamp with a timezone, not a number")
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _exact_version(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be the integer 1")
        return value

    @field_validator("requested_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("requested_at must carry a timezone, e.g. 2026-01-01T09:00:00Z")
        return value

    @field_validator("defer_until")
    @classmethod
    def _aware_deadline(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("defer_until must carry a timezone")
        return value

    @model_validator(mode="after")
    def _force_needs_reason(self) -> PresenceUpdate:
        if self.capacity_policy == "force" and not self.force_reason:
            raise ValueError("capacity_policy 'force' needs a force_reason (it is recorded)")
        return self

    def to_message(self) -> dict[str, Any]:
        """The JSON-safe dict that travels as the task's single argument."""
        data: dict[str, Any] = json.loads(self.model_dump_json(exclude_none=True))
        if data.get("capacity_policy") == "reject":
            del data["capacity_policy"]  # the default: messages stay as small as before
        if data.get("org") == DEFAULT_ORG:
            del data["org"]  # likewise: a default org's message is what it was before orgs
        return data


def error_location(loc: tuple[int | str, ...], whole: str) -> str:
    """Where a validation error is, on one line: the path's parts joined by dots (a part that is
    not printable text shown quoted and escaped), or ``whole`` for the whole input."""
    parts = [p if isinstance(p, str) and p.isprintable() else repr(p) for p in loc]
    return ".".join(str(p) for p in parts) or whole


def invalid_message(exc: ValidationError) -> str:
    """One line saying what is wrong with a payload, field by field."""
    parts = []
    for error in exc.errors():
        parts.append(f"{error_location(error['loc'], 'payload')}: {error['msg']}")
    return "Invalid payload — " + "; ".join(parts)


def org_of(payload: object) -> str:
    """The org a raw payload names when it names a valid one, else ``DEFAULT_ORG`` (also for
    a payload that is not an object): what an audit row records even for an invalid payload."""
    org = payload.get("org") if isinstance(payload, dict) else None
    if isinstance(org, str) and re.fullmatch(ORG_NAME_PATTERN, org.strip()):
        return org.strip()
    return DEFAULT_ORG


def json_schema() -> dict[str, Any]:
    """The payload's JSON Schema, for producers in other languages."""
    return PresenceUpdate.model_json_schema()


def wave_element(request_id: str, update: dict[str, Any]) -> dict[str, Any]:
    """One element of a ``presence.wave`` message (``args == [[element, …]]``): the request id
    its audit row will carry and a PresenceUpdate payload (``PresenceUpdate.to_message()``).
    Every element of one wave belongs to the same org (the ``org`` of its ``update``), the org
    whose queue (:func:`queue_for`) the wave is sent to."""
    return {"request_id": request_id, "update": update}


def wave_org(elements: Sequence[Any]) -> str:
    """The org of a wave: its first element's (:func:`org_of` of its ``update``; any input)."""
    first = elements[0] if elements else None
    return org_of(first.get("update") if isinstance(first, dict) else None)
