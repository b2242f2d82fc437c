"""SQLite: a connection opened while another holds the new database busy waits instead of failing.

CI found this: two processes opening a fresh database together, the second asked to switch the
journal mode to WAL while the first was writing, and SQLite answers that switch with "database is
locked" at once (no busy handler). The switch is left to a later connection; the write waits.
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

from sqlalchemy import text

from service.persistence.db import Database


async def test_a_write_waits_for_a_busy_new_database_instead_of_failing(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TABLE t (x INTEGER)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t VALUES (1)")
    db = Database(f"sqlite:///{path}")

    async def commit_later() -> None:
        await asyncio.sleep(0.3)
        other.execute("COMMIT")

    release = asyncio.create_task(commit_later())
    async with db.write() as session:
        await session.exec(text("INSERT INTO t VALUES (2)"))  # type: ignore[call-overload]
    await release
    assert [row[0] for row in other.execute("SELECT x FROM t ORDER BY x")] == [1, 2]
    other.close()
    await db.dispose()

    # A later process, with the database idle, switches it to WAL for good.
    again = Database(f"sqlite:///{path}")
    async with again.write() as session:
        await session.exec(text("INSERT INTO t VALUES (3)"))  # type: ignore[call-overload]
    await again.dispose()
    with closing(sqlite3.connect(path)) as check:
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
