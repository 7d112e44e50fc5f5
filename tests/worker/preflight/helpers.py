"""Shared by the pre-flight tests: a narrow OAuth client's settings and how to read findings."""

from __future__ import annotations

import socket

from worker.preflight import Finding, Verdict, run_checks
from worker.settings import Settings

SECRET = "doctor-secret-0123456789"  # a client secret no finding may show, not even in part
NEEDED = (
    "presence:presenceDefinition:view",
    "presence:userPresence:edit",
    "routing:queue:view",
    "analytics:queueObservation:view",
)


def add_client(api, client_id: str, secret: str, permissions: list[str]) -> None:
    api.admin(
        "POST",
        "/clients",
        {"client_id": client_id, "client_secret": secret, "permissions": permissions},
    )


def checks(settings: Settings) -> dict[str, Finding]:
    findings = run_checks(settings, timeout_s=3)
    for finding in findings:
        assert SECRET not in finding.line
        assert SECRET[-8:] not in finding.line
    return {f.check: f for f in findings}


def failed(found: dict[str, Finding]) -> set[str]:
    return {name for name, f in found.items() if f.verdict is Verdict.FAIL}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def api_requests(api) -> int:
    requests = api.admin("GET", "/stats").json()["requests"]
    return sum(
        sum(statuses.values())
        for route, statuses in requests.items()
        if route not in ("oauth.token", "unmatched") and not route.startswith("admin.")
    )
