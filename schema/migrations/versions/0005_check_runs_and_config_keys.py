"""runs say whether they were checks (dagrun run --check); attempts carry a
key of their step's configuration, so durations can be learned per config

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""
from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('provisioning_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mode', sa.String(length=10), nullable=True))
    with op.batch_alter_table('workspace_action_executions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('config_key', sa.String(length=32), nullable=True))
        batch_op.create_index('idx_execution_config', ['action_name', 'config_key'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('workspace_action_executions', schema=None) as batch_op:
        batch_op.drop_index('idx_execution_config')
        batch_op.drop_column('config_key')
    with op.batch_alter_table('provisioning_runs', schema=None) as batch_op:
        batch_op.drop_column('mode')
