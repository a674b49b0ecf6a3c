"""Where dagrun keeps things on this machine.

Everything lives under one data folder, ``$XDG_DATA_HOME/dagrun`` (by
default ``~/.local/share/dagrun``) of the user running dagrun: the SQLite
store, the journal of records the store could not take, and the homes of
workspaces given without a ``home_dir``. It is created readable by its owner
only.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path


def data_dir() -> Path:
    return _data_dir(os.environ.get("XDG_DATA_HOME") or "", os.environ.get("HOME") or "")


@functools.lru_cache(maxsize=8)
def _data_dir(xdg_data_home: str, home: str) -> Path:
    # Kept for the environment it was made in (every run asks, for the allowed home roots).
    # A relative $XDG_DATA_HOME is ignored, as the XDG spec says: it would name another folder
    # from another working folder (a resume would not find the run's journal: helper-73).
    if not os.path.isabs(xdg_data_home):
        xdg_data_home = ""
    base = xdg_data_home or str((Path(home) if home else Path.home()) / ".local" / "share")
    return Path(base) / "dagrun"


def journal_dir() -> Path:
    return data_dir() / "journal"


def workspaces_dir() -> Path:
    return data_dir() / "workspaces"


def default_database_url() -> str:
    """``$DAGRUN_DATABASE_URL``, else the SQLite file in dagrun's data folder."""
    url = os.environ.get("DAGRUN_DATABASE_URL")
    if url:
        return url
    return f"sqlite:///{data_dir() / 'dagrun.db'}"
