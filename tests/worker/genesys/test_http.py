"""The API calls' transport against a real local HTTP server: a list parameter repeats, booleans
are spelled as the platform expects, a JSON body goes as JSON, and it never retries, follows a
redirect or waits past its timeout on its own."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from worker.genesys.http import PlatformHttp, TransportFailure, TransportTimeout, query


class _Platform(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, bytes]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append((self.command, self.path, body))
        if self.path.startswith("/slow"):
            time.sleep(1.0)
        if self.path.startswith("/drop"):
            self.connection.close()  # no answer at all
            return
        if self.path.startswith("/moved"):
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        payload = json.dumps({"ok": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("inin-correlation-id", "c-1")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_PATCH = _answer

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def platform() -> Iterator[str]:
    _Platform.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Platform)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_list_parameter_repeats_and_booleans_are_lowercase() -> None:
    assert query({"id": ["a", "b"], "joined": True, "pageSize": 100}) == (
        "id=a&id=b&joined=true&pageSize=100"
    )


def test_a_json_body_and_the_answer(platform: str) -> None:
    reply = PlatformHttp().request(
        "PATCH", f"{platform}/api/v2/x", headers={"Authorization": "Bearer t"}, timeout_s=2,
        json={"presenceDefinition": {"id": "é"}},
    )  # fmt: skip

    assert (reply.status_code, reply.json()) == (200, {"ok": True})
    assert reply.headers.get("ININ-Correlation-Id") == "c-1"  # read case-insensitively
    [(method, path, body)] = _Platform.seen
    assert (method, path) == ("PATCH", "/api/v2/x")
    assert json.loads(body) == {"presenceDefinition": {"id": "é"}}


def test_no_answer_is_one_attempt_and_a_transport_failure(platform: str) -> None:
    with pytest.raises(TransportFailure):
        PlatformHttp().request("GET", f"{platform}/drop", headers={}, timeout_s=2)

    assert len(_Platform.seen) == 1  # never retried on its own


def test_a_slow_answer_is_a_timeout(platform: str) -> None:
    with pytest.raises(TransportTimeout):
        PlatformHttp().request("GET", f"{platform}/slow", headers={}, timeout_s=0.2)


def test_a_redirect_is_answered_not_followed(platform: str) -> None:
    reply = PlatformHttp().request("GET", f"{platform}/moved", headers={}, timeout_s=2)

    assert reply.status_code == 302
    assert [path for _, path, _ in _Platform.seen] == ["/moved"]
