"""A scripted tour of the emulator: token, definitions, a PATCH confirmed on the socket,
a bulk update, platform errors, queue observations and the rate limit.

Run with ``python -m emulator.walkthrough`` (``make demo`` runs the whole product instead).
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import websocket
from rich.console import Console
from rich.table import Table

from emulator.launcher import EmulatorProcess

console = Console()


def step(title: str) -> None:
    console.rule(f"[bold cyan]{title}")


def wait_for_event(ws: websocket.WebSocket, topic: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """The next message on ``topic``, skipping heartbeats; raises TimeoutError."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ws.settimeout(max(0.05, deadline - time.monotonic()))
        message: dict[str, Any] = json.loads(ws.recv())
        if message.get("topicName") == topic:
            return message
    raise TimeoutError(topic)


def main() -> None:
    with EmulatorProcess(args=["--users", "500", "--queues", "8", "--heartbeat", "5"]) as emu:
        base = emu.base_url
        step("1. Emulator started")
        console.print(f"Serving at [bold]{base}[/] after {emu.startup_s:.2f} s")

        step("2. Client-credentials token (POST /oauth/token)")
        token = httpx.post(
            f"{base}/oauth/token",
            auth=(emu.client_id, emu.client_secret),
            data={"grant_type": "client_credentials"},
        ).json()
        console.print(f"token_type={token['token_type']} expires_in={token['expires_in']} s")
        api = httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token['access_token']}"}
        )

        step("3. Presence definitions (GET /api/v2/presence/definitions)")
        definitions = api.get("/api/v2/presence/definitions").json()["entities"]
        table = Table("label", "type", "systemPresence", "id")
        for d in definitions:
            table.add_row(d["languageLabels"]["en_US"], d["type"], d["systemPresence"], d["id"])
        console.print(table)
        everything = api.get("/api/v2/presence/definitions", params={"deactivated": "true"})
        by_label = {d["languageLabels"]["en_US"]: d["id"] for d in everything.json()["entities"]}

        agents = api.get("/api/v2/users", params={"pageSize": 3, "expand": "presence"}).json()[
            "entities"
        ]
        agent = agents[0]

        step("4. Notification channel, subscription, socket")
        channel = api.post("/api/v2/notifications/channels").json()
        topics = [{"id": f"v2.users.{a['id']}.presence"} for a in agents]
        api.put(f"/api/v2/notifications/channels/{channel['id']}/subscriptions", json=topics)
        ws = websocket.create_connection(channel["connectUri"], timeout=5)
        console.print(f"connected to {channel['connectUri']} with {len(topics)} topics")

        step("5. PATCH one agent; the change is confirmed on the socket")
        before = agent["presence"]["presenceDefinition"]["systemPresence"]
        target = "Available" if before == "On Queue" else "On Queue"
        sent = time.perf_counter()
        response = api.patch(
            f"/api/v2/users/{agent['id']}/presences/purecloud",
            json={"presenceDefinition": {"id": by_label[target]}},
        )
        event = wait_for_event(ws, f"v2.users.{agent['id']}.presence")
        elapsed_ms = (time.perf_counter() - sent) * 1000
        console.print(
            f"{agent['name']}: {before} → {response.json()['presenceDefinition']['systemPresence']}"
        )
        console.print(
            f"event systemPresence={event['eventBody']['presenceDefinition']['systemPresence']} "
            f"correlation matches={event['metadata']['CorrelationId'] == response.headers['inin-correlation-id']} "
            f"in {elapsed_ms:.1f} ms"
        )

        step("6. Bulk PUT: three agents to the secondary presence 'Coffee' (a Break)")
        bulk = [
            {"id": a["id"], "source": "PURECLOUD", "presenceDefinition": {"id": by_label["Coffee"]}}
            for a in agents
        ]
        api.put("/api/v2/users/presences/bulk", json=bulk).raise_for_status()
        for a in agents:
            ev = wait_for_event(ws, f"v2.users.{a['id']}.presence")
            console.print(
                f"{a['name']}: event {ev['eventBody']['presenceDefinition']['systemPresence']}"
            )

        step("7. Platform errors carry the ErrorBody and the correlation id")
        bad = [
            ("deactivated definition", "PATCH", f"/api/v2/users/{agent['id']}/presences/purecloud",
             {"presenceDefinition": {"id": by_label["Smoke Break"]}}),
            ("unknown user", "PATCH", "/api/v2/users/00000000-0000-4000-8000-000000000000/presences/purecloud",
             {"presenceDefinition": {"id": by_label["Available"]}}),
        ]  # fmt: skip
        for label, method, path, body in bad:
            r = api.request(method, path, json=body)
            console.print(
                f"{label}: HTTP {r.status_code} {r.json()['code']}: {r.json()['message']}"
            )

        step("8. Queue observations for the agent's queues")
        queues = api.get(f"/api/v2/users/{agent['id']}/queues").json()["entities"]
        query = {
            "filter": {"type": "or", "predicates": [
                {"type": "dimension", "dimension": "queueId", "operator": "matches", "value": q["id"]}
                for q in queues
            ]},
            "metrics": ["oOnQueueUsers", "oActiveUsers", "oMemberUsers", "oWaiting"],
        }  # fmt: skip
        results = api.post("/api/v2/analytics/queues/observations/query", json=query).json()[
            "results"
        ]
        names = {q["id"]: q["name"] for q in queues}
        for group in results:
            stats = ", ".join(
                f"{d['metric']}{'/' + d['qualifier'] if 'qualifier' in d else ''}={d['stats']['count']}"
                for d in group["data"]
            )
            console.print(f"{names[group['group']['queueId']]}: {stats or '(no activity)'}")

        step("9. The per-token rate limit (lowered to 5 per minute for the demo)")
        httpx.put(f"{base}/__emulator/settings", json={"rate_limit_per_minute": 5})
        fresh = httpx.post(
            f"{base}/oauth/token",
            auth=(emu.client_id, emu.client_secret),
            data={"grant_type": "client_credentials"},
        ).json()["access_token"]
        console.print("a fresh token, so the window starts empty:")
        for _ in range(7):
            r = api.get(
                f"/api/v2/users/{agent['id']}", headers={"Authorization": f"Bearer {fresh}"}
            )
            console.print(
                f"HTTP {r.status_code} count={r.headers.get('inin-ratelimit-count')} "
                f"retry-after={r.headers.get('Retry-After', '-')}"
            )

        step("10. What the emulator recorded for the agent")
        history = httpx.get(f"{base}/__emulator/history", params={"user_id": agent["id"]}).json()
        for entry in history[agent["id"]]:
            console.print(
                f"{entry['at']} {entry['path']:<7} {entry['systemPresence']:<9} {entry['routingStatus']}"
            )
        ws.close()
        console.print("[green]Walkthrough complete.")


if __name__ == "__main__":
    main()
