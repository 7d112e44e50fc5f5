"""The Genesys orgs a fleet serves: ``default`` from the environment settings, more from the
TOML file ``ORGS_FILE`` names.

Each :class:`Org` carries the global settings with its own fields substituted (Genesys URL,
OAuth client, budget, channel slots, rules files, WFM webhook), its Redis key prefix and its
queue. Secrets are never in the file: it names the environment variable holding each one.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from producer.schema import DEFAULT_ORG, ORG_NAME_PATTERN, org_of, queue_for
from worker.names import org_key_prefix
from worker.observability.metrics import OTHER_ORG
from worker.problems import Problem
from worker.settings import REGION_DOMAINS, Settings, get_settings

__all__ = ["DEFAULT_ORG", "Org", "OrgsError", "UnknownOrg", "get_orgs", "load_orgs", "org_of"]

RESERVED_NAME = OTHER_ORG

SETTING_KEYS = (
    "rate_limit_per_minute",
    "rate_limit_headroom",
    "channel_slots",
    "transition_matrix_file",
    "capacity_overrides_file",
    "wfm_webhook_url",
)
"""Optional keys of an org's table that replace the setting of the same name as they are."""

MULTI_ORG_INLINE_WAIT_S = 0.05
"""A process serving several orgs never parks a thread on one org's budget for longer: a wait
re-schedules, so an org out of budget leaves every thread to the others."""


class OrgsError(Problem, ValueError):
    """The orgs file cannot be used; the message is one line naming the file, org and field."""


class UnknownOrg(LookupError):
    """A request names an org this worker is not configured for."""

    def __init__(self, org: str, known: list[str]) -> None:
        super().__init__(f"org {org!r} is not configured here; known orgs: {', '.join(known)}")
        self.org = org
        self.known = known


def _refuse_shared_clients(orgs: Mapping[str, Org]) -> None:
    """Two orgs on one OAuth client would keep two budgets for one platform limit (429s)."""
    seen: dict[tuple[str, str], str] = {}
    for name, org in orgs.items():
        try:
            client = (org.settings.api_base, org.settings.genesys_client_id)
        except ValueError:
            continue  # no address yet: the default org's own checks say so
        if client in seen:
            raise OrgsError(
                f"ORGS_FILE: orgs {seen[client]} and {name} use the same OAuth client; one "
                "client has one budget, so serve it as one org"
            )
        seen[client] = name


@dataclass(frozen=True)
class Org:
    """One org: ``settings`` are what this org's runtime reads (the global settings with the
    org's fields substituted)."""

    name: str
    settings: Settings

    @property
    def prefix(self) -> str:
        """Its Redis keys' prefix (``presence`` for ``default``: the single-org keys)."""
        return org_key_prefix(self.name)

    @property
    def queue(self) -> str:
        """The queue its updates and waves are sent to."""
        return queue_for(self.name)


