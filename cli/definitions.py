"""Importers' check of states and reasons against the org's current presence definitions.

The definitions come through the worker's own catalog (one Genesys call per ten minutes for the
whole fleet, cached in Redis), so an import spends at most one request of the shared budget (and
a token request when no token is cached).
Without Genesys settings nothing is checked and the note says so: the worker then rejects an
unknown state or reason when it applies the row (audit outcome ``invalid``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import redis

from cli.render import safe_url
from worker.catalog import Definition, PresenceCatalog, UnknownPresence
from worker.genesys.connect import genesys_client, missing_settings
from worker.genesys.errors import GenesysError
from worker.limiter import BudgetExhausted
from worker.settings import Settings


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


@contextmanager
def definition_check(settings: Settings, *, enabled: bool = True) -> Iterator[DefinitionCheck]:
    """A check against the current definitions when Genesys is configured (else a no-op with a
    note); raises :class:`DefinitionsUnavailable` when they are configured but cannot be read."""
    if not enabled:
        yield DefinitionCheck(None, "states and reasons not checked (--no-check)")
        return
    missing = missing_settings(settings)
    if missing:
        yield DefinitionCheck(
            None,
            f"states and reasons not checked: {', '.join(missing)} not set (the worker rejects "
            "unknown ones when it applies each row)",
        )
        return
    r = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=10)
    http = httpx.Client(timeout=settings.http_timeout_s)
    try:
        # A clock that never moves: the definitions read once serve the whole import, so no row
        # check ever reaches Redis or Genesys again.
        catalog = PresenceCatalog(
            r, genesys_client(settings, r, http).presence_definitions, clock=lambda: 0.0
        )
        try:
            count = len(catalog.definitions())
        except redis.RedisError as exc:
            raise DefinitionsUnavailable(
                f"Redis at {safe_url(settings.redis_url)} (REDIS_URL): {_first_line(exc)}"
            ) from None
        except GenesysError as exc:
            raise DefinitionsUnavailable(
                f"cannot read the presence definitions from {settings.api_base}: "
                f"{_first_line(exc)} (or import with --no-check)"
            ) from None
        except BudgetExhausted:
            raise DefinitionsUnavailable(
                "cannot read the presence definitions: the Genesys request budget is spent "
                "for now; try again in a minute (or import with --no-check)"
            ) from None
        yield DefinitionCheck(
            catalog, f"states and reasons checked against {count} presence definitions"
        )
    finally:
        http.close()
        r.close()


def with_other_orgs(
    check: DefinitionCheck, others: list[str], *, no_check: bool, fetched: bool
) -> str:
    """The check's note, saying also that the rows of ``others`` (orgs other than the default
    org, whose definitions these are) were not checked — unless the note says nothing was.
    ``fetched``: the check was asked to read the definitions (a default-org row needed them)."""
    if not others or no_check:
        return check.note
    unchecked = (
        f"states and reasons of org {', '.join(others)} not checked here (the worker rejects "
        "unknown ones when it applies each row)"
    )
    if check.catalog is not None:
        return f"{check.note}; {unchecked}"
    return check.note if fetched else unchecked


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
