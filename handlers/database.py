"""PostgreSQL actions: roles and databases, with identifiers always quoted.

The server is ``config.connection_url``, else ``$DAGRUN_POSTGRES_URL``, else
the local server as ``postgres``. Roles and databases are created only when
missing (``created`` in the result), and rollback drops only what this step
created.

A role or database name is data (a web form's db_name): it must not pick
another tenant's. A role this action makes is marked for its workspace (its
comment: ``dagrun-workspace=<workspace>``, as create_linux_user marks
accounts), in the same transaction; an existing role is used only when it is
marked for the workspace (or ``dagrun-workspace=*``), or when the operator
lets every workspace use it (``$DAGRUN_ADOPT_ROLES``: names, or ``*`` for any
role that is not a superuser). A database is its owner's: created for, or
found owned by, a role the workspace may use.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import psycopg2
from psycopg2 import sql

from dagrun.errors import PermanentError
from dagrun.run.handler_types import StepContext
from dagrun.run.outcome import HandlerResult

from .scripts import NOTHING_TO_UNDO

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def connection_url(ctx: StepContext) -> str:
    return ctx.config.get("connection_url") or ctx.env.get("DAGRUN_POSTGRES_URL") or os.environ.get(
        "DAGRUN_POSTGRES_URL") or DEFAULT_URL


@contextmanager
def connect(ctx: StepContext) -> Iterator[psycopg2.extensions.connection]:
    try:
        conn = psycopg2.connect(connection_url(ctx), connect_timeout=min(30, int(ctx.timeout or 30)))
    except psycopg2.OperationalError as exc:  # server down: worth a retry
        raise ConnectionError(f"cannot connect to PostgreSQL: {str(exc).strip()}") from None
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        yield conn
    finally:
        conn.close()


def _exists(conn, query: str, name: str) -> bool:
    with conn.cursor() as cur:
        cur.execute(query, (name,))
        return cur.fetchone() is not None


ROLE_EXISTS = "SELECT 1 FROM pg_roles WHERE rolname = %s"
DB_EXISTS = "SELECT 1 FROM pg_database WHERE datname = %s"
ROLE_MARK = "SELECT rolsuper, shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s"
ADOPT_ENV = "DAGRUN_ADOPT_ROLES"


def _adopted() -> set[str]:
    return {n.strip() for n in os.environ.get(ADOPT_ENV, "").split(",") if n.strip()}


def role_problem(conn, name: str, workspace_id: str) -> str | None:
    """Why the workspace may not use the existing role ``name``, or None
    (None too when there is no such role)."""
    from dagrun.run.accounts import PREFIX, marker
    with conn.cursor() as cur:
        cur.execute(ROLE_MARK, (name,))
        row = cur.fetchone()
    if row is None:
        return None
    superuser, mark = row
    adopted = _adopted()
    if mark in (marker(workspace_id), PREFIX + "*") or name in adopted or "*" in adopted and not superuser:
        return None
    if mark and mark.startswith(PREFIX):
        return f"role {name} is workspace {mark[len(PREFIX):]}'s, not workspace {workspace_id}'s: choose another name"
    return (f"role {name} exists and was not made by dagrun for workspace {workspace_id}: choose another name, or "
            f"let every workspace use it (the operator's {ADOPT_ENV}={name})")


def _permanent(exc: psycopg2.Error) -> PermanentError:
    return PermanentError(f"PostgreSQL refused: {str(exc).strip()}")


def create_role(ctx: StepContext) -> HandlerResult:
    name, workspace_id = ctx.config["username"], str(ctx.workspace.get("id"))
    with connect(ctx) as conn:
        if _exists(conn, ROLE_EXISTS, name):
            problem = role_problem(conn, name, workspace_id)
            if problem:
                raise PermanentError(problem)
            return HandlerResult(data={"role": name, "created": False}, changed=False)
        options = [sql.SQL("LOGIN")]
        if ctx.config.get("createdb"):
            options.append(sql.SQL("CREATEDB"))
        if ctx.config.get("superuser"):
            options.append(sql.SQL("SUPERUSER"))
        query = sql.SQL("CREATE ROLE {} {}").format(sql.Identifier(name), sql.SQL(" ").join(options))
        params: tuple = ()
        if ctx.config.get("password"):
            query = query + sql.SQL(" PASSWORD %s")
            params = (ctx.config["password"],)
        # one statement string: one transaction, so a role is never left unmarked
        from dagrun.run.accounts import marker
        query = query + sql.SQL("; COMMENT ON ROLE {} IS %s").format(sql.Identifier(name))
        params = (*params, marker(workspace_id))
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
        except (psycopg2.errors.InsufficientPrivilege, psycopg2.errors.SyntaxError) as exc:
            raise _permanent(exc) from None
    return HandlerResult(data={"role": name, "created": True}, changed=True)


def validate_role(ctx: StepContext) -> HandlerResult:
    with connect(ctx) as conn:
        if _exists(conn, ROLE_EXISTS, ctx.config["username"]):
            problem = role_problem(conn, ctx.config["username"], str(ctx.workspace.get("id")))
            if problem:  # (a --check: the run would fail on it)
                raise PermanentError(problem)
            return HandlerResult()
    return HandlerResult(ok=False, error=f"role {ctx.config['username']} does not exist")


def drop_role(ctx: StepContext) -> HandlerResult:
    if not ctx.result.get("created"):
        return HandlerResult(data=dict(NOTHING_TO_UNDO))
    with connect(ctx) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ctx.config["username"])))
    return HandlerResult(data={"dropped": ctx.config["username"]})


def create_database(ctx: StepContext) -> HandlerResult:
    name, owner = ctx.config["database_name"], ctx.config["owner"]
    with connect(ctx) as conn:
        if not _exists(conn, ROLE_EXISTS, owner):
            raise PermanentError(f"owner role {owner!r} does not exist")
        problem = role_problem(conn, owner, str(ctx.workspace.get("id")))
        if problem:
            raise PermanentError(f"database {name}: its owner: {problem}")
        with conn.cursor() as cur:
            cur.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (name,))
            found = cur.fetchone()
        if found is not None:
            if found[0] != owner:  # another role's (another workspace's, or the server's own)
                raise PermanentError(f"database {name} exists and is owned by {found[0]}, not {owner}: choose "
                                     "another name")
            return HandlerResult(data={"database": name, "created": False}, changed=False)
        query = sql.SQL("CREATE DATABASE {} OWNER {} ENCODING {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(owner), sql.Literal(ctx.config["encoding"]),
            sql.Identifier(ctx.config["template"]))
        try:
            with conn.cursor() as cur:
                cur.execute(query)
        except (psycopg2.errors.InsufficientPrivilege, psycopg2.errors.InvalidParameterValue,
                psycopg2.errors.UndefinedObject) as exc:
            raise _permanent(exc) from None
    return HandlerResult(data={"database": name, "owner": owner, "created": True}, changed=True)


def validate_database(ctx: StepContext) -> HandlerResult:
    name, owner = ctx.config["database_name"], ctx.config["owner"]
    with connect(ctx) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding) FROM pg_database "
                    "WHERE datname = %s", (name,))
        row = cur.fetchone()
    if row is None:
        return HandlerResult(ok=False, error=f"database {name} does not exist")
    if row[0] != owner:
        return HandlerResult(ok=False, error=f"database {name} is owned by {row[0]}, not {owner}")
    return HandlerResult(data={"owner": row[0], "encoding": row[1]})


def drop_database(ctx: StepContext) -> HandlerResult:
    if not ctx.result.get("created"):
        return HandlerResult(data=dict(NOTHING_TO_UNDO))
    with connect(ctx) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(ctx.config["database_name"])))
    return HandlerResult(data={"dropped": ctx.config["database_name"]})
