"""initial schema: cases, steps, events, credentials, api keys, idempotency

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-26 18:43:22.051807
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import service.persistence.types
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('api_keys',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=26), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('prefix', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('key_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('scopes', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', service.persistence.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', service.persistence.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', service.persistence.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_used_at', service.persistence.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('prefix')
    )
    op.create_table('cases',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=26), nullable=False),
    sa.Column('mailbox', sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('is_open', sa.Boolean(), nullable=False),
    sa.Column('ticket_ref', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('requested_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('note', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=True),
    sa.Column('actions', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('require_approval', sa.Boolean(), nullable=False),
    sa.Column('restriction', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('last_error', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('next_action_at', service.persistence.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('sending_restored_by', service.persistence.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('lease_owner', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('lease_expires_at', service.persistence.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('created_at', service.persistence.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', service.persistence.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', service.persistence.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.create_index('ix_cases_created', ['created_at', 'id'], unique=False)
        batch_op.create_index('ix_cases_due', ['next_action_at'], unique=False, sqlite_where=sa.text('is_open = 1'), postgresql_where=sa.text('is_open'))
        batch_op.create_index('ix_cases_mailbox_created', ['mailbox', 'created_at', 'id'], unique=False)
        batch_op.create_index('ix_cases_state_created', ['state', 'created_at', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_cases_ticket_ref'), ['ticket_ref'], unique=False)
        batch_op.create_index('uq_cases_open_mailbox', ['mailbox'], unique=True, sqlite_where=sa.text('is_open = 1'), postgresql_where=sa.text('is_open'))

    op.create_table('idempotency_records',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('principal', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('request_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=False),
    sa.Column('response', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('location', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('created_at', service.persistence.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('principal', 'key', name='uq_idempotency_principal_key')
    )
    with op.batch_alter_table('idempotency_records', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_idempotency_records_created_at'), ['created_at'], unique=False)

    op.create_table('case_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('case_id', sqlmodel.sql.sqltypes.AutoString(length=26), nullable=False),
    sa.Column('at', service.persistence.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('type', sqlmodel.sql.sqltypes.AutoString(length=48), nullable=False),
    sa.Column('from_state', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('to_state', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('step', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('detail', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('case_events', schema=None) as batch_op:
        batch_op.create_index('ix_case_events_case', ['case_id', 'id'], unique=False)

    op.create_table('case_steps',
    sa.Column('case_id', sqlmodel.sql.sqltypes.AutoString(length=26), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('started_at', service.persistence.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', service.persistence.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('error', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('case_id', 'name')
    )
    op.create_table('credentials',
    sa.Column('case_id', sqlmodel.sql.sqltypes.AutoString(length=26), nullable=False),
    sa.Column('key_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('sealed', sa.LargeBinary(), nullable=True),
    sa.Column('created_at', service.persistence.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('applied_at', service.persistence.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('expires_at', service.persistence.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('revealed_at', service.persistence.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('revealed_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('destroyed_at', service.persistence.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('destroyed_reason', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('case_id')
    )
    with op.batch_alter_table('credentials', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_credentials_expires_at'), ['expires_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('credentials', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_credentials_expires_at'))

    op.drop_table('credentials')
    op.drop_table('case_steps')
    with op.batch_alter_table('case_events', schema=None) as batch_op:
        batch_op.drop_index('ix_case_events_case')

    op.drop_table('case_events')
    with op.batch_alter_table('idempotency_records', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_idempotency_records_created_at'))

    op.drop_table('idempotency_records')
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_index('uq_cases_open_mailbox', sqlite_where=sa.text('is_open = 1'), postgresql_where=sa.text('is_open'))
        batch_op.drop_index(batch_op.f('ix_cases_ticket_ref'))
        batch_op.drop_index('ix_cases_state_created')
        batch_op.drop_index('ix_cases_mailbox_created')
        batch_op.drop_index('ix_cases_due', sqlite_where=sa.text('is_open = 1'), postgresql_where=sa.text('is_open'))
        batch_op.drop_index('ix_cases_created')

    op.drop_table('cases')
    op.drop_table('api_keys')
