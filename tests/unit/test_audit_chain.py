"""The audit chain's pure parts: keyed MACs, key ids, rotation and heads."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from service.domain.audit import (
    GENESIS,
    Actor,
    ActorKind,
    AuditEntry,
    AuditSigner,
    ChainedEntry,
    Head,
    canonical,
    key_id,
    parse_head,
    verify,
)
from service.errors import AuditKeyMissing

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
KEY_C = bytes(range(2, 34))


def _entry(seq: int, actor: Actor | None = None, action: str = "api_key.created") -> AuditEntry:
    return AuditEntry(
        seq=seq,
        at=f"2026-11-30T12:00:{seq:02d}+00:00",
        actor=actor or Actor(ActorKind.api_key, "01jkey", "servicedesk"),
        action=action,
        target=f"target-{seq}",
        detail={"n": seq},
    )


def _chain(signers: list[AuditSigner]) -> list[ChainedEntry]:
    """One record per signer, each signed by that signer's first key (as the service appends them)."""
    records: list[ChainedEntry] = []
    previous = GENESIS
    for seq, signer in enumerate(signers, start=1):
        entry = _entry(seq)
        seal = signer.sign(previous, entry)
        records.append(ChainedEntry(entry, seal.key_id, previous, seal.mac))
        previous = seal.mac
    return records


def _plain_sha256(records: list[ChainedEntry]) -> list[ChainedEntry]:
    """What someone with database access but no key can do: recompute the chain with plain SHA-256."""
    out: list[ChainedEntry] = []
    previous = GENESIS
    for record in records:
        mac = hashlib.sha256(previous.encode() + b"\n" + canonical(record.entry)).hexdigest()
        out.append(replace(record, prev_mac=previous, mac=mac))
        previous = mac
    return out


def test_an_intact_keyed_chain_verifies() -> None:
    """Records signed in turn verify under the same key."""
    signer = AuditSigner.from_secrets([KEY_A])
    assert verify(_chain([signer] * 3), signer) is None


def test_the_key_id_names_the_key_without_revealing_it() -> None:
    """Eight hex digits, the same for the same key, different for another, and not a piece of the key."""
    assert key_id(KEY_A) == key_id(bytes(KEY_A))
    assert key_id(KEY_A) != key_id(KEY_B)
    assert len(key_id(KEY_A)) == 8
    assert key_id(KEY_A) not in KEY_A.hex()
    assert repr(KEY_A) not in repr(AuditSigner.from_secrets([KEY_A]))


def test_deleting_a_middle_record_and_recomputing_with_plain_sha256_is_detected() -> None:
    """The attack a plain hash chain cannot see: remove record 2, renumber, recompute every hash."""
    signer = AuditSigner.from_secrets([KEY_A])
    records = _chain([signer] * 4)
    kept = [records[0], *[replace(r, entry=replace(r.entry, seq=r.entry.seq - 1)) for r in records[2:]]]
    broken = verify(_plain_sha256(kept), signer)
    assert broken is not None
    assert broken.seq == 1
    assert "does not match its MAC" in broken.reason


def test_an_edited_record_re_signed_with_a_wrong_key_is_detected() -> None:
    """Editing record 2 and re-signing from there with another key: its key id is unknown, or its MAC wrong."""
    signer = AuditSigner.from_secrets([KEY_A])
    records = _chain([signer] * 3)
    forger = AuditSigner.from_secrets([KEY_C])
    edited = replace(records[1].entry, actor=Actor(ActorKind.api_key, "01jother", "someone-else"))
    seal = forger.sign(records[0].mac, edited)
    as_forger = replace(records[1], entry=edited, key_id=seal.key_id, mac=seal.mac)
    broken = verify([records[0], as_forger], signer)
    assert broken is not None
    assert broken.seq == 2
    assert "none of the configured keys" in broken.reason
    claiming_the_real_key = replace(as_forger, key_id=records[1].key_id)
    broken = verify([records[0], claiming_the_real_key], signer)
    assert broken is not None
    assert broken.seq == 2
    assert "does not match its MAC" in broken.reason


def test_the_actor_kind_and_id_are_covered_by_the_mac() -> None:
    """Who acted cannot be changed behind the name: a different actor id breaks the record's MAC."""
    signer = AuditSigner.from_secrets([KEY_A])
    records = _chain([signer] * 2)
    impostor = replace(records[1].entry, actor=replace(records[1].entry.actor, id="01jsomeoneelse"))
    broken = verify([records[0], replace(records[1], entry=impostor)], signer)
    assert broken is not None
    assert broken.seq == 2


def test_rotation_keeps_older_records_verifiable() -> None:
    """A new first key signs new records; the old key, still listed, verifies the old ones; alone, the new does not."""
    old = AuditSigner.from_secrets([KEY_A])
    rotated = AuditSigner.from_secrets([KEY_B, KEY_A])
    records = _chain([old, old, rotated, rotated])
    assert [r.key_id for r in records] == [key_id(KEY_A)] * 2 + [key_id(KEY_B)] * 2
    assert verify(records, rotated) is None
    broken = verify(records, AuditSigner.from_secrets([KEY_B]))
    assert broken is not None
    assert broken.seq == 1
    assert repr(key_id(KEY_A)) in broken.reason


def test_only_a_wrong_key_fails_at_the_first_record() -> None:
    """With none of the signing keys configured, verification names record 1."""
    records = _chain([AuditSigner.from_secrets([KEY_A])] * 2)
    broken = verify(records, AuditSigner.from_secrets([KEY_C]))
    assert broken is not None
    assert broken.seq == 1


def test_signing_without_a_key_is_refused() -> None:
    """No key, no record: an unsigned chain would prove nothing."""
    with pytest.raises(AuditKeyMissing):
        AuditSigner.from_secrets([]).sign(GENESIS, _entry(1))


def test_an_expected_head_detects_truncation_and_rewriting() -> None:
    """Cut-off newest records still form a valid chain; the head kept elsewhere shows what is missing."""
    signer = AuditSigner.from_secrets([KEY_A])
    records = _chain([signer] * 4)
    head = Head(4, records[3].mac)
    assert verify(records, signer, expect=head) is None
    assert verify(records[:3], signer) is None  # truncation alone is invisible to the chain
    broken = verify(records[:3], signer, expect=head)
    assert broken is not None
    assert broken.seq == 4
    assert "ends at record 3" in broken.reason
    # Even with the key, a rewrite from the head back shows: record 4 re-signed with other content.
    other = replace(records[3].entry, action="api_key.revoked")
    resigned = replace(records[3], entry=other, mac=signer.sign(records[2].mac, other).mac)
    assert verify([*records[:3], resigned], signer) is None
    broken = verify([*records[:3], resigned], signer, expect=head)
    assert broken is not None
    assert broken.seq == 4
    assert "rewritten" in broken.reason


@pytest.mark.parametrize(
    "text",
    ["", "12", ":abc", "0:" + "a" * 64, "-1:" + "a" * 64, "3:" + "a" * 63, "3:" + "g" * 64, "x:" + "a" * 64],
)
def test_a_malformed_head_is_refused(text: str) -> None:
    """Only SEQ:MAC as `audit head` prints it: a positive number and 64 hex digits."""
    with pytest.raises(ValueError, match="SEQ:MAC"):
        parse_head(text)


def test_a_head_reads_back_as_printed() -> None:
    """`audit head` prints str(Head); --expect-head parses it back (upper-case hex accepted)."""
    head = Head(42, "ab" * 32)
    assert parse_head(str(head)) == head
    assert parse_head(f" 42:{'AB' * 32} ") == head
