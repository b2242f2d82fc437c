"""API keys: 32 random bytes, shown once, kept only as a SHA-256 hash.

A key looks like ``ubk_3kq8v1xa_<43 characters>``. The part up to the second underscore is
its prefix: stored in clear, unique, shown in ``unblock keys list`` and in logs, so a key can
be recognised without being revealed. A fast hash is enough because the secret part is 256
random bits, not a password a person chose; comparison is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

KEY_PREFIX = "ubk_"
_IDENT = re.compile(r"^[a-z2-7]{8}$")  # lower-case base32 of 5 random bytes


@dataclass(frozen=True, slots=True)
class NewKey:
    plaintext: str
    prefix: str
    key_hash: str


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def generate_key() -> NewKey:
    ident = base64.b32encode(secrets.token_bytes(5)).decode("ascii").lower().rstrip("=")
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("=")
    prefix = f"{KEY_PREFIX}{ident}"
    plaintext = f"{prefix}_{secret}"
    return NewKey(plaintext=plaintext, prefix=prefix, key_hash=hash_key(plaintext))


def prefix_of(plaintext: str) -> str | None:
    """The lookup prefix of a presented key, or None when it is not shaped like one of ours."""
    if not plaintext.startswith(KEY_PREFIX):
        return None
    head, sep, secret = plaintext[len(KEY_PREFIX) :].partition("_")
    if not sep or len(head) != 8 or len(secret) < 40 or not _IDENT.match(head):
        return None
    return KEY_PREFIX + head


def matches(plaintext: str, key_hash: str) -> bool:
    return hmac.compare_digest(hash_key(plaintext), key_hash)


def generate_secret_key() -> str:
    """A new UNBLOCK_SECRET_KEY value (32 bytes, url-safe base64)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")
