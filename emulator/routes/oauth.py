"""``POST /oauth/token``: the client-credentials grant (reference §1.2 to §1.4)."""

from __future__ import annotations

import base64
import binascii

from aiohttp import web

from emulator.http import respond
from emulator.server import ORG_KEY, emulator_of, process_of


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    return respond(
        {"error": error, "description": description, "error_description": description}, status
    )


async def token(request: web.Request) -> web.Response:
    """Basic auth is what the SDKs send; credentials in the form body are accepted too."""
    emu = emulator_of(request)
    if request.content_type != "application/x-www-form-urlencoded":
        return _oauth_error(
            400, "invalid_request", "send an application/x-www-form-urlencoded body"
        )
    form = await request.post()
    client_id = str(form.get("client_id", ""))
    client_secret = str(form.get("client_secret", ""))
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            client_id, _, client_secret = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return _oauth_error(401, "invalid_client", "authentication failed")
    if form.get("grant_type") != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", "grant type must be client_credentials")
    # Client ids are unique across orgs: the client names the org the token will belong to.
    emu = process_of(request).org_of_client(client_id) or emu
    request[ORG_KEY] = emu
    client = emu.auth.check_credentials(client_id, client_secret)
    if client is None:
        return _oauth_error(401, "invalid_client", "authentication failed")
    if not client.client_credentials_grant:
        return _oauth_error(
            400,
            "unauthorized_client",
            "client is not authorized to use the client_credential grant type",
        )
    lifetime = emu.limits.token_lifetime_s
    issued = emu.auth.issue(client, lifetime)
    return respond({"access_token": issued.value, "token_type": "bearer", "expires_in": lifetime})


def register(router: web.UrlDispatcher) -> None:
    router.add_post("/oauth/token", token, name="oauth.token")
