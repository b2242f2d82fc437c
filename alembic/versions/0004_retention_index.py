"""index for retention: closed cases by finish time

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 21:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.create_index(
            "ix_cases_finished",
            ["finished_at"],
            unique=False,
            sqlite_where=sa.text("is_open = 0"),
            postgresql_where=sa.text("NOT is_open"),
        )


def downgrade() -> None:
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_cases_finished",
            sqlite_where=sa.text("is_open = 0"),
            postgresql_where=sa.text("NOT is_open"),
        )
