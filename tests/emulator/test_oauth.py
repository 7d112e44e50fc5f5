"""POST /oauth/token (client credentials) and bearer-token checks on the platform API.

Reference §1.2-1.4: Basic auth + ``grant_type=client_credentials``; OAuth-style error bodies
on the token endpoint; the platform ErrorBody ``bad.credentials`` (401) for a bad bearer.
"""

from __future__ import annotations

import base64
import time

import httpx
import pytest

from tests.emulator._rest import assert_error, changed_settings

GRANT = {"grant_type": "client_credentials"}
PROBE = "/api/v2/users?pageSize=1"


def token_request(api, **kwargs) -> httpx.Response:
    return httpx.post(f"{api.emulator.base_url}/oauth/token", **kwargs)


def default_credentials(api) -> tuple[str, str]:
    return api.emulator.client_id, api.emulator.client_secret


def call_api(api, authorization: str | None) -> httpx.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    return httpx.get(f"{api.emulator.base_url}{PROBE}", headers=headers)


def assert_oauth_error(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert body["error_description"]
    assert body["description"] == body["error_description"]
    assert "access_token" not in body


def add_client(api, client_id: str, **extra) -> str:
    secret = f"{client_id}-secret"
    api.admin(
        "POST",
        "/clients",
        {"client_id": client_id, "client_secret": secret, "permissions": ["*"], **extra},
    )
    return secret


# -- issuing tokens ---------------------------------------------------------------------------
def test_basic_auth_client_credentials_returns_a_bearer_token(api):
    response = token_request(api, auth=default_credentials(api), data=GRANT)

    assert response.status_code == 200
    body = response.json()
    assert isinstance(body["access_token"], str)
    assert len(body["access_token"]) >= 32
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 86_400
    assert "refresh_token" not in body


def test_credentials_in_the_form_body_are_accepted_too(api):
    client_id, secret = default_credentials(api)

    response = token_request(api, data={**GRANT, "client_id": client_id, "client_secret": secret})

    assert response.status_code == 200
    assert response.json()["token_type"] == "bearer"


def test_every_token_request_issues_a_new_token(api):
    first = token_request(api, auth=default_credentials(api), data=GRANT).json()["access_token"]
    second = token_request(api, auth=default_credentials(api), data=GRANT).json()["access_token"]

    assert first != second
    assert call_api(api, f"Bearer {first}").status_code == 200
    assert call_api(api, f"Bearer {second}").status_code == 200


def test_a_client_created_through_the_admin_api_can_log_in(api):
    secret = add_client(api, "second-app")

    response = token_request(api, auth=("second-app", secret), data=GRANT)

    assert response.status_code == 200


# -- token endpoint errors --------------------------------------------------------------------
def test_wrong_secret_is_invalid_client_401(api):
    client_id, _ = default_credentials(api)

    response = token_request(api, auth=(client_id, "not-the-secret"), data=GRANT)

    assert_oauth_error(response, 401, "invalid_client")


def test_unknown_client_is_invalid_client_401(api):
    response = token_request(api, auth=("nobody", "whatever"), data=GRANT)

    assert_oauth_error(response, 401, "invalid_client")


def test_missing_credentials_are_invalid_client_401(api):
    assert_oauth_error(token_request(api, data=GRANT), 401, "invalid_client")


def test_undecodable_basic_header_is_invalid_client_401(api):
    response = token_request(api, headers={"Authorization": "Basic %%%not-base64%%%"}, data=GRANT)

    assert_oauth_error(response, 401, "invalid_client")


def test_basic_header_without_a_colon_is_invalid_client_401(api):
    encoded = base64.b64encode(b"presence-worker").decode()

    response = token_request(api, headers={"Authorization": f"Basic {encoded}"}, data=GRANT)

    assert_oauth_error(response, 401, "invalid_client")


@pytest.mark.parametrize("grant", ["password", "authorization_code", "refresh_token", ""])
def test_a_grant_other_than_client_credentials_is_400(api, grant):
    response = token_request(api, auth=default_credentials(api), data={"grant_type": grant})

    assert_oauth_error(response, 400, "unsupported_grant_type")


def test_a_missing_grant_type_is_400(api):
    response = token_request(api, auth=default_credentials(api), data={"scope": "all"})

    assert_oauth_error(response, 400, "unsupported_grant_type")


def test_a_json_body_is_invalid_request_400(api):
    response = token_request(api, auth=default_credentials(api), json=GRANT)

    assert_oauth_error(response, 400, "invalid_request")


def test_client_not_allowed_the_client_credentials_grant_is_unauthorized_client_400(api):
    secret = add_client(api, "code-grant-app", client_credentials_grant=False)

    response = token_request(api, auth=("code-grant-app", secret), data=GRANT)

    assert_oauth_error(response, 400, "unauthorized_client")
    assert "client_credential" in response.json()["error_description"]


def test_token_endpoint_answers_with_a_correlation_id(api):
    response = token_request(api, auth=default_credentials(api), data=GRANT)

    assert response.headers["inin-correlation-id"]


# -- using the token --------------------------------------------------------------------------
def test_the_issued_token_works_as_a_bearer_token(api):
    body = token_request(api, auth=default_credentials(api), data=GRANT).json()

    response = call_api(api, f"Bearer {body['access_token']}")

    assert response.status_code == 200
    assert response.json()["entities"]


def test_the_token_type_as_returned_works_as_the_scheme(api):
    """The official tutorial builds the header as ``${token_type} ${access_token}``."""
    body = token_request(api, auth=default_credentials(api), data=GRANT).json()

    response = call_api(api, f"{body['token_type']} {body['access_token']}")

    assert response.status_code == 200


def test_no_authorization_header_is_401_bad_credentials(api):
    assert_error(call_api(api, None), 401, "bad.credentials")


def test_an_unknown_bearer_token_is_401_bad_credentials(api):
    body = assert_error(call_api(api, "Bearer not-a-token"), 401, "bad.credentials")

    assert body["message"] == "Invalid login credentials."


def test_basic_credentials_do_not_authorize_api_calls(api):
    client_id, secret = default_credentials(api)
    encoded = base64.b64encode(f"{client_id}:{secret}".encode()).decode()

    assert_error(call_api(api, f"Basic {encoded}"), 401, "bad.credentials")


def test_an_expired_token_is_401_bad_credentials(api):
    assert api.http.get(PROBE).status_code == 200

    expired = api.admin("POST", "/tokens/expire", {}).json()["expired"]

    assert expired >= 1
    assert_error(api.http.get(PROBE), 401, "bad.credentials")


def test_expiring_one_clients_tokens_leaves_other_clients_alone(api):
    secret = add_client(api, "other-app")
    other = token_request(api, auth=("other-app", secret), data=GRANT).json()["access_token"]

    api.admin("POST", "/tokens/expire", {"client_id": "other-app"})

    assert_error(call_api(api, f"Bearer {other}"), 401, "bad.credentials")
    assert api.http.get(PROBE).status_code == 200


def test_a_revoked_token_is_401_bad_credentials(api):
    revoked = api.admin("POST", "/tokens/revoke", {}).json()["revoked"]

    assert revoked >= 1
    assert_error(api.http.get(PROBE), 401, "bad.credentials")


def test_a_new_token_works_after_revocation(api):
    api.admin("POST", "/tokens/revoke", {})

    fresh = api.fetch_token()

    assert call_api(api, f"Bearer {fresh}").status_code == 200


def test_token_lifetime_setting_shortens_expires_in_and_the_token_dies(api):
    with changed_settings(api, token_lifetime_s=1):
        body = token_request(api, auth=default_credentials(api), data=GRANT).json()
        assert body["expires_in"] == 1
        assert call_api(api, f"Bearer {body['access_token']}").status_code == 200

        time.sleep(1.1)

        assert_error(call_api(api, f"Bearer {body['access_token']}"), 401, "bad.credentials")


def test_tokens_issued_before_a_lifetime_change_keep_their_lifetime(api):
    with changed_settings(api, token_lifetime_s=1):
        time.sleep(1.1)

        assert api.http.get(PROBE).status_code == 200
