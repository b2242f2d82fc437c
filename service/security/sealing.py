"""Sealing temporary passwords at rest: AES-256-GCM, with key rotation.

Each sealed value is ``nonce (12 bytes) || ciphertext+tag`` and is stored beside the id of the
key that sealed it (the first 16 hex digits of the key's SHA-256). The case id is the
associated data, so a sealed password copied to another case's row does not open. Keys come
from ``UNBLOCK_SECRET_KEY`` newest first: the first seals, every listed key opens, so a key is
rotated by putting the new one in front and removing the old one once nothing sealed with it
is left (sealed values live at most ``UNBLOCK_CREDENTIAL_TTL``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.errors import ServiceError

NONCE_BYTES = 12


class SealingError(ServiceError):
    """A sealed value could not be opened (unknown key, or tampered data)."""

    code = "sealing_error"


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Sealed:
    key_id: str
    blob: bytes


class Sealer:
    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("at least one sealing key is required")
        if any(len(k) != 32 for k in keys):
            raise ValueError("sealing keys are 32 bytes")
        self._keys = {key_id(k): AESGCM(k) for k in keys}
        self._current = key_id(keys[0])

    @property
    def current_key_id(self) -> str:
        return self._current

    def seal(self, plaintext: str, *, context: str) -> Sealed:
        nonce = os.urandom(NONCE_BYTES)
        blob = nonce + self._keys[self._current].encrypt(nonce, plaintext.encode("utf-8"), context.encode("utf-8"))
        return Sealed(key_id=self._current, blob=blob)

    def open(self, sealed: Sealed, *, context: str) -> str:
        cipher = self._keys.get(sealed.key_id)
        if cipher is None:
            raise SealingError(f"no configured UNBLOCK_SECRET_KEY has id {sealed.key_id}")
        nonce, body = sealed.blob[:NONCE_BYTES], sealed.blob[NONCE_BYTES:]
        try:
            return cipher.decrypt(nonce, body, context.encode("utf-8")).decode("utf-8")
        except InvalidTag:
            raise SealingError("the sealed value does not open with its key and case (tampered or moved)") from None
