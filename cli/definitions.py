"""Importers' check of states and reasons against the org's current presence definitions.

The definitions come through the worker's own catalog (one Genesys call per ten minutes for the
whole fleet, cached in Redis), so an import spends at most one request of the shared budget (and
a token request when no token is cached).
Without Genesys settings nothing is checked and the note says so: the worker then rejects an
unknown state or reason when it applies the row (audit outcome ``invalid``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import redis

from cli.render import safe_url
from worker.catalog import Definition, PresenceCatalog, UnknownPresence
from worker.genesys.connect import genesys_client, http_client, missing_settings
from worker.genesys.errors import GenesysError
from worker.limiter import BudgetExhausted
from worker.names import DEFAULT_ORG, org_key_prefix
from worker.orgs import OrgsError, load_orgs
from worker.settings import Settings

NOT_CHECKED_HERE = "the worker rejects unknown ones when it applies each row"


class DefinitionsUnavailable(Exception):
    """The definitions could not be fetched; the message is one line naming what to fix."""


@dataclass(frozen=True, slots=True)
class DefinitionCheck:
    """Checks one row's state and reason; ``catalog`` is None when nothing is checked."""

    catalog: PresenceCatalog | None
    note: str  # one line: what was checked against, or why nothing was

    def problem(self, state: str, reason: str | None) -> str | None:
        """Why ``state``/``reason`` would be rejected by the worker, or None."""
        return None if self.catalog is None else _resolve(self.catalog, state, reason)[1]

    def target(self, state: str, reason: str | None) -> str:
        """The presence a row sets, as the org names it when known (for ``--dry-run``)."""
        wanted = f"{state} / {reason}" if reason else state
        if self.catalog is None:
            return f"{wanted} (not checked)"
        definition, _ = _resolve(self.catalog, state, reason)
        return wanted if definition is None else f"{definition.label} ({definition.id})"


def _resolve(
    catalog: PresenceCatalog, state: str, reason: str | None
) -> tuple[Definition | None, str | None]:
    try:
        return catalog.resolve(state, reason), None
    except UnknownPresence as exc:
        return None, str(exc)


@dataclass(frozen=True, slots=True)
class OrgChecks:
    """The definition check of each org the rows name that this machine can reach; the rows of
    any other org are left to the worker."""

    checks: Mapping[str, DefinitionCheck]
    note: str  # one line: what was checked against, per org, or why not

    def problem(self, org: str, state: str, reason: str | None) -> str | None:
        """Why ``org`` would reject ``state``/``reason``, or None (also when not checked)."""
        check = self.checks.get(org)
        return None if check is None else check.problem(state, reason)

    def target(self, org: str, state: str, reason: str | None) -> str:
        """The presence a row of ``org`` sets, as the org names it when known."""
        check = self.checks.get(org)
        if check is not None and (org == DEFAULT_ORG or check.catalog is not None):
            return check.target(state, reason)
        wanted = f"{state} / {reason}" if reason else state
        return f"{wanted} (org {org}, not checked)"


@contextmanager
def definition_checks(
    settings: Settings, orgs: list[str], *, no_check: bool = False
) -> Iterator[OrgChecks]:
    """A check for each of ``orgs`` (the default org when empty) against its own current
    definitions: the default org's from the ``GENESYS_*`` settings, the others' from
    ``ORGS_FILE``; an org configured nowhere here is not checked, and the note says so.
    Raises :class:`DefinitionsUnavailable` when the orgs file is unusable or a configured org's
    definitions cannot be read."""
    if no_check:
        yield OrgChecks({}, "states and reasons not checked (--no-check)")
        return
    try:
        configured = load_orgs(settings)
    except OrgsError as exc:
        raise DefinitionsUnavailable(str(exc)) from None
    wanted = orgs or [DEFAULT_ORG]
    with ExitStack() as stack:
        checks: dict[str, DefinitionCheck] = {}
        for name in wanted:
            if name in configured or name == DEFAULT_ORG:
                org_settings = configured[name].settings if name in configured else settings
                checks[name] = stack.enter_context(definition_check(org_settings, org=name))
        yield OrgChecks(checks, _note(checks, wanted, settings))


def _note(checks: Mapping[str, DefinitionCheck], wanted: list[str], settings: Settings) -> str:
    """One line: the default org's check, each other checked org's, and the orgs not checked
    (left out when the default org's note already says nothing was checked)."""
    parts = [checks[DEFAULT_ORG].note] if DEFAULT_ORG in checks else []
    others = [name for name in wanted if name != DEFAULT_ORG and name in checks]
    parts += [f"org {name}: {checks[name].note}" for name in others]
    unchecked = [name for name in wanted if name not in checks]
    nothing_checked = DEFAULT_ORG in checks and all(c.catalog is None for c in checks.values())
    if unchecked and not nothing_checked:
        why = "ORGS_FILE is not set" if settings.orgs_file is None else "not in ORGS_FILE"
        parts.append(
            f"states and reasons of org {', '.join(unchecked)} not checked here ({why}; "
            f"{NOT_CHECKED_HERE})"
        )
    return "; ".join(parts)


@contextmanager
def definition_check(settings: Settings, *, org: str = DEFAULT_ORG) -> Iterator[DefinitionCheck]:
    """A check against ``org``'s current definitions when its Genesys settings are complete
    (else a no-op with a note); raises :class:`DefinitionsUnavailable` when they are set but
    the definitions cannot be read."""
    missing = missing_settings(settings)
    if missing:
        yield DefinitionCheck(
            None,
            f"states and reasons not checked: {', '.join(missing)} not set (the worker rejects "
            "unknown ones when it applies each row)",
        )
        return
    named = "" if org == DEFAULT_ORG else f"org {org}: "
    prefix = org_key_prefix(org)
    r = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=10)
    http = http_client(settings)
    try:
        # A clock that never moves: the definitions read once serve the whole import, so no row
        # check ever reaches Redis or Genesys again.
        client = genesys_client(settings, r, http, prefix=prefix, org=org)
        catalog = PresenceCatalog(r, client.presence_definitions, clock=lambda: 0.0, prefix=prefix)
        try:
            count = len(catalog.definitions())
        except redis.RedisError as exc:
            raise DefinitionsUnavailable(
                f"{named}Redis at {safe_url(settings.redis_url)} (REDIS_URL): {_first_line(exc)}"
            ) from None
        except GenesysError as exc:
            raise DefinitionsUnavailable(
                f"{named}cannot read the presence definitions from {settings.api_base}: "
                f"{_first_line(exc)} (or import with --no-check)"
            ) from None
        except BudgetExhausted:
            raise DefinitionsUnavailable(
                f"{named}cannot read the presence definitions: the Genesys request budget is spent "
                "for now; try again in a minute (or import with --no-check)"
            ) from None
        yield DefinitionCheck(
            catalog, f"states and reasons checked against {count} presence definitions"
        )
    finally:
        http.close()
        r.close()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
