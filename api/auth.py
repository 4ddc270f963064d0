"""Bearer API keys: the request's key becomes the sha256 that ``api.authenticate`` resolves.

The key itself never reaches the database after its creation (``api.create_api_key``
returns it once and stores only its hash). A route passes the hash and the scope it
needs (api/routes.py ROUTE_SCOPES) into its one statement,
``SELECT ... FROM api.<function>(api.authenticate(%s, 'read'), ...)``, so that a request
costs one round trip and a bad key fails before anything else runs: PW401 (unknown,
revoked or expired), PW410 (the key lacks the scope), PW429 (over its rate limit).
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

from api.errors import ApiError

KEY_PREFIX = "pgwa_"
MAX_KEY_LENGTH = 128

_MISSING_HINT = "Send Authorization: Bearer <key>, with a key from `pgwa key create`."


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or None."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def key_hash(request: Request) -> bytes:
    """sha256 of the request's API key; raises PW401 when there is none or it cannot be one."""
    token = bearer_token(request)
    if token is None:
        raise ApiError("PW401", "no API key: the Authorization header is missing or not Bearer", _MISSING_HINT)
    if not token.startswith(KEY_PREFIX) or len(token) > MAX_KEY_LENGTH or not token.isascii():
        raise ApiError("PW401", "the API key is unknown or revoked", _MISSING_HINT)
    return hashlib.sha256(token.encode()).digest()


def token_matches(request: Request, expected: str) -> bool:
    """Constant-time check of a fixed bearer token (the /metrics scrape token)."""
    token = bearer_token(request) or ""
    return hmac.compare_digest(token.encode(), expected.encode())
