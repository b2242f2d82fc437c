"""tenant facts in the database: accepted domains and the restricted list, read by workers

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 15:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

import service.persistence.types

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tenant_facts",
        sa.Column("tenant", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column(
            "accepted_domains",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("domains_refreshed_at", service.persistence.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("senders_fetched_at", service.persistence.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column(
            "senders_refresh_requested_at", service.persistence.types.UTCDateTime(timezone=True), nullable=True
        ),
        sa.PrimaryKeyConstraint("tenant"),
    )
    with op.batch_alter_table("restricted_senders", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "tenant", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False, server_default="default"
            )
        )
        batch_op.add_column(
            sa.Column("changed_at", service.persistence.types.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("temporary_block", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.create_index("ix_restricted_senders_tenant", ["tenant"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("restricted_senders", schema=None) as batch_op:
        batch_op.drop_index("ix_restricted_senders_tenant")
        batch_op.drop_column("temporary_block")
        batch_op.drop_column("changed_at")
        batch_op.drop_column("tenant")
    op.drop_table("tenant_facts")
