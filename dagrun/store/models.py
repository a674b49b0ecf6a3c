"""SQLAlchemy 2.x models of the store.

The seed's three tables (``template_actions``, ``template_action_sequences``,
``workspace_action_executions``) keep the seed's columns and indexes, plus
``workspace_templates`` and ``provisioning_runs``. Deliberate differences
from the seed, all documented in the README:

- the seed's ``UNIQUE(template_id, action_id)`` is dropped: its own Odoo
  example clones two repositories with the same action;
- array columns (``requires_actions``...) are portable JSON lists of action
  names, not Postgres ``INTEGER[]``;
- ``workspace_id`` is a string without a foreign key (the ``workspaces``
  table belongs to the provisioning service), and every attempt row
  references its run (``run_id``) and names its step (``step_id``);
- ``duration_seconds`` is a float: most steps take less than a second.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, TypeDecorator,
                        UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class JSONType(TypeDecorator):
    """JSON; JSONB on PostgreSQL. A type decorator rather than a variant so
    that the PostgreSQL dialect is imported only where it is used (a SQLite
    run saves 50 ms of start-up)."""

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB
            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(JSON())


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class TemplateAction(Base):
    __tablename__ = "template_actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False, unique=True)
    display_name: Mapped[str] = mapped_column(String(200), nullable=False)
    category: Mapped[str] = mapped_column(String(50), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    action_type: Mapped[str] = mapped_column(String(50), nullable=False)
    execution_handler: Mapped[str] = mapped_column(Text, nullable=False)
    validation_handler: Mapped[str | None] = mapped_column(Text)
    rollback_handler: Mapped[str | None] = mapped_column(Text)
    config_schema: Mapped[Any] = mapped_column(JSONType, nullable=True)
    default_config: Mapped[Any] = mapped_column(JSONType, nullable=True)
    max_retries: Mapped[int] = mapped_column(Integer, default=3)
    timeout_seconds: Mapped[float] = mapped_column(Float, default=300)
    retry_delay_seconds: Mapped[float] = mapped_column(Float, default=5)
    exponential_backoff: Mapped[bool] = mapped_column(Boolean, default=True)
    requires_actions: Mapped[Any] = mapped_column(JSONType, nullable=True)
    conflicts_with_actions: Mapped[Any] = mapped_column(JSONType, nullable=True)
    condition_expression: Mapped[str | None] = mapped_column(Text)
    estimated_duration_seconds: Mapped[float | None] = mapped_column(Float)
    requires_sudo: Mapped[bool] = mapped_column(Boolean, default=False)
    requires_network: Mapped[bool] = mapped_column(Boolean, default=False)
    disk_space_required_mb: Mapped[int | None] = mapped_column(Integer)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    is_system: Mapped[bool] = mapped_column(Boolean, default=True)
    definition: Mapped[Any] = mapped_column(JSONType, nullable=True)  # the full definition document
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    created_by: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index("idx_action_category", "category"),
        Index("idx_action_type", "action_type"),
    )


class WorkspaceTemplate(Base):
    __tablename__ = "workspace_templates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    version: Mapped[str] = mapped_column(String(50), nullable=False, default="1.0.0")
    description: Mapped[str | None] = mapped_column(Text)
    base_template_id: Mapped[int | None] = mapped_column(ForeignKey("workspace_templates.id"))
    global_config: Mapped[Any] = mapped_column(JSONType, nullable=True)
    document: Mapped[Any] = mapped_column(JSONType, nullable=True)  # the template as written (before inheritance)
    usage_count: Mapped[int] = mapped_column(Integer, default=0)
    last_applied_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    __table_args__ = (UniqueConstraint("name", "version", name="uq_template_name_version"),)


class TemplateActionSequence(Base):
    __tablename__ = "template_action_sequences"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("workspace_templates.id", ondelete="CASCADE"), nullable=False)
    action_id: Mapped[int] = mapped_column(ForeignKey("template_actions.id", ondelete="CASCADE"), nullable=False)
    step_id: Mapped[str | None] = mapped_column(String(100))
    sequence_order: Mapped[int] = mapped_column(Integer, nullable=False)
    phase: Mapped[str | None] = mapped_column(String(50))
    action_config: Mapped[Any] = mapped_column(JSONType, nullable=True)
    condition_expression: Mapped[str | None] = mapped_column(Text)
    skip_on_error: Mapped[bool] = mapped_column(Boolean, default=False)
    max_retries: Mapped[int | None] = mapped_column(Integer)
    timeout_seconds: Mapped[float | None] = mapped_column(Float)
    requires: Mapped[Any] = mapped_column(JSONType, nullable=True)

    __table_args__ = (
        UniqueConstraint("template_id", "sequence_order", name="uq_sequence_template_order"),
        Index("idx_sequence_template", "template_id", "sequence_order"),
    )


class ProvisioningRun(Base):
    __tablename__ = "provisioning_runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(String(100), nullable=False)
    template_name: Mapped[str] = mapped_column(String(200), nullable=False)
    template_version: Mapped[str] = mapped_column(String(50), nullable=False)
    template_snapshot: Mapped[Any] = mapped_column(JSONType, nullable=True)
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    completed_steps: Mapped[int] = mapped_column(Integer, default=0)
    failed_steps: Mapped[int] = mapped_column(Integer, default=0)
    skipped_steps: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    started_by: Mapped[str | None] = mapped_column(String(200))
    # What resume needs to run the same thing again (secrets are not stored).
    workspace: Mapped[Any] = mapped_column(JSONType, nullable=True)
    variables: Mapped[Any] = mapped_column(JSONType, nullable=True)
    # Names of the secrets (variables, and step.field for x-secret values written in the
    # template) the run was given: a resume must be given them again.
    secret_names: Mapped[Any] = mapped_column(JSONType, nullable=True)
    # {"step.field": scrypt digest} of the secrets written in the template (store/digests.py): a
    # resume is given them again, and must give the very values the run started with.
    secret_digests: Mapped[Any] = mapped_column(JSONType, nullable=True)
    max_workers: Mapped[int | None] = mapped_column(Integer)
    # The process running it ("host:pid"): with heartbeat_at, tells a live run from a dead one.
    owner: Mapped[str | None] = mapped_column(String(200))
    fleet_id: Mapped[str | None] = mapped_column(String(36))  # runs started together by run_fleet
    mode: Mapped[str | None] = mapped_column(String(10))  # "check" for dagrun run --check (None: a real run)
    # Set by another process to stop the run (why, and by whom); the run's recorder polls it.
    cancel_requested: Mapped[str | None] = mapped_column(String(200))

    home_dir: Mapped[str | None] = mapped_column(String(1024))  # the workspace's home: one workspace's only
    # host:folder where the owning process journals what the store cannot take (a resume looks there)
    journal: Mapped[str | None] = mapped_column(String(1300))
    __table_args__ = (Index("idx_runs_workspace", "workspace_id", "started_at"), Index("idx_runs_fleet", "fleet_id"),
                      Index("idx_runs_home", "home_dir"))


class WorkspaceActionExecution(Base):
    __tablename__ = "workspace_action_executions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("provisioning_runs.id", ondelete="CASCADE"), nullable=False)
    workspace_id: Mapped[str] = mapped_column(String(100), nullable=False)
    action_id: Mapped[int | None] = mapped_column(ForeignKey("template_actions.id"))
    sequence_id: Mapped[int | None] = mapped_column(ForeignKey("template_action_sequences.id"))
    step_id: Mapped[str] = mapped_column(String(100), nullable=False)
    action_name: Mapped[str] = mapped_column(String(100), nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    attempt_number: Mapped[int] = mapped_column(Integer, default=1)
    max_retries: Mapped[int] = mapped_column(Integer, nullable=False)
    next_retry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    action_config: Mapped[Any] = mapped_column(JSONType, nullable=True)
    execution_output: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    result_data: Mapped[Any] = mapped_column(JSONType, nullable=True)
    # Why a skipped step was skipped: "condition" (it stands on resume) or "upstream failed" (it runs again).
    skip_reason: Mapped[str | None] = mapped_column(String(30))
    changed: Mapped[bool | None] = mapped_column(Boolean)  # did the attempt change anything?
    # The attempt's last process group and its start time (clock ticks since boot, as in
    # /proc/PID/stat): a resume of a dead run ends what it left running, never a reused pid.
    process_group: Mapped[int | None] = mapped_column(Integer)
    process_started: Mapped[float | None] = mapped_column(Float)
    # The step's configuration as compiled (secrets masked), hashed: durations are learned per key.
    config_key: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    __table_args__ = (
        Index("idx_workspace_executions", "workspace_id", "started_at"),
        Index("idx_execution_status", "workspace_id", "status"),
        Index("idx_execution_run", "run_id", "step_id", "attempt_number", unique=True),
        Index("idx_execution_config", "action_name", "config_key"),
    )
