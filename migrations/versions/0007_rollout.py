"""pools.rollout_policy and pools.rollout_state: rollout control for snapshot rotation (issue 15)

Revision ID: 0007_rollout
Revises: 0006_schedules
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007_rollout'
down_revision = '0006_schedules'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('pools') as batch:
        batch.add_column(sa.Column('rollout_policy', sa.JSON(), nullable=False, server_default='{}'))
        batch.add_column(sa.Column('rollout_state', sa.JSON(), nullable=False, server_default='{}'))


def downgrade() -> None:
    with op.batch_alter_table('pools') as batch:
        batch.drop_column('rollout_state')
        batch.drop_column('rollout_policy')
