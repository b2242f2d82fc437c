"""case document: the case's JSON as the API serves it, stored with each version

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 22:10:00

Written by the one writer with every change of the case, so reading a case (GET, the list page)
is one indexed read of stored bytes. Cases written before this revision have none until their
next change; readers render those from the rows, as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("document", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.drop_column("document")
