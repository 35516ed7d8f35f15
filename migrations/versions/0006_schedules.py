"""pool_schedules: per-pool scheduled sizing, cron entries in IANA timezones (issue 15)

Revision ID: 0006_schedules
Revises: 0005_op_seq
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006_schedules'
down_revision = '0005_op_seq'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('pool_schedules',
    sa.Column('pool_id', sa.String(length=36), nullable=False),
    sa.Column('organization_id', sa.String(length=36), nullable=False),
    sa.Column('entries', sa.JSON(), nullable=False),
    sa.Column('applied_index', sa.Integer(), nullable=True),
    sa.Column('applied_fired_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('next_fire_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.String(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['pool_id'], ['pools.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pool_id')
    )
    op.create_index('ix_pool_schedules_due', 'pool_schedules', ['next_fire_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_pool_schedules_due', table_name='pool_schedules')
    op.drop_table('pool_schedules')
