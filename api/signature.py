"""Meta webhook signatures: ``X-Hub-Signature-256: sha256=<hex>``.

Meta signs every webhook POST with an HMAC-SHA256 of the raw request body,
keyed with the app secret. The receiver must check the bytes it received,
before any JSON parsing, and compare in constant time. Several secrets may be
valid at once while an app secret is being rotated.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

PREFIX = "sha256="


def sign(raw_body: bytes, secret: str) -> str:
    """Return the ``X-Hub-Signature-256`` header value for ``raw_body``."""
    digest = hmac.new(secret.encode(), raw_body, hashlib.sha256).hexdigest()
    return PREFIX + digest


def verify_signature(raw_body: bytes, header: str | None, secrets: Sequence[str]) -> bool:
    """True when ``header`` is a valid signature of ``raw_body`` under any of ``secrets``.

    A missing or malformed header, or an empty list of secrets, is never valid.
    Every secret is checked (no early exit), so timing does not reveal which one matched.
    """
    return matching_secret(raw_body, header, secrets) is not None


def matching_secret(raw_body: bytes, header: str | None, secrets: Sequence[str]) -> str | None:
    """The one of ``secrets`` whose signature ``header`` is, or None.

    Like :func:`verify_signature`, every secret is checked, whichever matches.
    """
    if not header or not header.startswith(PREFIX):
        return None
    given = header[len(PREFIX):].strip().lower().encode()
    if len(given) != 64:
        return None
    found = None
    for secret in secrets:
        if not secret:
            continue
        expected = hmac.new(secret.encode(), raw_body, hashlib.sha256).hexdigest().encode()
        if hmac.compare_digest(expected, given):
            found = secret
    return found
