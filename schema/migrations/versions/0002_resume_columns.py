"""runs remember workspace, variables and owner (resume, crash detection)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('provisioning_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('workspace', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True))
        batch_op.add_column(sa.Column('variables', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True))
        batch_op.add_column(sa.Column('max_workers', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('owner', sa.String(length=200), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('provisioning_runs', schema=None) as batch_op:
        batch_op.drop_column('owner')
        batch_op.drop_column('max_workers')
        batch_op.drop_column('variables')
        batch_op.drop_column('workspace')

