"""The audit chain: each record's MAC covers its content and the MAC before it.

A plain hash chain only proves that nobody edited a record *without recomputing the chain*;
anyone who can write to the database can recompute it. So the link is an HMAC-SHA256 under an
audit key the database does not hold: editing, inserting or deleting a record needs the key to
produce a chain that verifies. Each record names the key that signed it by a *key id* (derived
from the key, never the key itself), so the signing key can be rotated while the older records
still verify under the key that signed them, as long as that key is still configured.

What a keyed chain cannot show on its own is that records were cut off the end: the remaining
records still verify. :class:`Head` is for that: an operator copies the newest record's
sequence and MAC somewhere the database writer cannot reach, and a later verification expects
the chain still to contain that record with that MAC.

The canonical form is JSON with sorted keys and no whitespace, so the MAC does not depend on a
database's way of storing JSON.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from service.errors import AuditKeyMissing

GENESIS = "0" * 64
#: What the key id is an HMAC of: a fixed label, so the id says which key without revealing it.
KEY_ID_LABEL = b"unblock-service audit key id v1"
_HEAD = re.compile(r"^\s*(\d{1,19}):([0-9a-fA-F]{64})\s*$")


class ActorKind(StrEnum):
    """What kind of principal acted; with the actor id, it identifies them beyond a display name."""

    api_key = "api_key"
    oidc = "oidc"
    cli = "cli"
    service = "service"
    unknown = "unknown"  # records written before the kind was recorded (migration 0006)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did it: ``name`` is for people, ``kind`` and ``id`` are what cannot be renamed or shared."""

    kind: str  # an ActorKind; kept as text so a kind written by a newer version still verifies
    id: str
    name: str

    @classmethod
    def cli(cls, user: str) -> Actor:
        return cls(ActorKind.cli, user, f"cli:{user}")

    @classmethod
    def service(cls, name: str) -> Actor:
        return cls(ActorKind.service, name, name)


#: The service acting on its own (keys created by the demo or by tests, say).
SYSTEM = Actor.service("system")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    at: str  # ISO 8601, UTC
    actor: Actor
    action: str
    target: str | None
    detail: dict[str, Any]


def canonical(entry: AuditEntry) -> bytes:
    return json.dumps(
        {
            "seq": entry.seq,
            "at": entry.at,
            "actor": entry.actor.name,
            "actor_kind": str(entry.actor.kind),
            "actor_id": entry.actor.id,
            "action": entry.action,
            "target": entry.target,
            "detail": entry.detail,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        default=str,
    ).encode("ascii")


def key_id(secret: bytes) -> str:
    """Eight hex digits naming a key: enough to pick among a handful, useless to an attacker."""
    return hmac.new(secret, KEY_ID_LABEL, hashlib.sha256).hexdigest()[:8]


def chain_mac(secret: bytes, previous: str, entry: AuditEntry) -> str:
    return hmac.new(secret, previous.encode("ascii") + b"\n" + canonical(entry), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditKey:
    id: str
    secret: bytes = field(repr=False)

    @classmethod
    def of(cls, secret: bytes) -> AuditKey:
        return cls(key_id(secret), secret)


@dataclass(frozen=True, slots=True)
class Seal:
    key_id: str
    mac: str


@dataclass(frozen=True, slots=True)
class AuditSigner:
    """The configured audit keys, newest first: the first signs, every one of them verifies."""

    keys: tuple[AuditKey, ...]

    @classmethod
    def from_secrets(cls, secrets: Iterable[bytes]) -> AuditSigner:
        return cls(tuple(AuditKey.of(secret) for secret in secrets))

    def _signing(self) -> AuditKey:
        if not self.keys:
            raise AuditKeyMissing()
        return self.keys[0]

    def find(self, wanted: str) -> AuditKey | None:
        return next((key for key in self.keys if key.id == wanted), None)

    def sign(self, previous: str, entry: AuditEntry) -> Seal:
        key = self._signing()
        return Seal(key.id, chain_mac(key.secret, previous, entry))


@dataclass(frozen=True, slots=True)
class Head:
    """The newest record's sequence and MAC, written ``SEQ:MAC``: kept outside the database, it
    shows a later verification that no record up to it was cut off or rewritten."""

    seq: int
    mac: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.mac}"


def parse_head(text: str) -> Head:
    match = _HEAD.match(text)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(
            f"{text!r} is not SEQ:MAC as `unblock audit head` prints it (a number, a colon, 64 hex digits)"
        )
    return Head(int(match.group(1)), match.group(2).lower())


@dataclass(frozen=True, slots=True)
class ChainedEntry:
    """A stored record: the entry, the key id that signed it, its link, its MAC."""

    entry: AuditEntry
    key_id: str
    prev_mac: str
    mac: str


@dataclass(frozen=True, slots=True)
class Broken:
    seq: int
    reason: str


def _broken_link(record: ChainedEntry, previous: str, expected_seq: int, signer: AuditSigner) -> Broken | None:
    entry = record.entry
    if entry.seq != expected_seq:
        return Broken(entry.seq, f"expected record {expected_seq} next, found {entry.seq} (a record is missing)")
    if record.prev_mac != previous:
        return Broken(entry.seq, "its link to the previous record does not match (a record was changed or removed)")
    key = signer.find(record.key_id)
    if key is None:
        return Broken(
            entry.seq,
            f"it is signed with audit key id {record.key_id!r}, which none of the configured keys has "
            "(a wrong UNBLOCK_AUDIT_KEY, or a forged record)",
        )
    if not hmac.compare_digest(chain_mac(key.secret, previous, entry), record.mac):
        return Broken(
            entry.seq, "its content does not match its MAC (the record was edited, or signed without the key)"
        )
    return None


def verify(records: Iterable[ChainedEntry], signer: AuditSigner, *, expect: Head | None = None) -> Broken | None:
    """Check stored records in order; the first inconsistency, or None.

    With ``expect``, the chain must also still hold that record with that MAC: a chain that was
    cut short (its newest records deleted) or rewritten from before that record fails here even
    though what remains is consistent.
    """
    previous = GENESIS
    expected_seq = 1
    for record in records:
        broken = _broken_link(record, previous, expected_seq, signer)
        if broken is not None:
            return broken
        if expect is not None and record.entry.seq == expect.seq and not hmac.compare_digest(record.mac, expect.mac):
            return Broken(expect.seq, "its MAC is not the expected head's (the chain was rewritten)")
        previous = record.mac
        expected_seq += 1
    if expect is not None and expect.seq >= expected_seq:
        return Broken(
            expect.seq,
            f"the chain ends at record {expected_seq - 1}, before the expected head (newer records were removed)",
        )
    return None
