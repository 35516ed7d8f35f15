"""instances.op_seq: event sequence numbers issued by the database, not by publishers' clocks (issue 11)

Existing rows start from their last applied sequence (a microsecond timestamp under the old scheme), so
every number issued from now on is newer than anything already applied.

Revision ID: 0005_op_seq
Revises: 0004_quotas
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005_op_seq'
down_revision = '0004_quotas'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('instances', sa.Column('op_seq', sa.BigInteger(), server_default='0', nullable=False))
    op.execute('UPDATE instances SET op_seq = event_seq')


def downgrade() -> None:
    with op.batch_alter_table('instances') as batch:
        batch.drop_column('op_seq')
