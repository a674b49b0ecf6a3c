"""What ``pip install`` ships: every folder of the action library, schemas
and seeds is a listed package (setuptools warns about each one that is not,
hundreds of lines on a first install), and every file of them is package data."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {"handlers": "dagrun.handlers", "schema": "dagrun.schema", "seeds": "dagrun.seeds",
           "dagrun/web": "dagrun.web"}


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_data_folder_is_a_listed_package():
    packages = set(_config()["packages"])
    for folder, package in SHIPPED.items():
        for path in [ROOT / folder, *(p for p in (ROOT / folder).rglob("*") if p.is_dir())]:
            if path.name == "__pycache__":
                continue
            name = ".".join([package, *path.relative_to(ROOT / folder).parts])
            assert name in packages, f"{path.relative_to(ROOT)} is not listed in pyproject.toml as {name}"


def test_every_shipped_file_matches_a_package_data_pattern():
    patterns = _config()["package-data"]["*"]
    for folder in SHIPPED:
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                assert any(path.match(p) for p in patterns), f"{path.relative_to(ROOT)} would not be installed"


def test_import_dagrun_and_help_load_nothing_heavy():
    """``import dagrun`` and ``dagrun --help`` load neither the store
    (SQLAlchemy), the compiler (networkx) nor the server; ``validate`` of a
    file loads no store when there is no database."""
    import subprocess
    import sys
    probe = ("import sys, dagrun; from dagrun import InputError; "
             "print(sorted(m for m in ('sqlalchemy', 'networkx', 'flask', 'structlog', 'jinja2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    probe = ("import sys; from dagrun.cli.main import main\n"
             "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print('LOADED', sorted(m for m in ('sqlalchemy', 'networkx', 'flask', 'structlog', 'dagrun.api') "
             "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "LOADED []", out.stdout


def test_compiling_a_valid_template_loads_neither_jsonschema_nor_the_engine():
    """A valid document is checked by the quick schema check alone, and
    compiling (validate, plan, graph) never loads the runner: jsonschema is
    imported to word a problem, the engine to run, networkx for
    ``Plan.graph()``, urllib (with http.client and ssl) for an api_call."""
    import subprocess
    import sys
    probe = ("import sys; from dagrun import api; api.validate(['demo']); "
             "print(sorted(m for m in ('jsonschema', 'dagrun.run.runner', 'dagrun.run.scheduler', 'sqlalchemy', "
             "'networkx', 'urllib.request', 'uuid') "
             "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "DAGRUN_DATABASE_URL": "sqlite:////nonexistent/x.db"})
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_no_relative_sys_path_entry_reaches_the_working_folder(tmp_path):
    """(helper-78, helper-79) setuptools' editable install (scripts/dev's)
    puts a relative entry on sys.path for its path hook, which Python
    resolves in the working folder: a folder of that name there had its
    sitecustomize.py run at start-up, as whoever ran dagrun (root, in a
    user's folder), and its package metadata read (alembic loads the entry
    points it names). scripts/dev takes the entry off sys.path. Planted
    here: that folder (named as the installed finder names it), with a
    sitecustomize, a module dagrun's start-up tries, and an entry point."""
    import json
    import os
    import subprocess
    import sys
    import sysconfig
    probe = subprocess.run([sys.executable, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"], cwd=tmp_path,
                           capture_output=True, text=True, check=True)
    assert [p for p in json.loads(probe.stdout) if p and not os.path.isabs(p)] == []
    finders = list(Path(sysconfig.get_paths()["purelib"]).glob("__editable___dagrun_*_finder.py"))
    names = [re.search(r"PATH_PLACEHOLDER = '([^']+)' \+ \"([^\"]+)\"", f.read_text()) for f in finders]
    planted = ["".join(m.groups()) for m in names if m] or ["__editable__.dagrun-0.1.0.finder.__path_hook__"]
    marker = tmp_path / "ran"
    for entry in planted:
        (tmp_path / entry / "pwned-1.0.dist-info").mkdir(parents=True)
        for module in ("sitecustomize", "usercustomize", "colorama"):  # (structlog tries colorama)
            (tmp_path / entry / f"{module}.py").write_text(f"open({str(marker)!r}, 'a').write({module!r})\n")
        (tmp_path / entry / "pwned-1.0.dist-info" / "METADATA").write_text("Name: pwned\nVersion: 1.0\n")
        (tmp_path / entry / "pwned-1.0.dist-info" / "entry_points.txt").write_text("[alembic.plugins]\npwned = this\n")
    started = subprocess.run([sys.executable, "-c", "import dagrun.cli, structlog, importlib.metadata as m; "
                              "print([e.name for e in m.entry_points(group='alembic.plugins')])"],
                             cwd=tmp_path, timeout=60, capture_output=True, text=True)
    command = subprocess.run([str(Path(sys.executable).parent / "dagrun"), "--version"], cwd=tmp_path, timeout=60,
                             capture_output=True, text=True)
    assert not marker.exists(), marker.read_text()
    assert started.returncode == 0 and command.returncode == 0, started.stderr + command.stderr
    assert "pwned" not in started.stdout, started.stdout
