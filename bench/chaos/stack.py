"""One scenario's processes: the emulator (with its WFM sink), a durable Redis, a fresh database
on the harness's PostgreSQL, a threads-pool worker, a prefork worker and beat — and a
supervisor that restarts a process that exits unbidden, as the compose file's
``restart: unless-stopped`` does, counting it as died.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import select

import migrations
from bench.chaos.accounting import Final, Leftovers, Row, WfmEvent, Write
from emulator.launcher import EmulatorProcess, stop_processes
from models import AuditRecord
from models.db import session_scope
from sandbox.servers import DurableRedis, PrivatePostgres
from sandbox.stack import workers_answer
from worker.broker import ledger

WFM_SECRET = "chaos-wfm-secret"  # noqa: S105 - the emulator sink's key in this harness only
QUEUES = ("presence", "wfm", "shifts")
PREFLIGHT_REFUSED = "preflight: not starting"  # worker/preflight's line when a check fails


@dataclass
class Managed:
    """A long-running process the supervisor keeps up."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    stopping: bool = False  # a fault stopped it on purpose: not a death
    deaths: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)  # would not start: a dependency was down
    log_from: int = 0

    def start(self) -> None:
        self.log_from = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        self.stopping = False

    def reap(self) -> None:
        """If the process exited unbidden: record it (a refusal to start when its start-up
        checks failed, else a death) and start it again, as a restart policy would."""
        if self.process is None or self.alive() or self.stopping:
            return
        with self.log.open("rb") as log:
            log.seek(self.log_from)
            output = log.read().decode(errors="replace")
        if PREFLIGHT_REFUSED in output:  # started while Redis or the database was down
            self.refusals.append(f"{self.name} refused to start (preflight)")
        else:
            self.deaths.append(f"{self.name} exited with {self.process.returncode}")
        self.start()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` on purpose and wait for the exit (the supervisor does not count it)."""
        assert self.process is not None
        self.stopping = True
        self.process.send_signal(sig)
        self.process.wait(timeout=30)

    def children(self) -> list[int]:
        """Pids whose parent is this process (a prefork pool's children)."""
        if self.process is None:
            return []
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.process.pid:
                out.append(int(entry.name))
        return out


@dataclass
class ChaosStack:
    """Configure, then ``start()``; ``close()`` stops everything it started."""

    name: str
    workdir: Path
    postgres: PrivatePostgres
    users: int
    rate_limit: int
    emulator: EmulatorProcess | None = None
    redis: DurableRedis | None = None
    database_url: str = ""
    processes: dict[str, Managed] = field(default_factory=dict)
    _supervising: threading.Event = field(default_factory=threading.Event)
    _supervisor: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> ChaosStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = ["--users", str(self.users), "--queues", "8", "--rate-limit", str(self.rate_limit)]
        args += ["--wfm-secret", WFM_SECRET]
        self.emulator = EmulatorProcess(args=args).start()
        self.redis = DurableRedis(self.workdir)
        self.redis.start()
        self.database_url = self.postgres.database(f"chaos_{self.name.replace('-', '_')}")
        migrations.upgrade(self.database_url)
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        celery = [sys.executable, "-m", "celery", "-A", "worker.app"]
        worker = ["worker", "-Q", ",".join(QUEUES), "--loglevel", "WARNING", "--without-mingle"]
        node = os.uname().nodename
        self._add("threads", [*celery, *worker, "--pool", "threads", "--concurrency", "16",
                              "-n", f"chaos-threads@{node}"], env)  # fmt: skip
        self._add("prefork", [*celery, *worker, "--pool", "prefork", "--concurrency", "4",
                              "-n", f"chaos-prefork@{node}"], env)  # fmt: skip
        self._add("beat", [*celery, "beat", "--loglevel", "INFO",
                           "-s", str(self.workdir / "beat-schedule")], env)  # fmt: skip
        for process in self.processes.values():
            process.start()
        if not workers_answer(self.broker_url, 2, 90):
            raise RuntimeError(f"the chaos workers did not answer; logs in {self.workdir}")
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()
        return self

    def _add(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        self.processes[name] = Managed(name, cmd, env, self.workdir / f"{name}.log")

    @property
    def broker_url(self) -> str:
        assert self.redis is not None
        return self.redis.url

    @property
    def env(self) -> dict[str, str]:
        """Production settings but for where things are: the org's budget matches the
        emulator's, WFM goes to its sink."""
        assert self.emulator is not None
        return {
            "GENESYS_API_URL": self.emulator.base_url,
            "GENESYS_CLIENT_ID": self.emulator.client_id,
            "GENESYS_CLIENT_SECRET": self.emulator.client_secret,
            "REDIS_URL": self.broker_url,
            "DATABASE_URL": self.database_url,
            "RATE_LIMIT_PER_MINUTE": str(self.rate_limit),
            "WFM_WEBHOOK_URL": f"{self.emulator.base_url}/__wfm/events",
            "WFM_WEBHOOK_SECRET": WFM_SECRET,
        }

    def _supervise(self) -> None:
        while not self._supervising.wait(0.5):
            for process in self.processes.values():
                process.reap()

    def restart(self, name: str) -> None:
        """Start a process a fault stopped (the restart policy, after the fault's pause)."""
        self.processes[name].start()

    @property
    def died(self) -> list[str]:
        """Processes that exited while running (each started again)."""
        return [d for p in self.processes.values() for d in p.deaths]

    @property
    def refused(self) -> list[str]:
        """Starts the worker's start-up checks refused (a dependency down), not deaths: the
        restart policy starts them again, as it would in production."""
        return [r for p in self.processes.values() for r in p.refusals]

    def close(self) -> None:
        self._supervising.set()
        if self._supervisor is not None:
            self._supervisor.join()
        running = [p.process for p in self.processes.values() if p.process is not None]
        stop_processes(running, timeout_s=20)
        if self.emulator is not None:
            self.emulator.stop()
        if self.redis is not None:
            self.redis.close()

    # -- the emulator's admin API ------------------------------------------------------------
    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        assert self.emulator is not None
        response = httpx.request(
            method, f"{self.emulator.base_url}/__emulator{path}", json=body, timeout=60
        )
        response.raise_for_status()
        return response.json()

    def too_many_requests(self) -> int:
        return int(self.admin("GET", "/stats")["tooManyRequests"])

    # -- what the run left -------------------------------------------------------------------
    def rows(self) -> list[Row]:
        with session_scope(self.database_url) as session:
            found = session.execute(
                select(
                    AuditRecord.request_id, AuditRecord.user_id, AuditRecord.outcome,
                    AuditRecord.to_definition_id, AuditRecord.to_state, AuditRecord.correlation_id,
                )
            ).all()  # fmt: skip
        return [Row(*r) for r in found]

    def writes_and_finals(self) -> tuple[list[Write], dict[str, Final]]:
        """The worker's writes (the emulator's history, this client's PATCHes and bulk PUTs)
        and every agent's final presence."""
        assert self.emulator is not None
        history: dict[str, list[dict[str, Any]]] = self.admin("GET", "/history")
        writes = [
            Write(user_id, e["definitionId"], e["correlationId"], e["path"])
            for user_id, entries in history.items()
            for e in entries
            if e.get("clientId") == self.emulator.client_id
        ]
        finals = {}
        for user in self.admin("GET", "/users"):
            entries = history.get(user["id"]) or []
            definition = entries[-1]["definitionId"] if entries else None
            finals[user["id"]] = Final(definition, user["presence"])
        return writes, finals

    def wfm_events(self) -> list[WfmEvent]:
        """Deliveries the sink accepted (2xx with a valid signature)."""
        deliveries = self.admin("GET", "/wfm/deliveries")["deliveries"]
        return [
            WfmEvent(str(d["eventId"]), str(d["body"].get("request_id")))
            for d in deliveries
            if d["status"] < 300 and d["signatureValid"] and isinstance(d["body"], dict)
        ]

    def held(self) -> set[str]:
        """Request ids of the messages the broker still holds (unacknowledged, queued, or in the
        ledger: popped and not held yet, or a retry waiting)."""
        client = redis.Redis.from_url(self.broker_url, socket_timeout=5)
        ids: set[str] = set()
        try:
            for value in client.hvals("unacked"):
                ids |= request_ids(value)
            for value in client.hvals(ledger.ENTRIES_KEY):
                ids |= ledger_request_ids(value)
            for queue in QUEUES:
                for key in client.scan_iter(match=f"{queue}*"):
                    if _text(client.type(key)) == "list":
                        for value in client.lrange(key, 0, -1):
                            ids |= request_ids(value)
        finally:
            client.close()
        return ids

    def leftovers(self) -> Leftovers:
        """Messages the broker still holds: unacknowledged (the ledger's holds and kombu's
        hash), every queue list (priority variants included), and any sorted set holding
        delayed messages."""
        client = redis.Redis.from_url(self.broker_url, socket_timeout=5)
        unacked = queued = delayed = 0
        try:
            for key in client.scan_iter(count=1000):
                name = _text(key)
                kind = _text(client.type(key))
                if kind == "hash" and name == "unacked":
                    unacked += int(client.hlen(key))
                elif kind == "zset" and name == ledger.QUEUED_KEY:  # the ledger's holds
                    unacked += len(ledger.holds(client))
                elif kind == "list" and name.split("\x06", 1)[0] in QUEUES:
                    queued += int(client.llen(key))
                elif kind == "zset" and name != "unacked_index" and _delayed_name(name):
                    delayed += int(client.zcard(key))
        finally:
            client.close()
        return Leftovers(unacked, queued, delayed)


def ledger_request_ids(raw: bytes | str) -> set[str]:
    """The request ids a broker-ledger entry carries: a queued entry's message, or a scheduled
    retry's task id (a request id) and its wave elements."""
    try:
        entry = json.loads(raw)
    except ValueError:
        return set()
    if not isinstance(entry, dict):
        return set()
    if entry.get("state") == "queued":
        return request_ids(str(entry.get("message") or ""))
    ids = {str(entry["id"])} if "id" in entry else set()
    args = entry.get("args") or []
    if args and isinstance(args[0], list):
        ids |= {str(e["request_id"]) for e in args[0] if isinstance(e, dict) and "request_id" in e}
    return ids


def request_ids(raw: bytes | str) -> set[str]:
    """The request ids a broker entry carries: a queued message, or an ``unacked`` hash value
    (``[message, exchange, routing key]``); a wave's elements each carry their own."""
    try:
        entry = json.loads(raw)
        message = entry[0] if isinstance(entry, list) else entry
        ids = {str(message["headers"]["id"])}
        body = json.loads(base64.b64decode(message["body"]))
    except (ValueError, KeyError, IndexError, TypeError):
        return set()
    args = body[0] if isinstance(body, list) and body else []
    if args and isinstance(args[0], list):  # presence.wave: [[{"request_id": …}, …]]
        ids |= {str(e["request_id"]) for e in args[0] if isinstance(e, dict) and "request_id" in e}
    return ids


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _delayed_name(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in ("delay", "eta", "countdown", "schedule"))
