"""The script a Genesys user would write with the official Python SDK: a token, the org's system
presence definitions, then ``PresenceApi.patch_user_presences_purecloud`` for each change in a
loop, sleeping ``Retry-After`` on a 429.

``bench.big_org`` runs it in its own process for a cold start (``python -m bench.sdk_script``,
the run on stdin as JSON: ``base_url``, ``client_id``, ``client_secret``, ``changes`` as
``[user id, system presence]`` pairs), so that its interpreter start and the SDK's import are on
the clock, as the workers' start is on theirs; it prints ``{"retries": N}``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import PureCloudPlatformClientV2 as sdk
import urllib3
from PureCloudPlatformClientV2.rest import ApiException
from urllib3.util import Retry


def connect(base_url: str, client_id: str, client_secret: str) -> tuple[Any, dict[str, str]]:
    """The SDK's presence API with a token, and the system presence definitions by name (two
    requests). The SDK's own urllib3 retries are off, so that every request is the loop's."""
    client = sdk.ApiClient(host=base_url)
    rest = client.get_http_client().rest_client
    rest.pool_manager = urllib3.PoolManager(retries=Retry(total=0))
    client.get_client_credentials_token(client_id, client_secret)
    presence = sdk.PresenceApi(client)
    definitions = {
        d.system_presence: d.id
        for d in presence.get_presence_definitions().entities
        if d.type == "System"
    }
    return presence, definitions


def patch_all(presence: Any, definitions: dict[str, str], changes: list[tuple[str, str]]) -> int:
    """Sets each ``(user id, system presence)`` in order; returns the 429s slept through."""
    retries = 0
    for user_id, state in changes:
        body = sdk.UserPresence()
        ref = sdk.PresenceDefinition()
        ref.id = definitions[state.replace(" ", "")]
        body.presence_definition = ref
        while True:
            try:
                presence.patch_user_presences_purecloud(user_id, body)
                break
            except ApiException as exc:
                if exc.status != 429:
                    raise
                retries += 1
                time.sleep(int((exc.headers or {}).get("Retry-After", "1")))
    return retries


def main() -> None:
    run = json.load(sys.stdin)
    presence, definitions = connect(run["base_url"], run["client_id"], run["client_secret"])
    retries = patch_all(presence, definitions, [(u, s) for u, s in run["changes"]])
    print(json.dumps({"retries": retries}))


if __name__ == "__main__":
    main()
