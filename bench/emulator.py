"""The emulator's own ceiling: startup, PATCH throughput and latency, event fan-out.

Run with ``.venv/bin/python -m bench.emulator`` (``--help`` for the knobs). Every figure is
compared with a baseline measured in the same run: a trivial aiohttp server started
and loaded exactly like the emulator (``--serve-baseline`` mode of this module), so the result is
a ratio that survives noisy, shared machines.

Phases, each with a short warm-up that is not counted:

1. startup: spawn → ready line, emulator vs the baseline server (median of a few starts);
2. ``baseline.patch``: PATCH a "hello" handler that reads the body and answers JSON;
3. ``emulator.get``: GET ``/api/v2/users/{id}/presences/purecloud`` (auth, pipeline, JSON);
4. ``emulator.patch``: PATCH ``/api/v2/users/{id}/presences/purecloud`` over many agents,
   cycling Available → On Queue → Break so presence and routing status really change;
5. ``baseline.fanout`` / ``emulator.fanout``: the same PATCH load while N WebSockets are
   subscribed to every PATCHed agent's presence topic; counts events received per second.

Load comes from client processes (``--clients``), each holding ``--connections`` keep-alive
connections, one request in flight per connection (closed loop). The client is a minimal
asyncio HTTP/1.1 protocol over pre-built request bytes: the emulator is single-threaded and
shares the two cores with its load, so the load must cost as little CPU as possible.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from multiprocessing.context import SpawnContext
from multiprocessing.queues import Queue as MpQueue
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emulator.launcher import EmulatorProcess

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "emulator.json"
BASELINE_READY = "bench-baseline ready at "
EVENT_PREFIX_BYTES = b'{"topicName": "v2.users.'
PATCH_TARGET_PER_S = 2_000.0
STARTUP_TARGET_S = 2.0
# System presence ids (reference §2.2); the emulator serves them as the org's primaries.
AVAILABLE_ID = "6a3af858-942f-489d-9700-5f9bcdcdae9b"
ON_QUEUE_ID = "e08eaf1b-ee47-4fa9-a231-1200e284798f"
BREAK_ID = "227b37e2-f1d0-4dd0-8f50-badd7cf6d158"
CYCLE = (AVAILABLE_ID, ON_QUEUE_ID, BREAK_ID)


# -- the load client (runs in child processes) ---------------------------------------------
@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What one client process sends, where, and during which wall-clock window it counts."""

    host: str
    port: int
    requests: tuple[bytes, ...]
    connections: int
    offset: int
    count_from: float  # time.time(): completions before this are warm-up
    stop_at: float  # time.time(): no new request after this


@dataclass(slots=True)
class LoadResult:
    ok: int = 0
    errors: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    connect_failures: int = 0
    cpu_s: float = 0.0


class _HttpConnection(asyncio.Protocol):
    """One keep-alive connection sending pre-built requests back to back."""

    def __init__(
        self, spec: LoadSpec, start: int, result: LoadResult, done: asyncio.Future[None]
    ) -> None:
        self.spec = spec
        self.next = start
        self.result = result
        self.done = done
        self.buffer = bytearray()
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None
        # Wall-clock window in this process's monotonic clock (cheap to read per request).
        shift = time.monotonic() - time.time()
        self.count_from = spec.count_from + shift
        self.stop_at = spec.stop_at + shift

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        now = time.monotonic()
        if now >= self.stop_at:
            self.transport.close()
            return
        requests = self.spec.requests
        self.transport.write(requests[self.next % len(requests)])
        self.next += 1
        self.sent_at = now

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            at = buffer.find(b"\r\ncontent-length:", 0, head_end)
            if at < 0:
                at = buffer.find(b"\r\nContent-Length:", 0, head_end)
            if at < 0:
                self.result.errors += 1  # not what this client understands: give up
                assert self.transport is not None
                self.transport.close()
                return
            line_end = buffer.find(b"\r\n", at + 2)
            total = head_end + 4 + int(buffer[at + 17 : line_end])
            if len(buffer) < total:
                return
            status = int(buffer[9:12])
            del buffer[:total]
            now = time.monotonic()
            if now >= self.count_from:
                result = self.result
                result.statuses[status] += 1
                if 200 <= status < 300:
                    result.ok += 1
                    result.latencies_ms.append((now - self.sent_at) * 1000.0)
                else:
                    result.errors += 1
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if time.monotonic() < self.stop_at:
            self.result.errors += 1
        if not self.done.done():
            self.done.set_result(None)


