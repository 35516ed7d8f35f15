"""lease invariant: one active lease per instance in the schema, change stamps for every state machine, no dead `scaled`

Revision ID: 0002_lease_invariant
Revises: 0001
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002_lease_invariant'
down_revision = '0001'
branch_labels = None
depends_on = None

ACTIVE = "state = 'active'"


def upgrade() -> None:
    # Rows that break the invariant cannot be indexed: end all but the newest active lease per instance
    # (only a database written before this migration, on SQLite, can hold such rows).
    op.execute(
        "UPDATE leases SET state = 'expired', end_reason = 'duplicate', ended_at = CURRENT_TIMESTAMP "
        "WHERE state = 'active' AND EXISTS (SELECT 1 FROM leases AS newer WHERE newer.instance_id = leases.instance_id "
        "AND newer.state = 'active' AND (newer.created_at > leases.created_at "
        "OR (newer.created_at = leases.created_at AND newer.id > leases.id)))"
    )
    with op.batch_alter_table('leases', schema=None) as batch_op:
        batch_op.create_index('uq_leases_active_instance', ['instance_id'], unique=True,
                              postgresql_where=sa.text(ACTIVE), sqlite_where=sa.text(ACTIVE))
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('scaled')
    now = sa.text('CURRENT_TIMESTAMP')
    with op.batch_alter_table('pools', schema=None) as batch_op:
        batch_op.add_column(sa.Column('phase_changed_at', sa.DateTime(timezone=True), nullable=False, server_default=now))
    with op.batch_alter_table('prebuilds', schema=None) as batch_op:
        batch_op.add_column(sa.Column('phase_changed_at', sa.DateTime(timezone=True), nullable=False, server_default=now))
    with op.batch_alter_table('reservations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('state_changed_at', sa.DateTime(timezone=True), nullable=False, server_default=now))


def downgrade() -> None:
    with op.batch_alter_table('reservations', schema=None) as batch_op:
        batch_op.drop_column('state_changed_at')
    with op.batch_alter_table('prebuilds', schema=None) as batch_op:
        batch_op.drop_column('phase_changed_at')
    with op.batch_alter_table('pools', schema=None) as batch_op:
        batch_op.drop_column('phase_changed_at')
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scaled', sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table('leases', schema=None) as batch_op:
        batch_op.drop_index('uq_leases_active_instance', postgresql_where=sa.text(ACTIVE), sqlite_where=sa.text(ACTIVE))
