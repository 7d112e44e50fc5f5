"""Pre-flight checks: what ``presence doctor`` prints and what a worker verifies before consuming.

:func:`run_checks` returns one :class:`Finding` per check, in order: settings, files, Redis,
database (reachable, migrated to head), Genesys (reachable, credentials), the OAuth client's
permissions for what the worker does, the API budget and the WFM endpoint. A check that depends
on a failed one is skipped. Nothing is changed anywhere: the edit permission is probed with an
empty bulk update (refused as empty when allowed), the notification check reuses one channel of
its own (its id kept in Redis) and subscribes it to one agent. Genesys cost: one token request
and at most ten API requests, once per fleet start (``PREFLIGHT_REUSE_S``). Findings never
contain a secret.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from worker.preflight import fleet
from worker.preflight.findings import Finding, Verdict, skip
from worker.preflight.genesys import GenesysChecks
from worker.preflight.local import (
    check_database,
    check_files,
    check_redis,
    check_settings,
    load_settings,
)
from worker.preflight.wfm import check_wfm
from worker.problems import mask_url
from worker.settings import Settings

__all__ = ["Finding", "Verdict", "on_worker_setup", "run_checks"]
log = logging.getLogger("presence.preflight")


def run_checks(
    settings: Settings | None = None,
    *,
    timeout_s: float = 5.0,
    reuse_s: float = 0.0,
    prefix: str = "presence",
) -> list[Finding]:
    """Every check, in order (see the module docstring); ``settings`` None: read them now.
    ``prefix``: the key prefix of the org ``settings`` describe (what the checks keep in Redis
    and the fleet's pass marks sit under it).

    ``reuse_s`` > 0 (a starting worker): the Genesys rows are skipped when another worker passed
    every check with the same settings that recently (or passes them while this one waits), and
    a run with no failure is marked so for the next one (:mod:`worker.preflight.fleet`)."""
    if settings is None:
        loaded, first = load_settings()
    else:
        loaded, first = settings, check_settings(settings)
    findings = [first]
    if loaded is None:
        return findings
    files = check_files(loaded)
    if files is not None:
        findings.append(files)
    client, found = check_redis(loaded, timeout_s)
    findings.append(found)
    findings.append(check_database(loaded, timeout_s))
    timeout = min(timeout_s, loaded.http_timeout_s)
    shared = reuse_s > 0 and client is not None and not first.failed
    reused = shared and client is not None and fleet.await_pass(client, loaded, prefix=prefix)
    try:
        with httpx.Client(timeout=timeout) as http:
            if first.failed:
                findings.append(skip("Genesys", "skipped: fix the settings first"))
            elif reused:
                findings.append(
                    skip(
                        "Genesys",
                        f"passed with these settings by a worker within {reuse_s:.0f} s; "
                        "not repeated (PREFLIGHT_REUSE_S)",
                    )
                )
            else:
                findings.extend(GenesysChecks(loaded, http, client, prefix=prefix).run())
            findings.extend(check_wfm(loaded, http))
        if shared and client is not None and not reused:
            if any(f.failed for f in findings):
                fleet.release(client, loaded, prefix=prefix)
            else:
                fleet.record_passed(client, loaded, reuse_s, prefix=prefix)
    finally:
        if client is not None:
            client.close()
    return findings


def on_worker_setup(**_: Any) -> None:
    """``celeryd_after_setup``: check every org the worker serves, logging each problem as one
    line; exit (status 1) before consuming when one is fatal. Off with PREFLIGHT_ON_START=false."""
    from worker.orgs import get_orgs
    from worker.settings import get_settings

    if not get_settings().preflight_on_start:
        return
    orgs = get_orgs()
    fatal_count = 0
    for org in orgs.values():
        settings = org.settings
        where = f"preflight[{org.name}]" if len(orgs) > 1 else "preflight"
        findings = run_checks(settings, reuse_s=settings.preflight_reuse_s, prefix=org.prefix)
        fatal = [f for f in findings if f.failed and f.fatal]
        fatal_count += len(fatal)
        for finding in findings:
            if finding in fatal:
                log.critical("%s: %s", where, finding.line)
            elif finding.verdict in (Verdict.FAIL, Verdict.WARN):
                log.warning("%s: %s", where, finding.line)
        if not fatal:
            log.info(
                "%s: %d checks passed against %s", where, len(findings), mask_url(settings.api_base)
            )
    if fatal_count:
        log.critical(
            "preflight: not starting, %d check(s) failed (`presence doctor` lists every check)",
            fatal_count,
        )
        raise SystemExit(1)