class _Entry(BaseModel):
    """One ``[orgs.NAME]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    region: str | None = None
    api_url: str | None = None
    client_id: str = Field(min_length=1)
    client_secret_env: str = Field(min_length=1)
    rate_limit_per_minute: int | None = Field(default=None, gt=0)
    rate_limit_headroom: float | None = Field(default=None, ge=0.0, lt=1.0)
    channel_slots: int | None = Field(default=None, gt=0)
    transition_matrix_file: Path | None = None
    capacity_overrides_file: Path | None = None
    wfm_webhook_url: str | None = None
    wfm_webhook_secret_env: str | None = None

    @model_validator(mode="after")
    def _one_address(self) -> _Entry:
        if (self.region is None) == (self.api_url is None):
            raise ValueError("set exactly one of region and api_url")
        if self.region is not None and self.region not in REGION_DOMAINS:
            raise ValueError(
                f"region is not a known region; use one of {', '.join(REGION_DOMAINS)}"
            )
        return self


def _secret(name: str, variable: str, field: str) -> str:
    value = os.environ.get(variable, "")
    if not value:
        raise OrgsError(
            f"ORGS_FILE: org {name}: {field} names {variable}, which is not set in the environment"
        )
    return value


def _org_settings(base: Settings, name: str, entry: _Entry) -> Settings:
    values: dict[str, Any] = dict(base)
    values.update(
        genesys_region=entry.region,
        genesys_api_url=entry.api_url,
        genesys_client_id=entry.client_id,
        genesys_client_secret=_secret(name, entry.client_secret_env, "client_secret_env"),
    )
    for field in SETTING_KEYS:
        value = getattr(entry, field)
        if value is not None:
            values[field] = value
    if entry.wfm_webhook_secret_env is not None:
        values["wfm_webhook_secret"] = _secret(
            name, entry.wfm_webhook_secret_env, "wfm_webhook_secret_env"
        )
    elif entry.wfm_webhook_url is not None:
        values["wfm_webhook_secret"] = ""  # never another endpoint's key (the checks warn)
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise OrgsError(f"ORGS_FILE: org {name}: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    # The field and the rule, never the input (it may be a secret).
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def _read(path: Path) -> Mapping[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise OrgsError(f"ORGS_FILE: {path} does not exist") from None
    except OSError as exc:
        raise OrgsError(f"ORGS_FILE: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise OrgsError(f"ORGS_FILE: {path} is not valid TOML: {exc}") from None
    orgs = data.get("orgs")
    if not isinstance(orgs, dict) or not orgs or set(data) - {"orgs"}:
        raise OrgsError(f"ORGS_FILE: {path} must hold [orgs.NAME] tables and nothing else")
    return orgs


def load_orgs(settings: Settings) -> dict[str, Org]:
    """Every org, by name, ``default`` first when it is served. Without ``ORGS_FILE``: the one
    ``default`` org of the environment settings. With it: its orgs, plus ``default`` from the
    environment when the file does not define one and ``GENESYS_CLIENT_ID`` is set.

    Raises OrgsError (one line naming the file, the org and the field; never a value)."""
    if settings.orgs_file is None:
        return {DEFAULT_ORG: Org(DEFAULT_ORG, settings)}
    entries: dict[str, Org] = {}
    for name, table in _read(settings.orgs_file).items():
        if not re.fullmatch(ORG_NAME_PATTERN, name):
            raise OrgsError(
                f"ORGS_FILE: org name {name!r} must be lower-case letters, digits, - or _ "
                "(at most 40, starting with a letter or digit)"
            )
        if name == RESERVED_NAME:
            raise OrgsError(
                f"ORGS_FILE: the org name {RESERVED_NAME!r} is reserved (metrics count every "
                "unconfigured org under it); choose another"
            )
        if not isinstance(table, dict):
            raise OrgsError(f"ORGS_FILE: [orgs.{name}] must be a table")
        try:
            entry = _Entry.model_validate(table)
        except ValidationError as exc:
            raise OrgsError(f"ORGS_FILE: org {name}: {_first_error(exc)}") from None
        entries[name] = Org(name, _org_settings(settings, name, entry))
    orgs: dict[str, Org] = {}
    if DEFAULT_ORG not in entries and settings.genesys_client_id:
        orgs[DEFAULT_ORG] = Org(DEFAULT_ORG, settings)
    orgs.update(entries)
    _refuse_shared_clients(orgs)
    if len(orgs) > 1:
        orgs = {
            name: Org(
                name,
                org.settings.model_copy(
                    update={
                        "limiter_max_inline_wait_s": min(
                            org.settings.limiter_max_inline_wait_s, MULTI_ORG_INLINE_WAIT_S
                        )
                    }
                ),
            )
            for name, org in orgs.items()
        }
    return orgs


_loaded: tuple[Settings, dict[str, Org]] | None = None


def get_orgs() -> dict[str, Org]:
    """The orgs of the process's settings (``get_settings()``), read once per settings object;
    raises OrgsError."""
    global _loaded
    settings = get_settings()
    if _loaded is None or _loaded[0] is not settings:
        _loaded = (settings, load_orgs(settings))
    return _loaded[1]
