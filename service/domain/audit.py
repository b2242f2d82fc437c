"""The audit chain: each record's hash covers its content and the hash before it.

Editing, inserting or deleting a record in the middle breaks every hash after it, which
``unblock audit verify`` reports with the first record that does not match. The canonical form
is JSON with sorted keys and no whitespace, so the hash does not depend on a database's way of
storing JSON.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    at: str  # ISO 8601, UTC
    actor: str
    action: str
    target: str | None
    detail: dict[str, Any]


def canonical(entry: AuditEntry) -> bytes:
    return json.dumps(
        {
            "seq": entry.seq,
            "at": entry.at,
            "actor": entry.actor,
            "action": entry.action,
            "target": entry.target,
            "detail": entry.detail,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        default=str,
    ).encode("ascii")


def chain_hash(previous: str, entry: AuditEntry) -> str:
    return hashlib.sha256(previous.encode("ascii") + b"\n" + canonical(entry)).hexdigest()


@dataclass(frozen=True, slots=True)
class Broken:
    seq: int
    reason: str


def verify(records: list[tuple[AuditEntry, str, str]]) -> Broken | None:
    """Check (entry, prev_hash, hash) rows in order; the first inconsistency, or None."""
    previous = GENESIS
    expected_seq = 1
    for entry, prev_hash, stored in records:
        if entry.seq != expected_seq:
            return Broken(entry.seq, f"expected record {expected_seq} next, found {entry.seq} (a record is missing)")
        if prev_hash != previous:
            return Broken(entry.seq, "its link to the previous record does not match (a record was changed or removed)")
        if chain_hash(previous, entry) != stored:
            return Broken(entry.seq, "its content does not match its hash (the record was edited)")
        previous = stored
        expected_seq += 1
    return None
