"""Small helpers shared by the REST-surface suites (oauth, users, presence, queues, …)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from tests.conftest import Api

# System presence ids (reference §2.2): the emulator serves the ids seen on the real platform.
AVAILABLE_ID = "6a3af858-942f-489d-9700-5f9bcdcdae9b"
BREAK_ID = "227b37e2-f1d0-4dd0-8f50-badd7cf6d158"
OFFLINE_ID = "ccf3c10a-aa2c-4845-8e8d-f59fa48c58e5"
ON_QUEUE_ID = "e08eaf1b-ee47-4fa9-a231-1200e284798f"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Asserts a platform ErrorBody with ``status``/``code`` tied to the correlation header."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["message"]
    assert body["contextId"] == response.headers["inin-correlation-id"]
    assert isinstance(body["details"], list)
    assert body["errors"] == []
    return body


def field_names(body: dict[str, Any]) -> list[str]:
    """The ``fieldName`` of every ``details[]`` entry of an ErrorBody."""
    return [d["fieldName"] for d in body["details"]]


def admin_users(api: Api) -> list[dict[str, Any]]:
    """Every seeded user (any state) with presence, routing status and queue ids."""
    users: list[dict[str, Any]] = api.admin("GET", "/users").json()
    return users


def users_in_state(api: Api, state: str) -> list[dict[str, Any]]:
    return [u for u in admin_users(api) if u["state"] == state]


def set_presence(api: Api, user_id: str, presence: str) -> None:
    """Moves an agent as if from the UI (admin API): id, label or system presence name."""
    api.admin("PUT", f"/users/{user_id}/presence", {"presence": presence})


def set_work(api: Api, user_id: str, **work: Any) -> None:
    """``interactions=N`` and/or ``not_responding=bool`` for one agent."""
    api.admin("PUT", f"/users/{user_id}/work", work)


def history(api: Api, user_id: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = (
        api.admin("GET", f"/history?user_id={user_id}").json().get(user_id, [])
    )
    return entries


def client_with(api: Api, permissions: list[str], client_id: str = "limited") -> httpx.Client:
    """An httpx client whose token comes from a new OAuth client holding only ``permissions``."""
    secret = f"{client_id}-secret"
    api.admin(
        "POST",
        "/clients",
        {"client_id": client_id, "client_secret": secret, "permissions": permissions},
    )
    token = api.fetch_token(client_id, secret)
    return httpx.Client(
        base_url=api.emulator.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


@contextmanager
def changed_settings(api: Api, **settings: Any) -> Iterator[dict[str, Any]]:
    """Applies emulator settings for a block and restores them after.

    ``POST /__emulator/reset`` does not restore settings, so a test that changes one must put
    it back or every later test in the session inherits it.
    """
    before = api.admin("GET", "/settings").json()
    applied: dict[str, Any] = api.admin("PUT", "/settings", settings).json()
    try:
        yield applied
    finally:
        api.admin("PUT", "/settings", {name: before[name] for name in settings})


def all_pages(client: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every entity of a paged listing, following ``nextUri`` exactly as served."""
    response = client.get(path, params=params)
    entities: list[dict[str, Any]] = []
    while True:
        assert response.status_code == 200, response.text
        listing = response.json()
        entities.extend(listing["entities"])
        if "nextUri" not in listing:
            return entities
        response = client.get(listing["nextUri"])
