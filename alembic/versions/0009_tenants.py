"""tenants: many Microsoft 365 tenants in one service; cases, keys and webhook subscriptions name theirs

Existing cases belong to the settings' own tenant, ``default``.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 19:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import service.persistence.types

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("organization", sa.String(length=255), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("cert_thumbprint", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=True),
        sa.Column("password_backend", sa.String(length=16), nullable=False),
        sa.Column("ps_server", sa.String(length=255), nullable=True),
        sa.Column("ps_port", sa.Integer(), nullable=True),
        sa.Column("ps_ssl", sa.Boolean(), nullable=True),
        sa.Column("ps_auth", sa.String(length=16), nullable=True),
        sa.Column("ps_username", sa.String(length=255), nullable=True),
        sa.Column("ps_password_key_id", sa.String(length=32), nullable=True),
        sa.Column("ps_password_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("ps_configuration_name", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_detail", sa.String(length=500), nullable=True),
        sa.Column("created_at", service.persistence.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", service.persistence.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("validated_at", service.persistence.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tenant", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_cases_tenant_created", ["tenant", "created_at", "id"], unique=False)
    op.execute("UPDATE cases SET tenant = 'default'")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tenants", _json(), nullable=True))
    with op.batch_alter_table("webhook_subscriptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tenants", _json(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhook_subscriptions", schema=None) as batch_op:
        batch_op.drop_column("tenants")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("tenants")
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.drop_index("ix_cases_tenant_created")
        batch_op.drop_column("tenant")
    op.drop_table("tenants")
