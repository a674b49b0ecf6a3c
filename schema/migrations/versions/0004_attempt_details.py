"""attempts say why a step was skipped, whether it changed anything, and
which process group ran it; runs may belong to a fleet

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""
from alembic import op
import sqlalchemy as sa

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('workspace_action_executions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('skip_reason', sa.String(length=30), nullable=True))
        batch_op.add_column(sa.Column('changed', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('process_group', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('process_started', sa.Float(), nullable=True))
    with op.batch_alter_table('provisioning_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fleet_id', sa.String(length=36), nullable=True))
        batch_op.create_index('idx_runs_fleet', ['fleet_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('provisioning_runs', schema=None) as batch_op:
        batch_op.drop_index('idx_runs_fleet')
        batch_op.drop_column('fleet_id')
    with op.batch_alter_table('workspace_action_executions', schema=None) as batch_op:
        batch_op.drop_column('process_started')
        batch_op.drop_column('process_group')
        batch_op.drop_column('changed')
        batch_op.drop_column('skip_reason')
