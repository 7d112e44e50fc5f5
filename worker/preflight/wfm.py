"""The WFM checks: the endpoint answers (a HEAD: nothing is delivered), the secret is set."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import httpx

from worker.preflight.findings import Finding, Verdict, ok, skip
from worker.preflight.genesys import transport_reason
from worker.settings import Settings


def _origin(url: str) -> str:
    """Scheme, host, port and path only: a query string may carry a key."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_wfm(settings: Settings, http: httpx.Client) -> list[Finding]:
    """The WFM endpoint answers (a HEAD: nothing is delivered) and the signing secret is set.
    Not fatal for a worker: deliveries wait in the outbox."""
    url = settings.wfm_webhook_url
    if not url:
        return [skip("WFM endpoint", "WFM_WEBHOOK_URL unset: no WFM sync")]
    findings = []
    if not settings.wfm_webhook_secret.get_secret_value():
        findings.append(
            Finding(
                "WFM secret",
                Verdict.FAIL,
                "WFM_WEBHOOK_SECRET empty: events would be signed with an empty key",
                "set it to the key the WFM receiver verifies with",
                fatal=False,
            )
        )
    else:
        findings.append(ok("WFM secret", "set"))
    shown = _origin(url)
    try:
        response = http.head(url)
    except httpx.HTTPError as exc:
        findings.insert(
            0,
            Finding(
                "WFM endpoint",
                Verdict.FAIL,
                f"WFM_WEBHOOK_URL ({shown}) unreachable: {transport_reason(exc)}",
                "check WFM_WEBHOOK_URL and that the receiver runs",
                fatal=False,
            ),
        )
        return findings
    parts = urlsplit(url)
    if parts.scheme == "http" and not _loopback(parts.hostname or ""):
        endpoint = Finding(
            "WFM endpoint",
            Verdict.WARN,
            f"{shown} answered, over plain http (events readable on the way)",
            "use https",
            fatal=False,
        )
    else:
        endpoint = ok("WFM endpoint", f"{shown} answered HTTP {response.status_code} to HEAD")
    findings.insert(0, endpoint)
    return findings
