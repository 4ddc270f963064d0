"""The session cookie, token hashes and CSRF tokens.

A session is a random token; the database keeps its sha256 (api.dashboard_login). The
cookie carries the token signed with the database's cookie key (api.dashboard_cookie_key,
shared by every API process), HttpOnly, SameSite=Lax, Secure over https. The CSRF token
of a session is an HMAC of its token under the same key: nothing more to store, and a
form or an htmx request (header X-CSRF-Token) proves it was served by us to this session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

COOKIE = "pgwa_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


def new_token() -> str:
    """A random token (256 bits), for a session or an invitation link."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Signer:
    """Signs and checks cookie values and derives CSRF tokens with one key."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def _mac(self, purpose: bytes, value: str) -> str:
        digest = hmac.new(self.key, purpose + b"\0" + value.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(self, token: str) -> str:
        return f"{token}.{self._mac(b'cookie', token)}"

    def unsign(self, value: str | None) -> str | None:
        """The token of a cookie value whose signature holds, else None."""
        if not value or "." not in value or len(value) > 200:
            return None
        token, _, mac = value.rpartition(".")
        return token if hmac.compare_digest(mac, self._mac(b"cookie", token)) else None

    def csrf(self, token: str) -> str:
        return self._mac(b"csrf", token)

    def csrf_ok(self, token: str, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(given, self.csrf(token))


class OneTimeSlots:
    """Secrets shown once after a POST/redirect/GET (a new API key): kept in this process for
    a minute under a random slot id that travels in a short-lived cookie (never in a URL),
    bound to the session that made them, and handed out once. With several API processes
    the GET may reach another one: the page then says the secret cannot be shown again."""

    TTL_S = 60.0
    MAX = 1000

    def __init__(self) -> None:
        self._slots: dict[str, tuple[bytes, float, object]] = {}

    def put(self, owner: bytes, value: object) -> str:
        now = time.monotonic()
        for slot, (_, expires, _) in list(self._slots.items()):
            if expires < now or len(self._slots) >= self.MAX:
                del self._slots[slot]
        slot = new_token()
        self._slots[slot] = (owner, now + self.TTL_S, value)
        return slot

    def take(self, owner: bytes, slot: str | None) -> object | None:
        """The slot's value, once, for the session that put it; None otherwise."""
        found = self._slots.get(slot or "")
        if found is None or not hmac.compare_digest(found[0], owner) or found[1] < time.monotonic():
            return None
        del self._slots[slot]
        return found[2]
