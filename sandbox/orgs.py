"""Several orgs for a local stack: the orgs file the workers read, and payloads addressed to an org.

The emulator serves each extra org with its own OAuth client (``presence-worker-<org>`` /
``emulator-secret-<org>``, :func:`emulator.config.org_client_id`); :func:`write_orgs_file` writes
the TOML the workers load through ``ORGS_FILE`` from those credentials. Secrets never go into the
file: each org's secret travels in an environment variable the file names
(``client_secret_env``), returned beside the file's path for the workers' environment.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery

from emulator.launcher import EmulatorProcess
from producer.schema import DEFAULT_ORG, ORG_NAME_PATTERN, TASK_NAME, PresenceUpdate, queue_for
from worker.orgs import SETTING_KEYS

# The worker's org names (the emulator's are a subset: no underscore).
ORG_NAME = re.compile(ORG_NAME_PATTERN)
# Optional per-org keys of the orgs file (besides api_url/region, client_id, client_secret_env).
ORG_OPTIONS = frozenset({*SETTING_KEYS, "wfm_webhook_secret_env"})


def secret_env(org: str) -> str:
    """The environment variable holding ``org``'s client secret: ``ORG_<NAME>_GENESYS_CLIENT_SECRET``."""
    return f"ORG_{org.upper().replace('-', '_')}_GENESYS_CLIENT_SECRET"


@dataclass(frozen=True)
class OrgEntry:
    """One ``[orgs.<name>]`` table: where the org is, its client, and optional per-org settings
    (keys of :data:`ORG_OPTIONS`)."""

    name: str
    api_url: str
    client_id: str
    client_secret: str
    options: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not ORG_NAME.match(self.name):
            raise ValueError(f"org name {self.name!r} is not a valid org name")
        unknown = set(self.options) - ORG_OPTIONS
        if unknown:
            raise ValueError(f"unknown org option(s): {', '.join(sorted(unknown))}")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string
    raise TypeError(f"cannot write {type(value).__name__} to the orgs file")


def orgs_toml(entries: Iterable[OrgEntry]) -> str:
    """The orgs file's text: one table per org, its secret named by variable, never written."""
    out: list[str] = []
    for entry in entries:
        out.append(f"[orgs.{entry.name}]")
        out.append(f"api_url = {_toml_value(entry.api_url)}")
        out.append(f"client_id = {_toml_value(entry.client_id)}")
        out.append(f"client_secret_env = {_toml_value(secret_env(entry.name))}")
        out.extend(f"{key} = {_toml_value(value)}" for key, value in sorted(entry.options.items()))
        out.append("")
    return "\n".join(out)


def write_orgs_file(path: Path, entries: Iterable[OrgEntry]) -> dict[str, str]:
    """Write the orgs file at ``path``; returns the workers' environment for it: ``ORGS_FILE``
    and each org's secret variable."""
    entries = list(entries)
    path.write_text(orgs_toml(entries))
    env = {"ORGS_FILE": str(path)}
    env.update({secret_env(e.name): e.client_secret for e in entries})
    return env


def emulator_entries(
    emulator: EmulatorProcess,
    orgs: Iterable[str] | None = None,
    options: Mapping[str, Mapping[str, object]] | None = None,
) -> list[OrgEntry]:
    """The orgs file's entries for the emulator's extra orgs (all of them unless ``orgs``
    names some), with their clients' credentials; ``options``: per-org settings by name."""
    names = [n for n in emulator.org_names if n != DEFAULT_ORG] if orgs is None else list(orgs)
    options = options or {}
    entries = []
    for name in names:
        client_id, client_secret = emulator.credentials(name)
        entries.append(
            OrgEntry(name, emulator.base_url, client_id, client_secret, options.get(name, {}))
        )
    return entries


def org_message(update: PresenceUpdate | Mapping[str, Any], org: str) -> dict[str, Any]:
    """The task argument for ``update`` in ``org``: schema version 1 with ``org`` set (left out
    for ``default``, so a default-org message is byte for byte today's)."""
    message = dict(update.to_message() if isinstance(update, PresenceUpdate) else update)
    if org != DEFAULT_ORG:
        message["org"] = org
    return message


def send_to_org(
    app: Celery,
    org: str,
    updates: Iterable[PresenceUpdate | Mapping[str, Any]],
    *,
    task_ids: Iterable[str] | None = None,
) -> list[str]:
    """Enqueue ``presence.update`` for each update on ``org``'s queue over one connection;
    returns the request ids (``task_ids`` when given, else fresh ones)."""
    given = iter(task_ids) if task_ids is not None else None
    ids = []
    with app.producer_or_acquire() as producer:
        for update in updates:
            task_id = next(given) if given is not None else str(uuid.uuid4())
            app.send_task(
                TASK_NAME,
                args=[org_message(update, org)],
                queue=queue_for(org),
                task_id=task_id,
                producer=producer,
            )
            ids.append(task_id)
    return ids
