"""What a worker process holds: one of each connection, created lazily after fork.

``Runtime.current()`` builds it on first use in each process (never in the Celery parent, never
inside ``worker_process_init``, whose handlers must finish within seconds).
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from typing import ClassVar

import httpx
import redis
from celery import Celery

from worker.catalog import PresenceCatalog
from worker.genesys.client import GenesysClient
from worker.genesys.connect import budget_key, genesys_client
from worker.genesys.token import TokenProvider
from worker.limiter import SharedRateLimiter
from worker.notifications.listener import NotificationListener
from worker.notifications.slots import ChannelSlots
from worker.ordering import AgentOrdering
from worker.rules.capacity import CapacityGuard, QueuePolicy, load_overrides
from worker.rules.transitions import TransitionMatrix
from worker.settings import Settings, get_settings
from worker.state_cache import StateCache


@dataclass
class Runtime:
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
    listener: NotificationListener
    capacity: CapacityGuard
    name: str
    _producer: Celery | None = None
    # One wave at a time per process: a wave fills the process's channel with its agents.
    wave_lock: threading.Lock = field(default_factory=threading.Lock)

    def enqueue_wfm(self, delivery_id: int) -> None:
        """Send ``wfm.sync`` for a committed outbox row (by name: no task import needed)."""
        if self._producer is None:
            self._producer = Celery(broker=self.settings.redis_url, set_as_current=False)
            self._producer.conf.update(task_serializer="json", accept_content=["json"])
        self._producer.send_task("wfm.sync", args=(delivery_id,), queue="wfm")

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        r = redis.Redis.from_url(settings.redis_url)
        http = httpx.Client(
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            timeout=settings.http_timeout_s,
        )
        client_key = budget_key(settings)
        client = genesys_client(settings, r, http)
        limiter, tokens = client.limiter, client.tokens
        cache = StateCache(r, ttl_s=settings.state_cache_ttl_s)
        listener = NotificationListener(
            client,
            cache,
            ChannelSlots(r, key=client_key, max_slots=settings.channel_slots),
            heartbeat_s=settings.notification_heartbeat_s,
            extend_after_s=settings.channel_extend_after_s,
            prime_agents=settings.notification_prime_agents,
        )
        return cls(
            settings=settings,
            redis=r,
            http=http,
            limiter=limiter,
            tokens=tokens,
            client=client,
            cache=cache,
            catalog=PresenceCatalog(r, client.presence_definitions),
            matrix=TransitionMatrix.load(settings.transition_matrix_file),
            ordering=AgentOrdering(r),
            listener=listener,
            capacity=CapacityGuard(
                r,
                client,
                default=QueuePolicy(
                    settings.capacity_min_on_queue, settings.capacity_max_waiting_per_agent
                ),
                overrides=load_overrides(settings.capacity_overrides_file),
                observation_ttl_s=settings.capacity_observation_ttl_s,
                membership_ttl_s=settings.capacity_membership_ttl_s,
                reservation_grace_s=settings.capacity_reservation_grace_s,
            ),
            name=f"{socket.gethostname()}:{os.getpid()}",
        )

    _current: ClassVar[tuple[int, Runtime] | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def current(cls) -> Runtime:
        """This process's runtime, built on first use (after any fork)."""
        with cls._lock:
            cached = cls._current
            if cached is None or cached[0] != os.getpid():
                cached = (os.getpid(), cls.build(get_settings()))
                cls._current = cached
            return cached[1]
