"""Which Linux account a workspace's steps may run as.

A workspace names its ``linux_username``, but that name is data (a web
form): it must not pick another tenant's account. ``create_linux_user``
marks the accounts it makes with ``dagrun-workspace=<workspace>`` in their comment
(GECOS) field; steps run only as an account marked for their workspace (or
``dagrun-workspace=*``, an account an operator shares on purpose), or one the
operator lists (``adopt_users=`` / ``--adopt-user`` /
``$DAGRUN_ADOPT_USERS``, ``*`` for any non-system account).
"""

from __future__ import annotations

import os
import pwd
from typing import Iterable

ADOPT_ENV = "DAGRUN_ADOPT_USERS"
PREFIX = "dagrun-workspace="  # (a comment field holds no ":")


def marker(workspace_id: str) -> str:
    """The comment ``create_linux_user`` gives the account of ``workspace_id``."""
    from ..workspace import slug
    return PREFIX + slug(workspace_id)


def adopted(extra: Iterable[str] = ()) -> frozenset[str]:
    """Accounts the operator lets any workspace use."""
    listed = os.environ.get(ADOPT_ENV, "")
    return frozenset([*(n.strip() for n in listed.split(",") if n.strip()), *extra])


def account_problem(name: str, workspace_id: str, adopt: Iterable[str] = ()) -> str | None:
    """Why the workspace ``workspace_id`` may not run steps as ``name`` (an
    existing account), or None."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None  # not there yet: create_linux_user makes it, marked
    allowed = adopted(adopt)
    marks = {part.strip() for part in entry.pw_gecos.split(",") if part.strip().startswith(PREFIX)}
    if marker(workspace_id) in marks or PREFIX + "*" in marks or name in allowed:
        return None
    if "*" in allowed and not marks:  # "*": the unmarked ones, never an account made for another workspace
        return None
    whose = " (it is another workspace's)" if marks else ""
    return (f"the Linux account {name!r} is not this workspace's{whose}: steps run only as an account "
            f"create_linux_user made for workspace {workspace_id!r}, or one the operator allows "
            f"(adopt_users=[...], --adopt-user NAME, ${ADOPT_ENV})")
