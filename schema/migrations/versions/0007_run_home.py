"""each run records its workspace's home: a home belongs to one workspace

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""
from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('provisioning_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('home_dir', sa.String(length=1024), nullable=True))
        batch_op.create_index('idx_runs_home', ['home_dir'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('provisioning_runs', schema=None) as batch_op:
        batch_op.drop_index('idx_runs_home')
        batch_op.drop_column('home_dir')
