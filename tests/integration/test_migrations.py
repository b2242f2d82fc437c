"""Migrations: up from empty, down and up again, and matching the models, on both databases."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from service.cli import main as cli_main
from service.config import derive_audit_key
from service.domain.audit import AuditSigner, key_id
from service.persistence import audit
from service.persistence import keys as key_rows
from service.persistence.audit import ChainReport
from service.persistence.db import Database, sync_url
from service.persistence.migrate import alembic_config, current_revision, head_revision, upgrade
from service.persistence.models import AuditRecord, metadata
from service.persistence.types import JSONType, UTCDateTime
from tests.conftest import pg_requested

EXPECTED_TABLES = {"cases", "case_steps", "case_events", "credentials", "api_keys", "idempotency_records"}


def _empty_database(tmp_path_factory_path: str) -> tuple[str, object]:
    base = pg_requested()
    if base is None:
        return f"sqlite:///{tmp_path_factory_path}/fresh.db", None
    server = make_url(sync_url(base))
    name = f"unblock_mig_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    return server.set(database=name).render_as_string(hide_password=False), (admin, name)


def _drop(handle: object) -> None:
    if handle is None:
        return
    admin, name = handle  # type: ignore[misc]
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _diff(url: str) -> list[object]:
    engine = create_engine(sync_url(url))
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, metadata)
    engine.dispose()
    return list(diff)


def test_upgrade_from_empty_builds_the_whole_schema(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`alembic upgrade head` on an empty database yields exactly the models' schema."""
    url, handle = _empty_database(str(tmp_path))
    try:
        assert current_revision(url) is None
        upgrade(url)
        assert current_revision(url) == head_revision(url)
        engine = create_engine(sync_url(url))
        tables = set(inspect(engine).get_table_names())
        engine.dispose()
        assert tables >= EXPECTED_TABLES
        assert _diff(url) == []
    finally:
        _drop(handle)