async def _load(spec: LoadSpec) -> LoadResult:
    loop = asyncio.get_running_loop()
    result = LoadResult()
    waits: list[asyncio.Future[None]] = []
    stride = max(1, len(spec.requests) // max(1, spec.connections))
    for index in range(spec.connections):
        done: asyncio.Future[None] = loop.create_future()
        start = spec.offset + index * stride
        try:
            await loop.create_connection(
                lambda s=start, d=done: _HttpConnection(spec, s, result, d),  # type: ignore[misc]
                spec.host,
                spec.port,
            )
        except OSError:
            result.connect_failures += 1
            continue
        waits.append(done)
    if waits:
        await asyncio.wait_for(asyncio.gather(*waits), timeout=spec.stop_at - time.time() + 10)
    return result


def _load_worker(spec: LoadSpec, out: MpQueue[LoadResult]) -> None:
    began = time.process_time()
    result = asyncio.run(_load(spec))
    result.cpu_s = time.process_time() - began
    out.put(result)


# -- the WebSocket readers (child processes) -------------------------------------------------
@dataclass(frozen=True, slots=True)
class ReaderSpec:
    uris: tuple[str, ...]


@dataclass(slots=True)
class ReaderResult:
    # Events per 10 ms bucket of time.time(), so the parent can cut any window afterwards.
    buckets: Counter[int] = field(default_factory=Counter)
    other_messages: int = 0
    connected: int = 0
    closed_early: int = 0
    cpu_s: float = 0.0


class _WsCounter(asyncio.Protocol):
    """A read-only WebSocket client that counts event frames without decoding them.

    Server frames are unmasked; text frames whose payload starts like a ``v2.users.*`` event
    count as events, other text frames (heartbeats, pongs) as other messages. Frames are
    parsed straight out of the receive buffer; one clock read per chunk, not per frame.
    """

    def __init__(
        self, handshake: bytes, result: ReaderResult, upgraded: asyncio.Future[None]
    ) -> None:
        self.handshake = handshake
        self.result = result
        self.upgraded = upgraded
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.handshake)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.upgraded.done():
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(ConnectionError(bytes(buffer[:head_end]).decode()))
                return
            del buffer[: head_end + 4]
            self.upgraded.set_result(None)
        size = len(buffer)
        pos = events = others = 0
        while size - pos >= 2:
            length = buffer[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buffer[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buffer[pos + 2 : pos + 10], "big"), 10
            end = pos + head + length
            if end > size:
                break
            opcode = buffer[pos] & 0x0F
            if opcode == 1:
                if buffer.startswith(EVENT_PREFIX_BYTES, pos + head):
                    events += 1
                else:
                    others += 1
            elif opcode == 8:
                self.closed = True
            pos = end
        del buffer[:pos]
        if events:
            self.result.buckets[int(time.time() * 100)] += events
        self.result.other_messages += others

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"\x88\x80\x00\x00\x00\x00")  # masked, empty close frame
            self.transport.close()


