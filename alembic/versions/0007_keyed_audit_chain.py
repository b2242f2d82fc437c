"""keyed audit chain (HMAC-SHA256, key id per record), who acted (kind and id), unique API key names

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 15:40:00

The audit chain was plain SHA-256, which anyone able to write to the database can recompute after
editing or deleting records. From here on each record carries an HMAC-SHA256 under the audit key
(UNBLOCK_AUDIT_KEY, else one derived from UNBLOCK_SECRET_KEY) and the id of that key; the existing
records are re-signed once, and an ``audit.rechained`` record at the end says so. Re-signing needs
the key, so a database with audit records refuses to migrate without one (an empty one migrates
without keys, as test templates do).

A migration is history: it carries its own copy of the chain's 0007 format (and, for the
downgrade, of the 0002 format) instead of importing service.domain.audit, so a later change to the
service's format cannot change what this revision writes. The migration tests check that what it
writes verifies with the service's code of this revision.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import sqlmodel
from alembic import context, op
from sqlalchemy.engine import Connection

import service.persistence.types
from service.config import SettingsError
from service.persistence.migrate import AUDIT_KEYS

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS = "0" * 64
KEY_ID_LABEL = b"unblock-service audit key id v1"
MIGRATION_ACTOR = {"actor": "migration", "actor_kind": "service", "actor_id": "migration:0007"}
# Records written before this revision did not say who acted beyond a display name.
LEGACY_ACTOR = {"actor_kind": "unknown", "actor_id": ""}

audit_log = sa.table(
    "audit_log",
    sa.column("seq", sa.BigInteger()),
    sa.column("at", service.persistence.types.UTCDateTime()),
    sa.column("actor", sa.String()),
    sa.column("actor_kind", sa.String()),
    sa.column("actor_id", sa.String()),
    sa.column("action", sa.String()),
    sa.column("target", sa.String()),
    sa.column("detail", service.persistence.types.JSONType),
    sa.column("prev_hash", sa.String()),
    sa.column("hash", sa.String()),
    sa.column("key_id", sa.String()),
)
api_keys = sa.table(
    "api_keys",
    sa.column("id", sa.String()),
    sa.column("name", sa.String()),
    sa.column("created_at", service.persistence.types.UTCDateTime()),
)


# --- the chain's formats, frozen at this revision ------------------------------------------------


def _canonical(row: dict[str, Any], *, keyed: bool) -> bytes:
    fields = {
        "seq": row["seq"],
        "at": row["at"].isoformat(),
        "actor": row["actor"],
        "action": row["action"],
        "target": row["target"],
        "detail": row["detail"],
    }
    if keyed:
        fields |= {"actor_kind": row["actor_kind"], "actor_id": row["actor_id"]}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str).encode("ascii")


def _key_id(key: bytes) -> str:
    return hmac.new(key, KEY_ID_LABEL, hashlib.sha256).hexdigest()[:8]


def _keyed_mac(key: bytes, previous: str, row: dict[str, Any]) -> str:
    return hmac.new(key, previous.encode("ascii") + b"\n" + _canonical(row, keyed=True), hashlib.sha256).hexdigest()


def _plain_hash(previous: str, row: dict[str, Any]) -> str:
    return hashlib.sha256(previous.encode("ascii") + b"\n" + _canonical(row, keyed=False)).hexdigest()


# --- what to do ------------------------------------------------------------------------------------


def _audit_rows(bind: Connection, columns: Sequence[str]) -> list[dict[str, Any]]:
    query = sa.select(*[audit_log.c[name] for name in columns]).order_by(audit_log.c.seq)
    return [dict(row._mapping) for row in bind.execute(query)]


def _duplicate_names(bind: Connection) -> list[tuple[str, str]]:
    """(key id, new name) for every API key whose name an older key already has.

    Deterministic: the oldest key (by created_at, then id) keeps the name; the later ones become
    ``<name> (2)``, ``<name> (3)``..., skipping names already taken, cut to the column's 128
    characters. Each rename is recorded in the audit log.
    """
    rows = bind.execute(sa.select(api_keys.c.id, api_keys.c.name).order_by(api_keys.c.created_at, api_keys.c.id))
    keys = [(str(r.id), str(r.name)) for r in rows]
    taken = {name for _, name in keys}
    seen: set[str] = set()
    renames: list[tuple[str, str]] = []
    for key_id, name in keys:
        if name not in seen:
            seen.add(name)
            continue
        number = 2
        while (candidate := f"{name[: 128 - len(f' ({number})')]} ({number})") in taken:
            number += 1
        taken.add(candidate)
        renames.append((key_id, candidate))
    return renames


def _signing_key() -> bytes | None:
    """The first audit key: from ``unblock migrate``/``serve``/``worker`` (config attributes), or
    read from the settings when the migration runs some other way (the ``alembic`` command)."""
    keys = context.config.attributes.get(AUDIT_KEYS)
    if keys is None:
        from service.config import load_settings

        keys = load_settings().audit_keys
    return bytes(keys[0]) if keys else None


def _append(
    bind: Connection, key: bytes, previous: dict[str, Any], action: str, target: str | None, detail: dict[str, Any]
) -> dict[str, Any]:
    """One record after ``previous`` (or the first), signed, written by the migration itself."""
    row = {
        "seq": previous["seq"] + 1 if previous else 1,
        "at": datetime.now(UTC),
        **MIGRATION_ACTOR,
        "action": action,
        "target": target,
        "detail": detail,
        "prev_hash": previous["hash"] if previous else GENESIS,
        "key_id": _key_id(key),
    }
    row["hash"] = _keyed_mac(key, row["prev_hash"], row)
    bind.execute(audit_log.insert().values(**row))
    return row


def upgrade() -> None:
    bind = op.get_bind()
    count = bind.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar_one()
    renames = _duplicate_names(bind)
    key = _signing_key() if count or renames else None
    if (count or renames) and key is None:
        raise SettingsError(
            "UNBLOCK_AUDIT_KEY or UNBLOCK_SECRET_KEY: required to migrate, since revision 0007 signs "
            f"the existing audit log ({count} records) and its {len(renames)} API key renames with the audit key"
        )

    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("actor_kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True))
        batch_op.add_column(sa.Column("actor_id", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=True))
        batch_op.add_column(sa.Column("key_id", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True))

    last: dict[str, Any] = {}
    if key is not None:
        last = _rechain(bind, key)
        for key_row_id, new_name in renames:
            old = bind.execute(sa.select(api_keys.c.name).where(api_keys.c.id == key_row_id)).scalar_one()
            bind.execute(api_keys.update().where(api_keys.c.id == key_row_id).values(name=new_name))
            detail = {"from": old, "to": new_name, "reason": "API key names are unique from revision 0007"}
            last = _append(bind, key, last, "api_key.renamed", key_row_id, detail)
        if count:
            detail = {"records": count, "key_id": _key_id(key), "revision": "0007"}
            _append(bind, key, last, "audit.rechained", None, detail)

    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.alter_column("actor_kind", existing_type=sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False)
        batch_op.alter_column("actor_id", existing_type=sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False)
        batch_op.alter_column("key_id", existing_type=sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False)
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index("uq_api_keys_name", ["name"], unique=True)


def _rechain(bind: Connection, key: bytes) -> dict[str, Any]:
    """Sign every existing record again, oldest first, each linked to the new MAC before it."""
    previous: dict[str, Any] = {}
    for row in _audit_rows(bind, ["seq", "at", "actor", "action", "target", "detail"]):
        row |= LEGACY_ACTOR | {"prev_hash": previous["hash"] if previous else GENESIS, "key_id": _key_id(key)}
        row["hash"] = _keyed_mac(key, row["prev_hash"], row)
        bind.execute(
            audit_log.update()
            .where(audit_log.c.seq == row["seq"])
            .values(**{name: row[name] for name in ("actor_kind", "actor_id", "prev_hash", "hash", "key_id")})
        )
        previous = row
    return previous


def downgrade() -> None:
    """Back to the plain SHA-256 chain 0005 verifies (and can be forged again), recorded at its end.

    Renamed API keys keep their new names: nothing depends on two keys sharing one.
    """
    bind = op.get_bind()
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index("uq_api_keys_name")
    previous: dict[str, Any] = {}
    rows = _audit_rows(bind, ["seq", "at", "actor", "action", "target", "detail"])
    for row in rows:
        row["prev_hash"] = previous["hash"] if previous else GENESIS
        row["hash"] = _plain_hash(row["prev_hash"], row)
        bind.execute(
            audit_log.update().where(audit_log.c.seq == row["seq"]).values(prev_hash=row["prev_hash"], hash=row["hash"])
        )
        previous = row
    if rows:
        row = {
            "seq": previous["seq"] + 1,
            "at": datetime.now(UTC),
            "actor": "migration",
            "action": "audit.unkeyed",
            "target": None,
            "detail": {"records": len(rows), "revision": "0006"},
            "prev_hash": previous["hash"],
        }
        row["hash"] = _plain_hash(row["prev_hash"], row)
        # The columns this downgrade drops still exist and are NOT NULL: fill them meanwhile.
        bind.execute(audit_log.insert().values(**row, **LEGACY_ACTOR, key_id=""))
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_column("key_id")
        batch_op.drop_column("actor_id")
        batch_op.drop_column("actor_kind")