def test_downgrade_to_base_and_up_again(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Every migration can be undone and redone (so a bad release can be rolled back)."""
    from alembic import command

    url, handle = _empty_database(str(tmp_path))
    try:
        upgrade(url)
        command.downgrade(alembic_config(url), "base")
        engine = create_engine(sync_url(url))
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        engine.dispose()
        upgrade(url)
        assert _diff(url) == []
    finally:
        _drop(handle)


def test_upgrade_twice_is_harmless(database_url: str) -> None:
    """serve and worker both migrate on start: a second upgrade changes nothing."""
    before = current_revision(database_url)
    upgrade(database_url)
    assert current_revision(database_url) == before == head_revision(database_url)


# --- 0007: the keyed audit chain -------------------------------------------------------------------------

SECRET = "5" * 64
_AUDIT = sa.table(
    "audit_log",
    *[sa.column(name) for name in ("seq", "actor", "action", "target", "prev_hash", "hash")],
    sa.column("at", UTCDateTime()),
    sa.column("detail", JSONType),
)
_KEYS = sa.table(
    "api_keys",
    *[sa.column(n) for n in ("id", "name", "prefix", "key_hash")],
    sa.column("scopes", JSONType),
    sa.column("created_at", UTCDateTime()),
)


def _plain_link(previous: str, row: dict[str, Any]) -> str:
    """The chain as revisions 0002-0005 wrote it: plain SHA-256 over the record's canonical JSON."""
    fields = {k: row[k] for k in ("seq", "actor", "action", "target", "detail")} | {"at": row["at"].isoformat()}
    text_form = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(previous.encode() + b"\n" + text_form.encode()).hexdigest()


def _plain_chain_holds(url: str) -> bool:
    engine = create_engine(sync_url(url))
    with engine.connect() as connection:
        rows = [dict(r._mapping) for r in connection.execute(sa.select(_AUDIT).order_by(_AUDIT.c.seq))]
    engine.dispose()
    previous = "0" * 64
    for row in rows:
        if row["prev_hash"] != previous or _plain_link(previous, row) != row["hash"]:
            return False
        previous = row["hash"]
    return True


def _seed_at_0005(url: str) -> None:
    """What a 0005 database holds: a plain SHA-256 chain, and two API keys that share a name."""
    start = datetime(2026, 11, 1, 9, 0, 0, 123456, tzinfo=UTC)
    keys = [("k1", "servicenow"), ("k2", "jira"), ("k3", "servicenow")]
    engine = create_engine(sync_url(url))
    with engine.begin() as connection:
        for n, (key_id, name) in enumerate(keys):
            connection.execute(
                _KEYS.insert().values(
                    id=key_id,
                    name=name,
                    prefix=f"ubk_{key_id}",
                    key_hash=key_id * 8,
                    scopes=["cases:read"],
                    created_at=start + timedelta(minutes=n),
                )
            )
        previous = "0" * 64
        for seq, (key_id, name) in enumerate(keys, start=1):
            row = {
                "seq": seq,
                "at": start + timedelta(minutes=seq - 1),
                "actor": "cli:alice",
                "action": "api_key.created",
                "target": key_id,
                "detail": {"name": name, "scopes": ["cases:read"], "expires_at": None},
                "prev_hash": previous,
            }
            row["hash"] = previous = _plain_link(previous, row)
            connection.execute(_AUDIT.insert().values(**row))
    engine.dispose()


def _audit_state(url: str) -> tuple[ChainReport, list[AuditRecord], list[str]]:
    async def read() -> tuple[ChainReport, list[AuditRecord], list[str]]:
        db = Database(url)
        try:
            report = await audit.check(db, signer=AuditSigner.from_secrets([derive_audit_key(bytes.fromhex(SECRET))]))
            names = [k.name for k in await key_rows.list_keys(db)]
            return report, await audit.recent(db, limit=100), names
        finally:
            await db.dispose()

    return asyncio.run(read())


def test_0007_re_signs_an_existing_chain_once_and_records_it(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    """A 0005 database with a plain chain: `unblock migrate` without a key is refused in one line and changes
    nothing; with one, every record is re-signed (kind `unknown`: the past did not say), the duplicate key
    name renamed, both recorded at the end, and the chain verifies; migrating again changes nothing."""
    url, handle = _empty_database(str(tmp_path))
    try:
        upgrade(url, "0006")
        _seed_at_0005(url)
        assert _plain_chain_holds(url), "the seeded chain is what 0005 wrote"
        monkeypatch.setenv("UNBLOCK_DATABASE_URL", url)
        assert cli_main(["migrate"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("unblock: configuration error: UNBLOCK_AUDIT_KEY or UNBLOCK_SECRET_KEY: required"), err
        assert "3 records" in err
        assert err.count("\n") == 1
        assert current_revision(url) == "0006"
        assert _plain_chain_holds(url)

        monkeypatch.setenv("UNBLOCK_SECRET_KEY", SECRET)
        assert cli_main(["migrate"]) == 0
        assert current_revision(url) == head_revision(url)
        report, rows, names = _audit_state(url)
        assert (report.count, report.broken) == (5, None)
        assert [r.action for r in rows] == ["api_key.created"] * 3 + ["api_key.renamed", "audit.rechained"]
        signing = key_id(derive_audit_key(bytes.fromhex(SECRET)))
        assert {r.key_id for r in rows} == {signing}
        assert [(r.actor, r.actor_kind, r.actor_id) for r in rows[:3]] == [("cli:alice", "unknown", "")] * 3
        assert (rows[3].target, rows[3].detail["from"], rows[3].detail["to"]) == ("k3", "servicenow", "servicenow (2)")
        assert rows[4].detail == {"records": 3, "key_id": signing, "revision": "0007"}
        assert (rows[4].actor_kind, rows[4].actor_id) == ("service", "migration:0007")
        assert names == ["servicenow", "jira", "servicenow (2)"]

        assert cli_main(["migrate"]) == 0
        assert _audit_state(url)[0].count == 5, "re-chained once, not on every start"
    finally:
        _drop(handle)


def test_0007_goes_down_to_a_chain_0006_verifies_and_up_again(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Rolling back leaves a plain chain that 0005's code verifies (and says so at its end); upgrading again
    (the key read from the settings, as under the `alembic` command) re-signs it and records that again."""
    from alembic import command

    url, handle = _empty_database(str(tmp_path))
    try:
        upgrade(url, "0006")
        _seed_at_0005(url)
        upgrade(url, audit_keys=[derive_audit_key(bytes.fromhex(SECRET))])
        command.downgrade(alembic_config(url), "0006")
        assert _plain_chain_holds(url)
        monkeypatch.setenv("UNBLOCK_SECRET_KEY", SECRET)
        upgrade(url)
        report, rows, _ = _audit_state(url)
        assert (report.count, report.broken) == (7, None)
        assert [r.action for r in rows[4:]] == ["audit.rechained", "audit.unkeyed", "audit.rechained"]
        assert rows[-1].detail["records"] == 6
        assert _diff(url) == []
    finally:
        _drop(handle)