async def _read(spec: ReaderSpec, ready: MpQueue[int], stop: MpEvent) -> ReaderResult:
    loop = asyncio.get_running_loop()
    result = ReaderResult()
    counters: list[_WsCounter] = []
    for uri in spec.uris:
        authority, _, path = uri.removeprefix("ws://").partition("/")
        host, _, port = authority.partition(":")
        key = base64.b64encode(os.urandom(16)).decode()
        handshake = (
            f"GET /{path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        upgraded: asyncio.Future[None] = loop.create_future()
        _, counter = await loop.create_connection(
            lambda h=handshake, u=upgraded: _WsCounter(h, result, u),  # type: ignore[misc]
            host,
            int(port),
        )
        await asyncio.wait_for(upgraded, timeout=10)
        counters.append(counter)
    result.connected = len(counters)
    ready.put(len(counters))
    while not stop.is_set():
        await asyncio.sleep(0.05)
    result.closed_early = sum(1 for c in counters if c.closed)
    for counter in counters:
        counter.close()
    await asyncio.sleep(0.05)
    return result


def _reader_worker(
    spec: ReaderSpec, ready: MpQueue[int], stop: MpEvent, out: MpQueue[ReaderResult]
) -> None:
    began = time.process_time()
    result = asyncio.run(_read(spec, ready, stop))
    result.cpu_s = time.process_time() - began
    out.put(result)


# -- the baseline server (``--serve-baseline``, a subprocess) --------------------------------
async def _serve_baseline(port: int) -> None:
    """A trivial aiohttp app served like the emulator: same runner, no access log."""
    import signal

    from aiohttp import web

    sockets: set[web.WebSocketResponse] = set()
    answer = json.dumps({"hello": "world", "selfUri": "/hello"})
    event = json.dumps(
        {
            "topicName": "v2.users.00000000-0000-4000-8000-000000000000.presence",
            "version": "2",
            "eventBody": {
                "source": "PURECLOUD",
                "presenceDefinition": {"id": ON_QUEUE_ID, "systemPresence": "ON_QUEUE"},
                "primary": True,
                "message": "",
                "modifiedDate": "2026-01-01T00:00:00.000Z",
            },
            "metadata": {"CorrelationId": "00000000-0000-4000-8000-000000000000"},
        }
    )

    async def hello(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text=answer, content_type="application/json")

    async def broadcast(request: web.Request) -> web.Response:
        await request.read()
        for ws in list(sockets):
            if not ws.closed:
                await ws.send_str(event)
        return web.Response(text=answer, content_type="application/json")

    async def socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        sockets.add(ws)
        try:
            async for _ in ws:
                pass
        finally:
            sockets.discard(ws)
        return ws

    app = web.Application()
    app.router.add_route("*", "/hello", hello)
    app.router.add_patch("/broadcast", broadcast)
    app.router.add_get("/ws", socket)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]  # the bound port when 0 was asked
    print(f"{BASELINE_READY}http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


class BaselineProcess:
    """The baseline server as a child process, started and timed like EmulatorProcess."""

    def __init__(self) -> None:
        self.base_url = ""
        self.startup_s = 0.0
        self._proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def __enter__(self) -> BaselineProcess:
        began = time.perf_counter()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.emulator", "--serve-baseline"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        ready = threading.Event()
        threading.Thread(target=self._pump, args=(ready,), daemon=True).start()
        if not ready.wait(20) or not self.base_url:
            self.stop()
            raise RuntimeError("the baseline server did not start")
        self.startup_s = time.perf_counter() - began
        return self

    def _pump(self, ready: threading.Event) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.startswith(BASELINE_READY):
                self.base_url = line[len(BASELINE_READY) :].strip()
                ready.set()
        ready.set()

    def stop(self) -> None:
        from emulator.launcher import stop_processes  # parent only: clients stay light

        if self._proc is not None:
            stop_processes([self._proc], timeout_s=5)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- orchestration (the parent process) ------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Options:
    duration: float
    side_duration: float
    warmup: float
    rounds: int
    clients: int
    connections: int
    fanout_clients: int
    sockets: int
    readers: int
    agents: int
    users: int
    startup_runs: int
    output: Path


@dataclass(slots=True)
class PhaseResult:
    name: str
    seconds: float
    requests: int
    errors: int
    per_s: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int]
    server_cpu_pct: float | None = None  # server process CPU over the counted window
    clients_cpu_s: float = 0.0  # all load processes, whole lifetime (spawn and warm-up too)
    events: int | None = None
    events_per_s: float | None = None
    expected_events: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def process_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a process so far (Linux ``/proc``); None elsewhere."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _request(method: str, path: str, host: str, token: str | None, body: bytes | None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def _host_port(base_url: str) -> tuple[str, int]:
    host, _, port = base_url.removeprefix("http://").partition(":")
    return host, int(port)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


