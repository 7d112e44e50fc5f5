"""The WFM checks: reachable (nothing delivered), the secret set, neither fatal."""

from __future__ import annotations

import httpx

from tests.worker.preflight.helpers import (
    checks,
    failed,
    free_port,
)
from worker.preflight import Verdict


# -- WFM ----------------------------------------------------------------------------------------
def test_a_reachable_wfm_endpoint_with_a_secret_passes(api, setup):
    found = checks(
        setup(
            wfm_webhook_url=f"{api.emulator.base_url}/__wfm/events",
            wfm_webhook_secret="wfm-secret",
        )
    )

    assert failed(found) == set()
    assert found["WFM endpoint"].verdict is Verdict.OK
    assert found["WFM secret"].verdict is Verdict.OK
    sink = httpx.get(f"{api.emulator.base_url}/__emulator/wfm/deliveries").json()
    assert sink["deliveries"] == [], "the check delivers nothing"


def test_an_unreachable_wfm_endpoint_and_an_empty_secret_fail_without_being_fatal(setup):
    url = f"http://127.0.0.1:{free_port()}/events"

    found = checks(setup(wfm_webhook_url=url))

    assert failed(found) == {"WFM endpoint", "WFM secret"}
    assert url in found["WFM endpoint"].detail
    assert "WFM_WEBHOOK_URL" in found["WFM endpoint"].fix
    assert "WFM_WEBHOOK_SECRET" in found["WFM secret"].detail
    assert not found["WFM endpoint"].fatal
    assert not found["WFM secret"].fatal
