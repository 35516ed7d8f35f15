"""organization_quotas.lease_rate / lease_burst: a per-organization rate limit on Lease (issue 15)

Revision ID: 0009_lease_rate
Revises: 0008_epochs
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009_lease_rate'
down_revision = '0008_epochs'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('organization_quotas') as batch:
        batch.add_column(sa.Column('lease_rate', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('lease_burst', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('organization_quotas') as batch:
        batch.drop_column('lease_burst')
        batch.drop_column('lease_rate')