@dataclass(slots=True)
class Sample:
    """One counted load window against one server."""

    seconds: float
    ok: int
    errors: int
    statuses: Counter[int]
    latencies_ms: list[float]
    server_cpu_s: float | None
    clients_cpu_s: float
    count_from: float
    stop_at: float


def _sample(
    ctx: SpawnContext,
    base_url: str,
    requests: list[bytes],
    *,
    clients: int,
    connections: int,
    duration: float,
    warmup: float,
    server_pid: int | None,
    before_start: float = 0.5,
) -> Sample:
    """Run ``clients`` load processes and count what completes in the window after warm-up."""
    host, port = _host_port(base_url)
    count_from = time.time() + before_start + warmup
    stop_at = count_from + duration
    out: MpQueue[LoadResult] = ctx.Queue()
    share = max(1, len(requests) // clients)
    specs = [
        LoadSpec(host, port, tuple(requests), connections, i * share, count_from, stop_at)
        for i in range(clients)
    ]
    procs = [ctx.Process(target=_load_worker, args=(spec, out), daemon=True) for spec in specs]
    for proc in procs:
        proc.start()
    time.sleep(max(0.0, count_from - time.time()))
    cpu_from = process_cpu_s(server_pid)
    time.sleep(max(0.0, stop_at - time.time()))
    cpu_to = process_cpu_s(server_pid)
    results = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=10)
    statuses: Counter[int] = Counter()
    for r in results:
        statuses.update(r.statuses)
    return Sample(
        seconds=duration,
        ok=sum(r.ok for r in results),
        errors=sum(r.errors + r.connect_failures for r in results),
        statuses=statuses,
        latencies_ms=[v for r in results for v in r.latencies_ms],
        server_cpu_s=None if cpu_from is None or cpu_to is None else cpu_to - cpu_from,
        clients_cpu_s=sum(r.cpu_s for r in results),
        count_from=count_from,
        stop_at=stop_at,
    )


def _phase(name: str, samples: list[Sample]) -> PhaseResult:
    """Merge the samples (rounds) of one phase."""
    seconds = sum(s.seconds for s in samples)
    ok = sum(s.ok for s in samples)
    latencies = sorted(v for s in samples for v in s.latencies_ms)
    statuses: Counter[int] = Counter()
    for sample in samples:
        statuses.update(sample.statuses)
    cpu = [s.server_cpu_s for s in samples]
    return PhaseResult(
        name=name,
        seconds=seconds,
        requests=ok,
        errors=sum(s.errors for s in samples),
        per_s=ok / seconds,
        p50_ms=_percentile(latencies, 0.50),
        p99_ms=_percentile(latencies, 0.99),
        statuses={str(k): v for k, v in sorted(statuses.items())},
        server_cpu_pct=None if None in cpu else 100 * sum(c or 0.0 for c in cpu) / seconds,
        clients_cpu_s=sum(s.clients_cpu_s for s in samples),
        extra={"rounds_per_s": [s.ok / s.seconds for s in samples]} if len(samples) > 1 else {},
    )


def _run_fanout(
    ctx: SpawnContext,
    name: str,
    base_url: str,
    socket_uris: list[str],
    requests: list[bytes],
    opts: Options,
    server_pid: int | None,
) -> PhaseResult:
    """Readers connect first; then the PATCH load runs; events are counted in its window."""
    ready: MpQueue[int] = ctx.Queue()
    results: MpQueue[ReaderResult] = ctx.Queue()
    stop = ctx.Event()
    groups = [tuple(socket_uris[i :: opts.readers]) for i in range(opts.readers)]
    readers = [
        ctx.Process(target=_reader_worker, args=(ReaderSpec(g), ready, stop, results), daemon=True)
        for g in groups
        if g
    ]
    for proc in readers:
        proc.start()
    connected = sum(ready.get(timeout=30) for _ in readers)
    sample = _sample(
        ctx,
        base_url,
        requests,
        clients=opts.fanout_clients,
        connections=opts.connections,
        duration=opts.side_duration,
        warmup=opts.warmup,
        server_pid=server_pid,
    )
    time.sleep(0.3)  # let the last events land
    stop.set()
    received = [results.get(timeout=30) for _ in readers]
    for proc in readers:
        proc.join(timeout=10)
    lo, hi = int(sample.count_from * 100), int(sample.stop_at * 100)
    events = sum(n for r in received for bucket, n in r.buckets.items() if lo <= bucket < hi)
    phase = _phase(name, [sample])
    phase.events = events
    phase.events_per_s = events / sample.seconds
    phase.expected_events = phase.requests * connected
    phase.extra = {
        "sockets": connected,
        "closedEarly": sum(r.closed_early for r in received),
        "otherMessages": sum(r.other_messages for r in received),
        "readersCpuS": sum(r.cpu_s for r in received),
    }
    return phase


