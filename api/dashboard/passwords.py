"""Passwords: argon2id (argon2-cffi's PasswordHasher, its RFC 9106 low-memory profile).

The hash is made and checked here; PostgreSQL stores the PHC string and never sees a
password. Checking runs in a thread: argon2 is deliberately slow, and the event loop
must not wait for it.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from starlette.concurrency import run_in_threadpool

MIN_LENGTH = 10
MAX_LENGTH = 1024

_hasher = PasswordHasher()
# Checked when an e-mail is unknown, so that an unknown e-mail takes as long as a wrong password.
_DUMMY = _hasher.hash("not a password of anyone")


def password_problem(password: str) -> str | None:
    """Why a new password is refused, or None."""
    if len(password) < MIN_LENGTH:
        return f"The password must have at least {MIN_LENGTH} characters."
    if len(password) > MAX_LENGTH:
        return f"The password must have at most {MAX_LENGTH} characters."
    return None


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify(hashed: str | None, password: str) -> bool:
    """Whether ``password`` matches ``hashed`` (None: an unknown user, checked against a dummy)."""
    try:
        return _hasher.verify(hashed or _DUMMY, password) and hashed is not None
    except (VerificationError, InvalidHashError):
        return False


async def hash_password_async(password: str) -> str:
    return await run_in_threadpool(hash_password, password)


async def verify_async(hashed: str | None, password: str) -> bool:
    return await run_in_threadpool(verify, hashed, password)
