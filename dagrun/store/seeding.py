"""Putting the action library and templates into the store, and reading
templates back by name.

``seed()`` is idempotent: actions are upserted by name, templates by (name,
version), and a template's ``template_action_sequences`` rows are replaced
by its current steps. A template stored this way runs by name
(``dagrun run odoo-18``); a successful run bumps its ``usage_count`` and
``last_applied_at``, as the seed's provisioner did.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ..compile.loader import build_library, package_dir, read_document
from .models import TemplateAction, TemplateActionSequence, WorkspaceTemplate
from ..spec import ActionSpec
from .engine import store_errors, writable


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def action_values(action: ActionSpec) -> dict[str, Any]:
    return {
        "display_name": action.display_name, "category": action.category, "description": action.description,
        "action_type": action.action_type, "execution_handler": action.execution_handler,
        "validation_handler": action.validation_handler, "rollback_handler": action.rollback_handler,
        "config_schema": _jsonable(dict(action.config_schema)), "default_config": _jsonable(dict(action.default_config)),
        "max_retries": action.max_retries, "timeout_seconds": action.timeout_seconds,
        "retry_delay_seconds": action.retry_delay_seconds, "exponential_backoff": action.exponential_backoff,
        "requires_actions": list(action.requires_actions), "conflicts_with_actions": list(action.conflicts_with_actions),
        "condition_expression": action.condition_expression,
        "estimated_duration_seconds": action.estimated_duration_seconds, "requires_sudo": action.requires_sudo,
        "requires_network": action.requires_network, "disk_space_required_mb": action.disk_space_required_mb,
        "is_active": action.is_active, "is_system": action.is_system,
    }


def seed(url: str, *, actions: Iterable[Any] | None = None, templates: Iterable[Path] | None = None,
         documents: Iterable[dict[str, Any]] | None = None,
         trusted_actions: Iterable[Any] | None = None, bases: Iterable[dict[str, Any]] | None = None) -> dict[str, int]:
    """Load the library and templates (files, or ``documents``; default: the
    shipped seeds) into the store. A template that does not compile is
    refused; ``bases``: the stored templates they may extend (default: all)."""
    from ..compile import compile_template

    library = build_library(actions, trusted_actions)
    if documents is not None:
        documents = [dict(d) for d in documents]
        sources: list[Any] = list(documents)
    else:
        files = list(templates) if templates is not None else sorted(
            p for p in (package_dir("seeds") / "templates").iterdir() if p.suffix in (".yaml", ".yml", ".json"))
        documents = [read_document(Path(p)) for p in files]
        sources = files
    known = documents + (list(bases) if bases is not None else stored_templates(url) if _has_tables(url) else [])
    for source in sources:  # refuse to store a template that does not compile
        compile_template(source, library=library, templates=known)
    counts = {"actions": 0, "templates": 0, "steps": 0}
    with store_errors(url, "cannot write to"), Session(writable(url)) as session, session.begin():
        ids: dict[str, int] = {}
        for action in library.values():
            row = session.scalar(select(TemplateAction).where(TemplateAction.name == action.name))
            if row is None:
                row = TemplateAction(name=action.name)
                session.add(row)
            for key, value in action_values(action).items():
                setattr(row, key, value)
            row.updated_at = datetime.now(timezone.utc)
            session.flush()
            ids[action.name] = row.id
            counts["actions"] += 1
        stored: dict[str, WorkspaceTemplate] = {}
        for doc in documents:
            version = str(doc.get("version", "1.0.0"))
            row = session.scalar(select(WorkspaceTemplate).where(WorkspaceTemplate.name == doc["name"],
                                                                 WorkspaceTemplate.version == version))
            if row is None:
                row = WorkspaceTemplate(name=doc["name"], version=version, usage_count=0)
                session.add(row)
            row.description = doc.get("description")
            row.global_config = _jsonable(doc.get("global_config") or {})
            row.document = _jsonable(doc)
            row.updated_at = datetime.now(timezone.utc)
            session.flush()
            stored[doc["name"]] = row
            session.execute(delete(TemplateActionSequence).where(TemplateActionSequence.template_id == row.id))
            for step in doc.get("actions") or []:
                if step.get("remove") or not step.get("action_name"):
                    continue  # overrides of inherited steps live in the document
                session.add(TemplateActionSequence(
                    template_id=row.id, action_id=ids[step["action_name"]], step_id=step.get("id"),
                    sequence_order=step["sequence_order"], phase=step.get("phase") or "main",
                    action_config=_jsonable(step.get("action_config") or {}),
                    condition_expression=step.get("condition_expression"),
                    skip_on_error=bool(step.get("skip_on_error", False)), max_retries=step.get("max_retries"),
                    timeout_seconds=step.get("timeout_seconds"), requires=step.get("requires")))
                counts["steps"] += 1
            counts["templates"] += 1
        for doc in documents:
            parent = doc.get("extends")
            parent_name = parent.get("name") if isinstance(parent, dict) else parent
            if parent_name in stored:
                stored[doc["name"]].base_template_id = stored[parent_name].id
    return counts


def store_template(url: str, document: dict[str, Any], *, actions: Iterable[Any] | None = None,
                   trusted_actions: Iterable[Any] | None = None, bases: Iterable[dict[str, Any]] | None = None) -> str:
    """Store ``document`` (the editor's save): as its version when that is
    new or unchanged, else as the next version (1.0.0 -> 1.0.1). Returns the
    version stored. Raises TemplateError when it does not compile, and
    InputError when its ``template_id`` is another template's (a
    ``base_template_id`` naming that one would find this one)."""
    doc = dict(document)
    everything = stored_templates(url) if _has_tables(url) else []
    existing = {str(d.get("version")): d for d in everything if d.get("name") == doc.get("name")}
    if doc.get("template_id") is not None:
        shipped = [read_document(p) for p in sorted((package_dir("seeds") / "templates").iterdir())
                   if p.suffix in (".yaml", ".yml", ".json")]
        taken = [d.get("name") for d in [*everything, *shipped] if d.get("name") != doc.get("name")
                 and str(d.get("template_id")) == str(doc.get("template_id"))]
        if taken:
            from ..errors import InputError
            raise InputError(f"template_id {doc['template_id']} is another template's: give this one its own")
    if not isinstance(doc.get("version") or "1.0.0", (str, int, float)) or isinstance(doc.get("version"), bool):
        from ..errors import InputError
        raise InputError(f"{doc.get('name')}: field 'version': {doc.get('version')!r} is not a version "
                         "(text such as 1.0.0, or a number)")
    version = str(doc.get("version") or "1.0.0")
    while version in existing and existing[version] != {**doc, "version": version}:
        version = _next_version(version)
    doc["version"] = version
    seed(url, actions=actions, documents=[doc], trusted_actions=trusted_actions, bases=bases)
    return version


def _next_version(version: str) -> str:
    head, _, last = version.rpartition(".")
    return f"{head}.{int(last) + 1}" if last.isdigit() and head else (
        str(int(version) + 1) if version.isdigit() else f"{version}.1")


def _has_tables(url: str) -> bool:
    from .engine import engine_for
    from .migrate import current
    with store_errors(url, "cannot read"):
        return current(engine_for(url)) is not None


def stored_templates(url: str) -> list[dict[str, Any]]:
    """Every stored template document (newest version of a name first)."""
    with store_errors(url, "cannot read"), Session(writable(url)) as session:
        rows = session.scalars(select(WorkspaceTemplate).order_by(WorkspaceTemplate.name,
                                                                  WorkspaceTemplate.updated_at.desc())).all()
        return [dict(row.document) for row in rows if row.document]