def _measure_startups(opts: Options) -> dict[str, Any]:
    from emulator.launcher import EmulatorProcess

    emulator_s: list[float] = []
    baseline_s: list[float] = []
    for _ in range(opts.startup_runs):
        with EmulatorProcess(args=["--rate-limit", "0", "--users", str(opts.users)]) as emu:
            emulator_s.append(emu.startup_s)
        with BaselineProcess() as base:
            baseline_s.append(base.startup_s)
    return {
        "emulator_s": statistics.median(emulator_s),
        "baseline_s": statistics.median(baseline_s),
        "emulator_runs_s": emulator_s,
        "baseline_runs_s": baseline_s,
    }


class _Org:
    """The bench's view of the emulator: a token, the agents it PATCHes, request builders."""

    def __init__(self, emu: EmulatorProcess, agents: int) -> None:
        import httpx

        self.http = httpx.Client(base_url=emu.base_url, timeout=10)
        response = self.http.post(
            "/oauth/token",
            auth=(emu.client_id, emu.client_secret),
            data={"grant_type": "client_credentials"},
        )
        response.raise_for_status()
        self.token: str = response.json()["access_token"]
        self.http.headers["Authorization"] = f"Bearer {self.token}"
        users = self.http.get("/__emulator/users").json()
        self.agents: list[str] = [u["id"] for u in users if u["state"] == "active"][:agents]
        self.host = emu.base_url.removeprefix("http://")

    def patches(
        self, host: str, path: str | None = None, *, with_token: bool = True
    ) -> list[bytes]:
        """PATCH requests cycling every agent through Available → On Queue → Break."""
        out = []
        for round_ in range(len(CYCLE)):
            for index, agent in enumerate(self.agents):
                definition = CYCLE[(index + round_) % len(CYCLE)]
                body = json.dumps({"presenceDefinition": {"id": definition}}).encode()
                target = path or f"/api/v2/users/{agent}/presences/purecloud"
                out.append(
                    _request("PATCH", target, host, self.token if with_token else None, body)
                )
        return out

    def gets(self) -> list[bytes]:
        return [
            _request("GET", f"/api/v2/users/{a}/presences/purecloud", self.host, self.token, None)
            for a in self.agents
        ]

    def channels(self, count: int) -> list[str]:
        """``count`` channels, each subscribed to every agent's presence topic."""
        if count > 20:
            self.http.put("/__emulator/settings", json={"max_channels": count}).raise_for_status()
        topics = [{"id": f"v2.users.{a}.presence"} for a in self.agents]
        uris = []
        for _ in range(count):
            channel = self.http.post("/api/v2/notifications/channels").json()
            subscriptions = f"/api/v2/notifications/channels/{channel['id']}/subscriptions"
            self.http.put(subscriptions, json=topics).raise_for_status()
            uris.append(channel["connectUri"])
        return uris

    def patch_count(self) -> int:
        """PATCH 200s the emulator itself counted so far."""
        requests = self.http.get("/__emulator/stats").json()["requests"]
        return int(requests.get("presence.patch", {}).get("200", 0))


