"""`unblock purge`: closed cases and what only exists for them go after the retention period.

Cases run for real against the sandbox; the clock is then moved by ageing the rows, and the
purge runs as the operator would run it, as a separate `unblock purge` process.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlmodel import col, update

from service.persistence.db import sync_url
from service.persistence.models import Case, IdempotencyRecord, OutboxEvent
from service.sandbox.server import SandboxServer
from tests.helpers import UNBLOCK
from tests.stack import SECRET, running_stack


def _unblock(database_url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNBLOCK_")}
    env["UNBLOCK_DATABASE_URL"] = database_url
    env["UNBLOCK_SECRET_KEY"] = SECRET  # the stack's: purge signs its audit record, verify checks the chain
    return subprocess.run([UNBLOCK, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def _sql(database_url: str, statement: str) -> list[tuple[object, ...]]:
    engine = create_engine(sync_url(database_url))
    try:
        with engine.begin() as connection:
            result = connection.execute(text(statement))
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


def _age(database_url: str, statement: Any, column: str) -> None:
    """Move a timestamp 400 days into the past, through the column type (SQLite keeps no zones)."""
    engine = create_engine(sync_url(database_url))
    try:
        with engine.begin() as connection:
            connection.execute(statement.values({column: datetime.now(UTC) - timedelta(days=400)}))
    finally:
        engine.dispose()


def _count(database_url: str, table: str, where: str = "1=1") -> int:
    return int(_sql(database_url, f"SELECT count(*) FROM {table} WHERE {where}")[0][0])  # noqa: S608 - test SQL


async def test_purge_deletes_old_closed_cases_and_keeps_the_rest(
    database_url: str, sandbox: SandboxServer, tmp_path: Path
) -> None:
    async with running_stack(database_url, sandbox, webhook_allow_networks="127.0.0.0/8") as stack:
        hook = await stack.client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/down", "events": ["*"]})
        assert hook.status_code == 201
        old = [await stack.open("rob@contoso.com"), await stack.open("ann@contoso.com")]
        for case in old:
            await stack.wait_for(case["id"])
        await stack.client.delete(f"/v1/webhooks/{hook.json()['id']}")  # its deliveries are no longer owed
        recent = await stack.wait_for((await stack.open("zed@contoso.com"))["id"])  # fails: unknown user
    async with running_stack(database_url, sandbox, worker=False) as stack:
        still_open = await stack.open("laura@contoso.com", ticket_ref="OPEN-1")

    old_ids = ", ".join(f"'{c['id']}'" for c in old)
    # Age the first two cases and everything about them by 400 days; the third stays recent. The
    # open case's events are just as old: they must stay while it is open.
    aged = [c["id"] for c in old]
    _age(database_url, update(Case).where(col(Case.id).in_(aged)), "finished_at")
    _age(
        database_url, update(OutboxEvent).where(col(OutboxEvent.case_id).in_([*aged, still_open["id"]])), "occurred_at"
    )
    _age(database_url, update(IdempotencyRecord), "created_at")
    before = {
        t: _count(database_url, t) for t in ("cases", "case_steps", "case_events", "credentials", "outbox_events")
    }

    dry = _unblock(database_url, tmp_path, "purge", "--older-than", "365d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would delete 2 closed cases"), dry.stdout
    assert {t: _count(database_url, t) for t in before} == before, "a dry run deleted something"

    done = _unblock(database_url, tmp_path, "purge", "--older-than", "365d")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("deleted 2 closed cases"), done.stdout

    remaining = {row[0] for row in _sql(database_url, "SELECT id FROM cases")}
    assert remaining == {recent["id"], still_open["id"]}
    for table in ("case_steps", "case_events", "credentials", "outbox_events"):
        assert _count(database_url, table, f"case_id IN ({old_ids})") == 0, f"{table} kept rows of purged cases"
    assert _count(database_url, "case_events", f"case_id = '{still_open['id']}'") > 0
    assert _count(database_url, "outbox_events", f"case_id = '{still_open['id']}'") > 0, "an open case lost events"
    assert _count(database_url, "case_steps", f"case_id = '{recent['id']}'") > 0

    purged = _sql(database_url, "SELECT actor, detail FROM audit_log WHERE action = 'retention.purged'")
    assert len(purged) == 1
    assert str(purged[0][0]).startswith("cli:")
    detail = purged[0][1] if isinstance(purged[0][1], dict) else json.loads(str(purged[0][1]))
    assert detail["cases"] == 2
    verify = _unblock(database_url, tmp_path, "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr

    again = _unblock(database_url, tmp_path, "purge", "--older-than", "365d")
    assert again.stdout.startswith("deleted 0 closed cases"), again.stdout
    assert len(_sql(database_url, "SELECT seq FROM audit_log WHERE action = 'retention.purged'")) == 1


def test_purge_refuses_a_short_or_unreadable_period(database_url: str, tmp_path: Path) -> None:
    for value, message in (("1h", "at least 1d"), ("soon", "not a duration"), ("-5d", "not a duration")):
        result = _unblock(database_url, tmp_path, "purge", "--older-than", value)
        assert result.returncode == 2, (value, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (value, result.stderr)
        assert message in lines[0], (value, result.stderr)
