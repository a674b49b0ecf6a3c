"""initial store: the seed's three tables, templates and runs

Revision ID: 0001
Revises: 
Create Date: 2026-11-27
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('provisioning_runs',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('workspace_id', sa.String(length=100), nullable=False),
    sa.Column('template_name', sa.String(length=200), nullable=False),
    sa.Column('template_version', sa.String(length=50), nullable=False),
    sa.Column('template_snapshot', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('total_steps', sa.Integer(), nullable=False),
    sa.Column('completed_steps', sa.Integer(), nullable=False),
    sa.Column('failed_steps', sa.Integer(), nullable=False),
    sa.Column('skipped_steps', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('started_by', sa.String(length=200), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('provisioning_runs', schema=None) as batch_op:
        batch_op.create_index('idx_runs_workspace', ['workspace_id', 'started_at'], unique=False)

    op.create_table('template_actions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('display_name', sa.String(length=200), nullable=False),
    sa.Column('category', sa.String(length=50), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('action_type', sa.String(length=50), nullable=False),
    sa.Column('execution_handler', sa.Text(), nullable=False),
    sa.Column('validation_handler', sa.Text(), nullable=True),
    sa.Column('rollback_handler', sa.Text(), nullable=True),
    sa.Column('config_schema', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('default_config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('max_retries', sa.Integer(), nullable=False),
    sa.Column('timeout_seconds', sa.Float(), nullable=False),
    sa.Column('retry_delay_seconds', sa.Float(), nullable=False),
    sa.Column('exponential_backoff', sa.Boolean(), nullable=False),
    sa.Column('requires_actions', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('conflicts_with_actions', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('condition_expression', sa.Text(), nullable=True),
    sa.Column('estimated_duration_seconds', sa.Float(), nullable=True),
    sa.Column('requires_sudo', sa.Boolean(), nullable=False),
    sa.Column('requires_network', sa.Boolean(), nullable=False),
    sa.Column('disk_space_required_mb', sa.Integer(), nullable=True),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.Column('is_system', sa.Boolean(), nullable=False),
    sa.Column('definition', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    with op.batch_alter_table('template_actions', schema=None) as batch_op:
        batch_op.create_index('idx_action_category', ['category'], unique=False)
        batch_op.create_index('idx_action_type', ['action_type'], unique=False)

    op.create_table('workspace_templates',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('version', sa.String(length=50), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('base_template_id', sa.Integer(), nullable=True),
    sa.Column('global_config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('document', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('usage_count', sa.Integer(), nullable=False),
    sa.Column('last_applied_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['base_template_id'], ['workspace_templates.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name', 'version', name='uq_template_name_version')
    )
    op.create_table('template_action_sequences',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('template_id', sa.Integer(), nullable=False),
    sa.Column('action_id', sa.Integer(), nullable=False),
    sa.Column('step_id', sa.String(length=100), nullable=True),
    sa.Column('sequence_order', sa.Integer(), nullable=False),
    sa.Column('phase', sa.String(length=50), nullable=True),
    sa.Column('action_config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('condition_expression', sa.Text(), nullable=True),
    sa.Column('skip_on_error', sa.Boolean(), nullable=False),
    sa.Column('max_retries', sa.Integer(), nullable=True),
    sa.Column('timeout_seconds', sa.Float(), nullable=True),
    sa.Column('requires', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.ForeignKeyConstraint(['action_id'], ['template_actions.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['template_id'], ['workspace_templates.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('template_id', 'sequence_order', name='uq_sequence_template_order')
    )
    with op.batch_alter_table('template_action_sequences', schema=None) as batch_op:
        batch_op.create_index('idx_sequence_template', ['template_id', 'sequence_order'], unique=False)

    op.create_table('workspace_action_executions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.String(length=36), nullable=False),
    sa.Column('workspace_id', sa.String(length=100), nullable=False),
    sa.Column('action_id', sa.Integer(), nullable=True),
    sa.Column('sequence_id', sa.Integer(), nullable=True),
    sa.Column('step_id', sa.String(length=100), nullable=False),
    sa.Column('action_name', sa.String(length=100), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('duration_seconds', sa.Float(), nullable=True),
    sa.Column('attempt_number', sa.Integer(), nullable=False),
    sa.Column('max_retries', sa.Integer(), nullable=False),
    sa.Column('next_retry_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('action_config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('execution_output', sa.Text(), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.Column('result_data', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['action_id'], ['template_actions.id'], ),
    sa.ForeignKeyConstraint(['run_id'], ['provisioning_runs.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['sequence_id'], ['template_action_sequences.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('workspace_action_executions', schema=None) as batch_op:
        batch_op.create_index('idx_execution_run', ['run_id', 'step_id', 'attempt_number'], unique=True)
        batch_op.create_index('idx_execution_status', ['workspace_id', 'status'], unique=False)
        batch_op.create_index('idx_workspace_executions', ['workspace_id', 'started_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('workspace_action_executions', schema=None) as batch_op:
        batch_op.drop_index('idx_workspace_executions')
        batch_op.drop_index('idx_execution_status')
        batch_op.drop_index('idx_execution_run')

    op.drop_table('workspace_action_executions')
    with op.batch_alter_table('template_action_sequences', schema=None) as batch_op:
        batch_op.drop_index('idx_sequence_template')

    op.drop_table('template_action_sequences')
    op.drop_table('workspace_templates')
    with op.batch_alter_table('template_actions', schema=None) as batch_op:
        batch_op.drop_index('idx_action_type')
        batch_op.drop_index('idx_action_category')

    op.drop_table('template_actions')
    with op.batch_alter_table('provisioning_runs', schema=None) as batch_op:
        batch_op.drop_index('idx_runs_workspace')

    op.drop_table('provisioning_runs')
