"""a run can be asked to stop from another process (the web page's Cancel)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""
from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('provisioning_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cancel_requested', sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('provisioning_runs', schema=None) as batch_op:
        batch_op.drop_column('cancel_requested')
