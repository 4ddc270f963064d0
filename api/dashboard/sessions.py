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
