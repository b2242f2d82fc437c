"""Shared fixtures: a fresh, migrated database per test, on SQLite or PostgreSQL.

The database comes from ``UNBLOCK_TEST_DATABASE_URL`` (``.ci/run`` sets it to the machine's
PostgreSQL for its second pass); without it every test gets its own SQLite file. On
PostgreSQL the session creates a database of its own (dropped at the end), migrates it once,
and each test starts from empty tables. When the variable is set and the server cannot be
reached, the tests fail: a skipped PostgreSQL pass would look green and prove nothing.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from service.persistence.db import sync_url
from service.persistence.migrate import upgrade

PG_ENV = "UNBLOCK_TEST_DATABASE_URL"


def pg_requested() -> str | None:
    value = os.environ.get(PG_ENV, "").strip()
    return value or None


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No UNBLOCK_* setting of the developer's shell, and no .env file, leaks into a test.

    UNBLOCK_TEST_* are the test suite's own knobs (the database to use, the sizes and durations
    of the scale tests) and are kept.
    """
    for name in list(os.environ):
        if name.startswith("UNBLOCK_") and not name.startswith("UNBLOCK_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def _pg_database() -> Iterator[str | None]:
    base = pg_requested()
    if base is None:
        yield None
        return
    server = make_url(sync_url(base))
    name = f"unblock_test_{uuid.uuid4().hex[:10]}"
    # No pooled connection: a test may restart PostgreSQL under us.
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:
        pytest.fail(f"{PG_ENV} is set but PostgreSQL cannot be reached: {error}", pytrace=False)
    url = server.set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


_TABLES_KEPT = {"alembic_version"}


def _truncate_all(url: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as connection:
        tables = [
            row[0]
            for row in connection.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
            if row[0] not in _TABLES_KEPT
        ]
        if tables:
            connection.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def database_url(_pg_database: str | None, _sqlite_template: Path, tmp_path: Path) -> str:
    """A migrated, empty database for this test alone."""
    if _pg_database is not None:
        _truncate_all(_pg_database)
        return _pg_database
    path = tmp_path / "unblock.db"
    shutil.copyfile(_sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def is_postgres(_pg_database: str | None) -> bool:
    return _pg_database is not None


def pytest_report_header() -> str:
    url = pg_requested()
    return f"database: {'PostgreSQL (' + url + ')' if url else 'SQLite (a file per test)'}"
