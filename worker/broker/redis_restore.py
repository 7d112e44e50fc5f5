"""kombu's Redis transport, made to survive Redis going away while messages are held.

kombu 5.7.0 (the newest release, with Celery 5.7.0) lets a worker process exit with
``Unrecoverable error: AttributeError("'NoneType' object has no attribute 'hostname'")`` when
Redis is killed while the worker holds unacknowledged messages: closing the lost connection asks
each channel to restore its unacknowledged messages; with Redis gone the first restore raises,
which abandons closing the remaining channels, and the transport is then detached from its
connection (``transport.client = None``). The next restore, ack or reject on such a channel
builds a Redis client from the detached transport (``Channel._connparams`` reads
``connection.client.hostname``) and raises AttributeError, which neither kombu's
``ignore_errors`` nor Celery's ack/reject handlers catch. The same failure was reported upstream
as celery/kombu#970 (restore_unacked at shutdown) and celery/kombu#582 (a channel closed after
its connection); no kombu release guards against it.

The narrowest guard, here: a restore that cannot reach Redis leaves its messages where they
already are (Redis's ``unacked`` hash, which kombu restores after the visibility timeout or a
later worker restores), logs it and lets the close go on; a channel whose transport is detached
raises Redis's ConnectionError instead of AttributeError, which every caller already handles.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


class DetachedChannel(redis.exceptions.ConnectionError):
    """The channel's transport no longer has a connection (it was closed after a broker loss)."""


class QoS(kombu_redis.QoS):
    def restore_unacked(self, client: Any = None) -> None:
        """Put the held messages back on their queues; when Redis cannot be reached, leave them
        in its ``unacked`` hash (nothing is lost) instead of raising out of a channel close."""
        try:
            super().restore_unacked(client)
        except redis.exceptions.ConnectionError as exc:
            delivered = self._delivered
            log.warning(
                "could not restore %d unacknowledged message(s) while closing a lost broker "
                "connection (%s); they stay in the broker's unacked set and are restored from "
                "there",
                len(delivered or ()),
                exc,
            )
            if delivered is not None:
                delivered.clear()


class Channel(kombu_redis.Channel):
    QoS = QoS

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection is None or self.connection.client is None:
            raise DetachedChannel("the broker connection of this channel is closed")
        params: dict[str, Any] = super()._connparams(asynchronous)  # type: ignore[misc]
        return params


class Transport(kombu_redis.Transport):
    Channel = Channel
