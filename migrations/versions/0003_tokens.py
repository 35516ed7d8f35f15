"""token scopes and lifecycle: api_tokens.scope, expires_at, last_used_at

Tokens that exist before this migration become `admin`: they could already do everything a tenant
can, so nothing that worked stops working. New rows must name their scope (no server default).

Revision ID: 0003_tokens
Revises: 0002_lease_invariant
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003_tokens'
down_revision = '0002_lease_invariant'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scope', sa.String(length=16), nullable=False, server_default='admin'))
        batch_op.add_column(sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.alter_column('scope', server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.drop_column('last_used_at')
        batch_op.drop_column('expires_at')
        batch_op.drop_column('scope')