def run(opts: Options) -> dict[str, Any]:
    from emulator.launcher import EmulatorProcess

    ctx = mp.get_context("spawn")
    startup = _measure_startups(opts)
    phases: dict[str, PhaseResult] = {}
    emulator_args = ["--rate-limit", "0", "--users", str(opts.users), "--heartbeat", "30"]
    with EmulatorProcess(args=emulator_args) as emu, BaselineProcess() as base:
        startup["emulator_bench_instance_s"] = emu.startup_s
        emu_pid = emu._proc.pid if emu._proc is not None else None
        org = _Org(emu, opts.agents)
        base_host = base.base_url.removeprefix("http://")
        emu_patches = org.patches(org.host)
        load: dict[str, Any] = {
            "clients": opts.clients,
            "connections": opts.connections,
            "warmup": opts.warmup,
        }
        hellos = org.patches(base_host, "/hello", with_token=False)
        gets = org.gets()
        before = org.patch_count()
        # Rounds interleave baseline and emulator, so a noisy neighbour hits both alike.
        samples: dict[str, list[Sample]] = {
            "baseline.patch": [],
            "emulator.get": [],
            "emulator.patch": [],
        }
        side, main = opts.side_duration / opts.rounds, opts.duration / opts.rounds
        for _ in range(opts.rounds):
            samples["baseline.patch"].append(
                _sample(ctx, base.base_url, hellos, duration=side, server_pid=base.pid, **load)
            )
            samples["emulator.get"].append(
                _sample(ctx, emu.base_url, gets, duration=side, server_pid=emu_pid, **load)
            )
            samples["emulator.patch"].append(
                _sample(ctx, emu.base_url, emu_patches, duration=main, server_pid=emu_pid, **load)
            )
        for name, taken in samples.items():
            phases[name] = _phase(name, taken)
        # Cross-check: the emulator itself counted at least the PATCHes the clients did.
        phases["emulator.patch"].extra["emulatorCounted200"] = org.patch_count() - before
        by_round = [
            (p.ok / p.seconds) / (b.ok / b.seconds)
            for p, b in zip(samples["emulator.patch"], samples["baseline.patch"], strict=True)
        ]

        # Fan-out: every socket follows every PATCHed agent's presence topic.
        phases["baseline.fanout"] = _run_fanout(
            ctx, "baseline.fanout", base.base_url,
            [base.base_url.replace("http://", "ws://", 1) + "/ws"] * opts.sockets,
            org.patches(base_host, "/broadcast", with_token=False), opts, base.pid,
        )  # fmt: skip
        phases["emulator.fanout"] = _run_fanout(
            ctx,
            "emulator.fanout",
            emu.base_url,
            org.channels(opts.sockets),
            emu_patches,
            opts,
            emu_pid,
        )
        phases["emulator.fanout"].extra["hub"] = org.http.get("/__emulator/stats").json()["events"]
        org.http.close()

    patch = phases["emulator.patch"]
    fanout, base_fanout = phases["emulator.fanout"], phases["baseline.fanout"]
    ratios = {
        "startup_emulator_over_baseline": startup["emulator_s"] / startup["baseline_s"],
        "patch_over_baseline_patch": patch.per_s / phases["baseline.patch"].per_s,
        "patch_over_baseline_patch_by_round": by_round,
        "patch_over_emulator_get": patch.per_s / phases["emulator.get"].per_s,
        "fanout_events_over_baseline": _ratio(fanout.events_per_s, base_fanout.events_per_s),
        "fanout_delivery_emulator": _ratio(fanout.events, fanout.expected_events),
        "fanout_delivery_baseline": _ratio(base_fanout.events, base_fanout.expected_events),
    }
    return {
        "benchmark": "emulator",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "startup": startup,
        "phases": {name: asdict(p) for name, p in phases.items()},
        "ratios": ratios,
        "targets": {
            "startup_s": {
                "target": STARTUP_TARGET_S,
                "value": startup["emulator_s"],
                "met": startup["emulator_s"] < STARTUP_TARGET_S,
            },
            "patch_per_s": {
                "target": PATCH_TARGET_PER_S,
                "value": patch.per_s,
                "met": patch.per_s >= PATCH_TARGET_PER_S,
            },
        },
    }


