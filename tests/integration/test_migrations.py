"""Migrations: up from empty, down and up again, and matching the models, on both databases."""

from __future__ import annotations

import uuid

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from service.persistence.db import sync_url
from service.persistence.migrate import alembic_config, current_revision, head_revision, upgrade
from service.persistence.models import metadata
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
