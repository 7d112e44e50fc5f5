"""What a worker process holds for one org: one of each connection, created lazily after fork.

``Runtime.current(org)`` builds an org's runtime on first use in each process (never in the
Celery parent, never inside ``worker_process_init``, whose handlers must finish within seconds).
Every per-org piece (token, budget, client, catalog, caches, ordering, capacity, channels) is
keyed by the org's Redis prefix, so nothing of one org is confused with another's even when user
ids repeat across orgs.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar

import httpx
import redis
from celery import Celery

from worker import names
from worker.audit import SqlAuditStore
from worker.bound_redis import ThreadBoundRedis
from worker.broker import pauses
from worker.catalog import PresenceCatalog
from worker.clock import SystemClock
from worker.flow.ports import FlowConfig, Ports
from worker.flow.record import AuditDraft, Recorder
from worker.genesys.client import GenesysClient
from worker.genesys.connect import budget_key, genesys_client, http_client
from worker.genesys.token import TokenProvider
from worker.intents import WriteIntents
from worker.limiter import SharedRateLimiter
from worker.notifications.group import ChannelGroup, channel_group
from worker.observability import metrics
from worker.ordering import AgentOrdering
from worker.orgs import DEFAULT_ORG, Org, UnknownOrg, get_orgs
from worker.retry import RetryPolicy
from worker.rules.capacity import CapacityGuard, QueuePolicy, load_overrides
from worker.rules.transitions import TransitionMatrix
from worker.settings import Settings
from worker.state_cache import StateCache

BACKLOG_READ_S = 1.0


@dataclass
class Runtime:
    org: Org
    settings: Settings
    redis: redis.Redis
    http: httpx.Client
    limiter: SharedRateLimiter
    tokens: TokenProvider
    client: GenesysClient
    cache: StateCache
    catalog: PresenceCatalog
    matrix: TransitionMatrix
    ordering: AgentOrdering
    listener: ChannelGroup
    capacity: CapacityGuard
    name: str
    retry: RetryPolicy
    _producer: Celery | None = None
    _ports: Ports | None = None
    # One wave at a time per process: a wave fills the process's channel with its agents.
    wave_lock: threading.Lock = field(default_factory=threading.Lock)
    # Served beside other orgs: this org's tasks take at most their share of the process.
    shares_process: bool = False
    # (when read, monotonic; messages then waiting in this org's queue)
    _backlog: tuple[float, int] = (float("-inf"), 0)

    def occupying(self) -> AbstractContextManager[None]:
        """Around one task of this org: beside other orgs, at most ``ORG_TASK_SHARE`` of them
        run in this process at once, one while the org's backlog is deep
        (:func:`worker.broker.pauses.occupying`, :func:`~worker.broker.pauses.task_share`)."""
        if not self.shares_process:
            return nullcontext()
        share = pauses.task_share(
            self.backlog(), self.settings.rate_limit_per_minute, self.settings.org_task_share
        )
        return pauses.occupying(self.org.queue, share)

    def backlog(self) -> int:
        """Messages waiting in this org's queue, read at most once per ``BACKLOG_READ_S`` (the
        last known count when Redis does not answer)."""
        read_at, count = self._backlog
        now = time.monotonic()
        if now - read_at >= BACKLOG_READ_S:
            with suppress(redis.RedisError):
                count = int(self.redis.llen(self.org.queue))
            self._backlog = (now, count)
        return count

    def enqueue_wfm(self, delivery_id: int) -> None:
        """Send ``wfm.sync`` for a committed outbox row (by name: no task import needed)."""
        if self._producer is None:
            self._producer = Celery(broker=self.settings.redis_url, set_as_current=False)
            self._producer.conf.update(task_serializer="json", accept_content=["json"])
        self._producer.send_task(names.WFM_SYNC_TASK, args=(delivery_id,), queue=names.WFM_QUEUE)

    @property
    def prefix(self) -> str:
        """This org's Redis key prefix."""
        return self.org.prefix

    @property
    def ports(self) -> Ports:
        """What the update flows use, over this process's connections."""
        if self._ports is None:
            settings = self.settings
            store = SqlAuditStore(settings.database_url)
            clock = SystemClock()
            self._ports = Ports(
                api=self.client,
                catalog=self.catalog,
                matrix=self.matrix,
                ordering=self.ordering,
                intents=WriteIntents(
                    self.redis,
                    ttl_s=int(settings.max_request_age_s + settings.broker_visibility_timeout_s),
                    cache=self.cache,
                    prefix=self.prefix,
                ),
                cache=self.cache,
                capacity=self.capacity,
                confirmations=self.listener,
                audit=store,
                recorder=Recorder(
                    store,
                    now=clock.now,
                    observe=observe_row,
                    enqueue_wfm=self.enqueue_wfm,
                    wfm_enabled=bool(settings.wfm_webhook_url),
                ),
                clock=clock,
                config=FlowConfig(
                    ack_timeout_s=settings.ack_timeout_s,
                    agent_lock_ttl_s=settings.agent_lock_ttl_s,
                    agent_lock_wait_s=settings.ack_timeout_s + settings.http_timeout_s,
                    capacity_observation_ttl_s=settings.capacity_observation_ttl_s,
                    capacity_defer_max_s=settings.capacity_defer_max_s,
                    bulk_batch_size=settings.bulk_batch_size,
                    max_future_skew_s=settings.requested_at_max_skew_s,
                ),
                jitter=random.uniform,
            )
        return self._ports

    @classmethod
    def build(cls, settings: Settings, *, org: Org | None = None) -> Runtime:
        """``org``'s runtime (``settings`` are its settings; None: the ``default`` org of
        ``settings``); raises ConfigError (one line naming the setting or file) when the
        configuration cannot work."""
        org = org or Org(DEFAULT_ORG, settings)
        prefix = org.prefix
        matrix, overrides = check_config(settings)
        r = ThreadBoundRedis.from_url(settings.redis_url)
        http = http_client(settings, httpx.Limits(max_connections=64, max_keepalive_connections=32))
        client_key = budget_key(settings)
        client = genesys_client(settings, r, http, prefix=prefix, org=org.name)
        limiter, tokens = client.limiter, client.tokens
        cache = StateCache(r, ttl_s=settings.state_cache_ttl_s, prefix=prefix)
        listener = channel_group(settings, client, cache, r, client_key, prefix=prefix)
        return cls(
            org=org,
            settings=settings,
            redis=r,
            http=http,
            limiter=limiter,
            tokens=tokens,
            client=client,
            cache=cache,
            catalog=PresenceCatalog(r, client.presence_definitions, prefix=prefix),
            matrix=matrix,
            ordering=AgentOrdering(r, prefix=prefix),
            listener=listener,
            capacity=CapacityGuard(
                r,
                client,
                default=QueuePolicy(
                    settings.capacity_min_on_queue, settings.capacity_max_waiting_per_agent
                ),
                overrides=overrides,
                observation_ttl_s=settings.capacity_observation_ttl_s,
                membership_ttl_s=settings.capacity_membership_ttl_s,
                reservation_grace_s=settings.capacity_reservation_grace_s,
                prefix=prefix,
            ),
            name=f"{socket.gethostname()}:{os.getpid()}",
            retry=RetryPolicy.for_updates(settings),
        )

    # This process's runtimes by org, with the pid that built them (a fork starts afresh).
    _current: ClassVar[tuple[int, dict[str, Runtime]] | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def current(cls, org: str = DEFAULT_ORG) -> Runtime:
        """This process's runtime of ``org``, built on first use (after any fork). Raises
        UnknownOrg when ``org`` is not configured, OrgsError or ConfigError when the
        configuration cannot work."""
        with cls._lock:
            pid = os.getpid()
            if cls._current is None or cls._current[0] != pid:
                cls._current = (pid, {})
            runtimes = cls._current[1]
            runtime = runtimes.get(org)
            if runtime is None:
                orgs = get_orgs()
                if org not in orgs:
                    raise UnknownOrg(org, list(orgs))
                runtime = cls.build(orgs[org].settings, org=orgs[org])
                if len(orgs) > 1:
                    # A spent budget pauses the org's queue here, so its backlog waits in the
                    # queue instead of taking threads and CPU from the other orgs.
                    runtime.limiter.on_exhausted = partial(_pause_until, orgs[org].queue)
                    runtime.shares_process = True
                runtimes[org] = runtime
            return runtime

    @classmethod
    def built(cls) -> list[Runtime]:
        """The runtimes this process has built so far."""
        current = cls._current
        return (
            list(current[1].values()) if current is not None and current[0] == os.getpid() else []
        )


class ConfigError(ValueError):
    """The configuration cannot work; the message names the setting or file."""


def check_config(settings: Settings) -> tuple[TransitionMatrix, dict[str, QueuePolicy]]:
    """The transition matrix and capacity overrides the settings name, and a Genesys URL;
    raises ConfigError (one line) for the first that is unusable."""
    try:
        settings.api_base  # noqa: B018 - raises when neither region nor URL is set
        return (
            TransitionMatrix.load(settings.transition_matrix_file),
            load_overrides(settings.capacity_overrides_file),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


PAUSE_EARLY_S = 0.1
"""A paused queue is popped again this much before its slot frees: the retry waiting for that
slot is published to it just before (``BUDGET_EARLY_S`` or the inline wait)."""


def _pause_until(queue: str, slot_at: float) -> None:
    pauses.pause(queue, slot_at - PAUSE_EARLY_S)


def observe_row(draft: AuditDraft) -> None:
    """The metrics of one terminal row, once it is committed (the recorder's ``observe``)."""
    metrics.observe_update(
        draft.outcome.value if draft.outcome is not None else "unknown",
        org=draft.org,
        requested_at=draft.requested_at,
        finished_at=draft.finished_at,
        confirm_ms=draft.confirm_ms,
    )
