from __future__ import annotations

import logging

import pytest

from dagrun.logs import configure


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs():
    configure(json=True, level=logging.ERROR)


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'dagrun.db'}"


@pytest.fixture
def home(tmp_path):
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def workspace(home):
    return {"id": "ws1", "linux_username": "alice", "db_name": "alice_db", "home_dir": str(home)}
