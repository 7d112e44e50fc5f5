"""The orgs file a local stack writes for its workers, and payloads addressed to an org."""

from __future__ import annotations

import base64
import json
import os
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import redis
from celery import Celery

from producer.schema import TASK_NAME, PresenceUpdate
from sandbox.orgs import (
    OrgEntry,
    org_message,
    orgs_toml,
    queue_for,
    secret_env,
    send_to_org,
    write_orgs_file,
)
from sandbox.stack import LocalStack
from tests.support.processes import private_redis

UPDATE = PresenceUpdate(
    user_id="3ce84f47-4e65-4756-a815-67a2b32e58b8",
    state="Busy",
    source="test",
    requested_at=datetime(2026, 1, 2, tzinfo=UTC),
)


def test_the_orgs_file_names_each_secrets_variable_and_never_holds_the_secret(tmp_path: Path):
    entries = [
        OrgEntry("acme", "http://127.0.0.1:1", "client-acme", "s3cret-acme"),
        OrgEntry(
            "big-co",
            "http://127.0.0.1:2",
            "client-big",
            "s3cret-big",
            {"rate_limit_per_minute": 120, "rate_limit_headroom": 0.1, "wfm_webhook_url": "x"},
        ),
    ]

    env = write_orgs_file(tmp_path / "orgs.toml", entries)

    text = (tmp_path / "orgs.toml").read_text()
    assert "s3cret" not in text
    assert tomllib.loads(text) == {
        "orgs": {
            "acme": {
                "api_url": "http://127.0.0.1:1",
                "client_id": "client-acme",
                "client_secret_env": "ORG_ACME_GENESYS_CLIENT_SECRET",
            },
            "big-co": {
                "api_url": "http://127.0.0.1:2",
                "client_id": "client-big",
                "client_secret_env": "ORG_BIG_CO_GENESYS_CLIENT_SECRET",
                "rate_limit_per_minute": 120,
                "rate_limit_headroom": 0.1,
                "wfm_webhook_url": "x",
            },
        }
    }
    assert env == {
        "ORGS_FILE": str(tmp_path / "orgs.toml"),
        "ORG_ACME_GENESYS_CLIENT_SECRET": "s3cret-acme",
        "ORG_BIG_CO_GENESYS_CLIENT_SECRET": "s3cret-big",
    }


def test_a_value_with_quotes_survives_the_file():
    entry = OrgEntry("acme", 'http://h/"x"\\y', "id", "s")

    assert tomllib.loads(orgs_toml([entry]))["orgs"]["acme"]["api_url"] == 'http://h/"x"\\y'


@pytest.mark.parametrize(
    ("name", "options", "reason"),
    [("Acme", {}, "not a valid org name"), ("acme", {"budget": 1}, "unknown org option")],
)
def test_a_bad_entry_is_refused_with_its_reason(name, options, reason):
    with pytest.raises(ValueError, match=reason):
        OrgEntry(name, "http://h", "id", "s", options)


def test_the_default_orgs_message_and_queue_are_todays():
    assert queue_for("default") == "presence"
    assert org_message(UPDATE, "default") == UPDATE.to_message()
    assert queue_for("acme") == "presence.acme"
    assert org_message(UPDATE, "acme") == {**UPDATE.to_message(), "org": "acme"}
    assert secret_env("acme") == "ORG_ACME_GENESYS_CLIENT_SECRET"


def test_updates_sent_to_an_org_wait_on_its_own_queue():
    with private_redis() as url:
        app = Celery(broker=url, set_as_current=False)
        ids = send_to_org(app, "acme", [UPDATE, UPDATE.to_message()])
        app.close()
        client = redis.Redis.from_url(url)
        queued = [json.loads(raw) for raw in client.lrange("presence.acme", 0, -1)]
        other = client.llen("presence")
        client.close()

    assert other == 0
    assert sorted(m["headers"]["id"] for m in queued) == sorted(ids)
    assert {m["headers"]["task"] for m in queued} == {TASK_NAME}
    for message in queued:
        assert '"org": "acme"' in _body(message)


def _body(message: dict[str, object]) -> str:
    return base64.b64decode(str(message["body"])).decode()


def test_a_stack_with_orgs_gives_its_workers_each_orgs_client(tmp_path: Path):
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14")
    db = int(redis_url.rsplit("/", 1)[1])
    with LocalStack(
        emulator_args=["--users", "5", "--queues", "1"],
        redis_url=redis_url,
        redis_db=db,
        workdir=tmp_path,
        orgs=["acme,users=7,rate-limit=50", "globex"],
        org_options={"acme": {"rate_limit_per_minute": 50}},
    ) as stack:
        assert stack.emulator is not None
        env = stack.env
        config = tomllib.loads(Path(env["ORGS_FILE"]).read_text())["orgs"]
        tokens = {
            name: httpx.post(
                f"{org['api_url']}/oauth/token",
                auth=(org["client_id"], env[org["client_secret_env"]]),
                data={"grant_type": "client_credentials"},
            )
            for name, org in config.items()
        }
        users = {org: len(stack.users(org)) for org in stack.org_names}
        budgets = {o["name"]: o["rateLimitPerMinute"] for o in stack.admin("GET", "/orgs")}
        stats = {org: stack.emulator_stats(org)["org"] for org in stack.org_names}

    assert sorted(config) == ["acme", "globex"]
    assert config["acme"]["rate_limit_per_minute"] == 50
    assert "rate_limit_per_minute" not in config["globex"]
    assert {name: r.status_code for name, r in tokens.items()} == {"acme": 200, "globex": 200}
    assert env["GENESYS_CLIENT_ID"] == stack.client_id  # default stays the environment's org
    assert users == {"default": 5, "acme": 7, "globex": 5}
    assert budgets == {"default": 300, "acme": 50, "globex": 300}
    assert stats == {"default": "default", "acme": "acme", "globex": "globex"}
