"""per-organization quota overrides (issue 9: limits and fairness)

Revision ID: 0004_quotas
Revises: 0003_tokens
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004_quotas'
down_revision = '0003_tokens'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('organization_quotas',
    sa.Column('organization_id', sa.String(length=36), nullable=False),
    sa.Column('max_pool_size', sa.Integer(), nullable=True),
    sa.Column('max_pools', sa.Integer(), nullable=True),
    sa.Column('max_instances', sa.Integer(), nullable=True),
    sa.Column('max_pools_per_request', sa.Integer(), nullable=True),
    sa.Column('max_creating', sa.Integer(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('organization_id')
    )


def downgrade() -> None:
    op.drop_table('organization_quotas')
