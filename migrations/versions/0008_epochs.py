"""runners.epoch and instances.seen_epoch: never hand out an instance not seen running since the last
Redis loss or re-list (issue 12)

Existing rows start at epoch 0 on both sides, so what is running now stays claimable until the first
loss or re-list bumps its runner's epoch.

Revision ID: 0008_epochs
Revises: 0007_rollout
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008_epochs'
down_revision = '0007_rollout'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('runners', sa.Column('epoch', sa.Integer(), server_default='0', nullable=False))
    op.add_column('instances', sa.Column('seen_epoch', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('instances') as batch:
        batch.drop_column('seen_epoch')
    with op.batch_alter_table('runners') as batch:
        batch.drop_column('epoch')
