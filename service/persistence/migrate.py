"""``unblock migrate``: alembic upgrade head, from a checkout or an installed wheel."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from alembic import command
from service.persistence.db import sync_url


def script_location() -> Path:
    """``alembic/`` at the top of a checkout, or its copy inside the installed package."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_alembic", package.parent / "alembic"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("alembic migrations not found beside the service package")


#: Where migrations find the audit keys (0007 re-signs the audit chain with the first).
AUDIT_KEYS = "audit_keys"


def alembic_config(url: str, *, audit_keys: Sequence[bytes] | None = None) -> Config:
    """``audit_keys``: the process's keys, handed to migrations that sign audit records; None lets
    such a migration read them from the settings itself (as under the plain ``alembic`` command)."""
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    config.attributes["configure_logging"] = False
    if audit_keys is not None:
        config.attributes[AUDIT_KEYS] = list(audit_keys)
    return config


def upgrade(url: str, revision: str = "head", *, audit_keys: Sequence[bytes] | None = None) -> None:
    command.upgrade(alembic_config(url, audit_keys=audit_keys), revision)


def current_revision(url: str) -> str | None:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()
