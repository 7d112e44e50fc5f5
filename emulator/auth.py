"""OAuth clients (each with a permission set) and the bearer tokens they are issued."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from emulator.config import ALL_PERMISSIONS


@dataclass(slots=True)
class OAuthClient:
    client_id: str
    client_secret: str
    permissions: frozenset[str]
    client_credentials_grant: bool = True

    def allows(self, permission: str) -> bool:
        return ALL_PERMISSIONS in self.permissions or permission in self.permissions


@dataclass(slots=True)
class Token:
    value: str
    client: OAuthClient
    expires_at: float
    revoked: bool = False

    @property
    def fingerprint(self) -> str:
        """A short, non-reversible name for the token, safe to show in inspection output."""
        return hashlib.sha256(self.value.encode()).hexdigest()[:12]


class AuthRegistry:
    """Clients and tokens. Tokens are opaque random strings; nothing here is persisted."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.clients: dict[str, OAuthClient] = {}
        self.tokens: dict[str, Token] = {}

    def add_client(
        self,
        client_id: str,
        client_secret: str,
        permissions: frozenset[str] = frozenset({ALL_PERMISSIONS}),
        *,
        client_credentials_grant: bool = True,
    ) -> OAuthClient:
        client = OAuthClient(client_id, client_secret, permissions, client_credentials_grant)
        self.clients[client_id] = client
        return client

    def check_credentials(self, client_id: str, client_secret: str) -> OAuthClient | None:
        client = self.clients.get(client_id)
        if client is None or not secrets.compare_digest(client.client_secret, client_secret):
            return None
        return client

    def issue(self, client: OAuthClient, lifetime_s: int) -> Token:
        self._forget_dead()
        token = Token(secrets.token_urlsafe(48), client, self.clock() + lifetime_s)
        self.tokens[token.value] = token
        return token

    def authenticate(self, value: str) -> Token | None:
        """The live token for a bearer value, or None when unknown, expired or revoked."""
        token = self.tokens.get(value)
        if token is None or token.revoked or token.expires_at <= self.clock():
            return None
        return token

    def revoke(self, client_id: str | None = None) -> int:
        """Revoke every token (of one client, when given); returns how many."""
        hit = [t for t in self.tokens.values() if client_id in (None, t.client.client_id)]
        for token in hit:
            token.revoked = True
        return len(hit)

    def expire(self, client_id: str | None = None) -> int:
        """Make every token (of one client, when given) expire now; returns how many."""
        now = self.clock()
        hit = [t for t in self.tokens.values() if client_id in (None, t.client.client_id)]
        for token in hit:
            token.expires_at = min(token.expires_at, now)
        return len(hit)

    def _forget_dead(self) -> None:
        if len(self.tokens) < 1024:
            return
        now = self.clock()
        self.tokens = {v: t for v, t in self.tokens.items() if not t.revoked and t.expires_at > now}