def _ratio(numerator: float | int | None, denominator: float | int | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def report(result: dict[str, Any]) -> None:
    """Print the result as a table; ratios compare with the baseline of the same run."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 132)
    startup = result["startup"]
    table = Table(title="Emulator benchmark (baseline: a trivial aiohttp app, same run, same load)")
    columns = (
        "phase",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "server CPU",
        "events/s",
        "delivered",
    )
    for column in (*columns, "vs baseline"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    startup_ratio = result["ratios"]["startup_emulator_over_baseline"]
    table.add_row(
        "startup to ready (median)",
        f"{startup['emulator_s']:.2f} s",
        *[""] * (len(columns) - 2),
        f"{startup_ratio:.2f}x (base {startup['baseline_s']:.2f} s)",
    )
    phases = result["phases"]
    versus = {
        "emulator.get": phases["baseline.patch"]["per_s"],
        "emulator.patch": phases["baseline.patch"]["per_s"],
    }
    for name, phase in phases.items():
        events = phase["events_per_s"]
        delivered = _ratio(phase["events"], phase["expected_events"])
        if name == "emulator.fanout":
            vs = _ratio(events, phases["baseline.fanout"]["events_per_s"])
        else:
            vs = _ratio(phase["per_s"], versus.get(name))
        cpu = phase["server_cpu_pct"]
        table.add_row(
            name,
            f"{phase['per_s']:,.0f}",
            f"{phase['p50_ms']:.2f}",
            f"{phase['p99_ms']:.2f}",
            str(phase["errors"]),
            "" if cpu is None else f"{cpu:.0f}%",
            "" if events is None else f"{events:,.0f}",
            "" if delivered is None else f"{delivered:.1%}",
            "" if vs is None else f"{vs:.2f}x",
        )
    console.print(table)
    for name, target in result["targets"].items():
        mark = "[green]met[/green]" if target["met"] else "[red]NOT met[/red]"
        console.print(f"target {name}: {target['value']:,.2f} vs {target['target']:,} → {mark}")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Options]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.emulator", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds counted in the emulator PATCH phase"
    )
    parser.add_argument(
        "--side-duration",
        type=float,
        default=4.0,
        help="seconds counted in each baseline, GET and fan-out phase",
    )
    parser.add_argument(
        "--warmup", type=float, default=0.75, help="uncounted seconds at the start of each phase"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="interleaved baseline/emulator rounds sharing the durations",
    )
    parser.add_argument("--clients", type=int, default=4, help="load processes")
    parser.add_argument(
        "--connections", type=int, default=4, help="keep-alive connections per load process"
    )
    parser.add_argument(
        "--fanout-clients", type=int, default=2, help="load processes during fan-out"
    )
    parser.add_argument("--sockets", type=int, default=20, help="WebSockets in the fan-out phases")
    parser.add_argument("--readers", type=int, default=1, help="processes holding those sockets")
    parser.add_argument(
        "--agents", type=int, default=200, help="agents PATCHed (and followed by every socket)"
    )
    parser.add_argument(
        "--users", type=int, default=1000, help="users in the emulator's seeded org"
    )
    parser.add_argument(
        "--startup-runs", type=int, default=3, help="starts timed for the startup median"
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS_PATH, help="where to write the JSON result"
    )
    parser.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    opts = Options(
        duration=ns.duration,
        side_duration=ns.side_duration,
        warmup=ns.warmup,
        rounds=ns.rounds,
        clients=ns.clients,
        connections=ns.connections,
        fanout_clients=ns.fanout_clients,
        sockets=ns.sockets,
        readers=ns.readers,
        agents=ns.agents,
        users=ns.users,
        startup_runs=ns.startup_runs,
        output=ns.output,
    )
    return ns, opts


def main(argv: list[str] | None = None) -> None:
    ns, opts = parse_args(argv)
    if ns.serve_baseline:
        asyncio.run(_serve_baseline(ns.port))
        return
    result = run(opts)
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(json.dumps(result, indent=2) + "\n")
    report(result)
    print(f"result written to {opts.output}")


if __name__ == "__main__":
    main()
