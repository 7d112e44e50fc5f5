"""A request's org: from its payload when valid; for a payload that is not, the org it names
when that is a valid org name, else ``default``, so every audit row carries an org."""

from __future__ import annotations

from typing import Any

import pytest

from tests.worker.flow.fakes import T0, FakeCatalog
from worker.flow.request import Attempt, Request, parse, validate

AGENT = "0f3c2a1e-5b6d-4c7e-8f90-a1b2c3d4e5f6"


def payload(**changes: Any) -> dict[str, Any]:
    return {"user_id": AGENT, "state": "Break", "requested_at": T0.isoformat(), **changes}


def attempt() -> Attempt:
    return Attempt("r-1", T0)


def test_a_valid_payload_without_an_org_is_the_default_orgs() -> None:
    draft, update = validate(attempt(), payload())

    assert update is not None
    assert (update.org, draft.org) == ("default", "default")


def test_a_valid_payload_of_another_org_carries_it_to_the_draft() -> None:
    draft, update = validate(attempt(), payload(org="acme"))

    assert update is not None
    assert (update.org, draft.org) == ("acme", "acme")


def test_an_invalid_payload_still_records_the_org_it_names() -> None:
    draft, update = validate(attempt(), payload(state="", org="acme"))

    assert update is None
    assert draft.error_code == "invalid.payload"
    assert draft.org == "acme"


@pytest.mark.parametrize("raw", [payload(org="Not An Org"), payload(org=7), "garbage", None])
def test_an_unreadable_org_is_recorded_as_default(raw: object) -> None:
    draft, update = validate(attempt(), raw)

    assert update is None
    assert draft.org == "default"


def test_a_parsed_request_is_of_its_payloads_org() -> None:
    request = parse(FakeCatalog(), attempt(), payload(org="acme"), max_future_skew_s=60)

    assert isinstance(request, Request)
    assert request.org == request.draft.org == "acme"
