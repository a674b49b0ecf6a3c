"""`dagrun seed`: the library and templates in the store, idempotently, on
SQLite and the real PostgreSQL; stored templates run by name and count
their uses."""

from __future__ import annotations

import pytest
import yaml
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dagrun import run_template
from dagrun.compile.loader import build_library
from dagrun.store.models import TemplateAction, TemplateActionSequence, WorkspaceTemplate
from dagrun.store.seeding import seed
from dagrun.store.engine import writable
from tests.helpers import script_step, template


def count(url, model):
    with Session(writable(url)) as s:
        return s.scalar(select(func.count()).select_from(model))


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_seed_is_idempotent(store, request):
    url = request.getfixturevalue("db_url" if store == "sqlite" else "pg_url")
    first = seed(url)
    second = seed(url)
    assert first == second
    assert count(url, TemplateAction) == len(build_library())
    assert count(url, WorkspaceTemplate) == first["templates"] == 4
    assert count(url, TemplateActionSequence) == first["steps"]
    with Session(writable(url)) as s:
        django = s.scalar(select(WorkspaceTemplate).where(WorkspaceTemplate.name == "django"))
        base = s.scalar(select(WorkspaceTemplate).where(WorkspaceTemplate.name == "python-base"))
        assert django.base_template_id == base.id
        odoo = s.scalar(select(WorkspaceTemplate).where(WorkspaceTemplate.name == "odoo-18"))
        clones = s.scalars(select(TemplateActionSequence).where(TemplateActionSequence.template_id == odoo.id,
                                                                TemplateActionSequence.step_id.in_(["odoo_community", "odoo_enterprise"]))).all()
        assert len(clones) == 2 and clones[0].action_id == clones[1].action_id  # the seed's UNIQUE is gone


def test_a_stored_template_runs_by_name_and_counts_its_uses(tmp_path, db_url, workspace):
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(template(script_step(10, "echo stored", id="s"), name="stored-only")))
    seed(db_url, templates=[path])
    path.unlink()  # only the database has it now
    result = run_template("stored-only", workspace, database_url=db_url)
    assert result.success and result.steps["s"].stdout == "stored\n"
    with Session(writable(db_url)) as s:
        row = s.scalar(select(WorkspaceTemplate).where(WorkspaceTemplate.name == "stored-only"))
        assert row.usage_count == 1 and row.last_applied_at is not None


def test_seed_refuses_a_template_that_does_not_compile(tmp_path, db_url):
    from dagrun import TemplateError
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(template({"sequence_order": 10, "action_name": "nope"}, name="bad")))
    with pytest.raises(TemplateError, match="unknown action 'nope'"):
        seed(db_url, templates=[path])
    assert count(db_url, WorkspaceTemplate) == 0


def test_validate_by_name_asks_sqlite_with_the_standard_library_first(tmp_path, db_url, workspace):
    """After a first recorded run the default SQLite database exists but
    stores no template: validating a seed by name answers without loading
    SQLAlchemy. Once a template is stored, validate finds it by name."""
    import os
    import subprocess
    import sys

    from dagrun import api
    from dagrun.store.models import WorkspaceTemplate
    assert api.STORED_TEMPLATES_TABLE == WorkspaceTemplate.__tablename__
    assert run_template(template(script_step(10, "echo hi", id="s")), workspace, database_url=db_url).success
    probe = ("import sys; from dagrun.cli.main import main\n"
             "try:\n    main(['validate', 'demo'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('sqlalchemy', 'dagrun.store') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**os.environ, "DAGRUN_DATABASE_URL": db_url})
    assert out.stdout.splitlines() == ["demo: ok", "[]"], out.stdout + out.stderr

    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(template(script_step(10, "echo stored", id="s"), name="stored-only")))
    seed(db_url, templates=[path])
    path.unlink()  # only the database has it now
    assert api.validate(["stored-only"], database_url=db_url) == [("stored-only", None)]
    assert api.validate(["nowhere"], database_url=db_url)[0][1] is not None
