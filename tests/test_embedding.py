"""The README's Flask + Flask-SQLAlchemy example, run as written against an
application database on the real PostgreSQL server: the application's own
Alembic history and its own ``workspace_templates`` table are there first,
and stay as they were."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import psycopg2

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- embedding-example -->\n```python\n(.*?)```", text, re.DOTALL)
    assert match, "the README lost its embedding example"
    return match.group(1)


def test_the_readme_flask_provisioner_shares_its_database_with_dagrun(pg_url, tmp_path, monkeypatch):
    app_db = psycopg2.connect(pg_url)
    app_db.autocommit = True
    with app_db.cursor() as cur:  # what Flask-Migrate left there before dagrun came
        cur.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        cur.execute("INSERT INTO alembic_version VALUES ('4f2a9c1b7e3d')")
        cur.execute("CREATE TABLE workspace_templates (id SERIAL PRIMARY KEY, title TEXT)")
        cur.execute("INSERT INTO workspace_templates (title) VALUES ('the app''s own')")
    monkeypatch.setenv("DATABASE_URL", pg_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    module = tmp_path / "provisioner.py"
    module.write_text(readme_example())
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("provisioner", None)
    import provisioner  # noqa: E402 - the README's code, as a user would save it

    home = tmp_path / "ada"
    with provisioner.app.app_context():
        provisioner.db.create_all()  # the application's tables only: dagrun's schema is dagrun's
        provisioner.db.session.add(provisioner.Workspace(id=1, name="ada", home=str(home)))
        provisioner.db.session.commit()
    client = provisioner.app.test_client()
    started = client.post("/workspaces/1/provision")
    assert started.status_code == 200 and started.json["status"] == "succeeded", started.json
    status = client.get("/workspaces/1/run")
    assert status.json == {"run": started.json["run"], "status": "succeeded", "error": None}
    assert (home / "README.md").exists() or any(home.iterdir())  # the demo did its work in the home
    with app_db.cursor() as cur:
        cur.execute("SELECT version_num FROM public.alembic_version")
        assert cur.fetchall() == [("4f2a9c1b7e3d",)]
        cur.execute("SELECT title FROM public.workspace_templates")
        assert cur.fetchall() == [("the app's own",)]
        cur.execute("SELECT name, run_id FROM public.workspace")
        assert cur.fetchall() == [("ada", started.json["run"])]
        cur.execute("SELECT count(*) FROM dagrun.workspace_action_executions WHERE run_id = %s",
                    (started.json["run"],))
        assert cur.fetchone()[0] >= 5
    app_db.close()
    with provisioner.app.app_context():
        provisioner.db.engine.dispose()  # the fixture drops the database
