"""PostgreSQL actions: roles and databases, with identifiers always quoted.

The server is ``config.connection_url``, else ``$DAGRUN_POSTGRES_URL``, else
the local server as ``postgres``. A config's URL (a value may have made it)
may set only libpq's keywords for where the server is and how to reach it:
libpq runs in dagrun's own process, as root, and reads the files others
name (an ``sslkey`` of ``ENGINE:key`` even loads a shared library).

Roles and databases are created only when missing (``created`` in the
result), and rollback drops only what this step created, and only while it
is still this workspace's.

A role or database name is data (a web form's db_name): it must not pick
another tenant's. A role this action makes is marked for its workspace (its
comment: ``dagrun-workspace=<workspace>``, as create_linux_user marks
accounts), in the same transaction; an existing role is used only when it is
marked for the workspace (or ``dagrun-workspace=*``), or when the operator
lets every workspace use it (``$DAGRUN_ADOPT_ROLES``: names; ``*`` for any
role that is neither marked for another workspace nor privileged: not a
superuser, no CREATEROLE, replication or BYPASSRLS, and a member of no role
that is, nor of a predefined ``pg_`` role). A database is its owner's:
created for, or found owned by, a role the workspace may use, and copied
only from ``template0``, ``template1`` or such a database. A database it
makes is private to its owner: no other role may connect to it (nor make
temporary tables there), as PostgreSQL would otherwise let every role do.

The session's ``search_path`` is ``pg_catalog`` only, and every catalog
name is qualified: the database a URL names may be a tenant's, whose
settings (``ALTER DATABASE ... SET search_path``) must not put its own
functions in place of the catalog's in a superuser's session.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Iterator

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from dagrun.errors import PermanentError
from dagrun.libpq import read_only_root_files
from dagrun.run.handler_types import StepContext
from dagrun.run.outcome import HandlerResult

from .scripts import NOTHING_TO_UNDO

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ADOPT_ENV = "DAGRUN_ADOPT_ROLES"
TEMPLATES = ("template0", "template1")  # the server's own: copying one gives nobody's data


# What a step's connection_url may set (libpq's keywords, as libpq itself parses the URL): where the
# server is and how to reach it. Never a file for libpq to read as root (sslkey "ENGINE:key" even
# makes OpenSSL load a shared library: the handler runs in dagrun's own process), a service file's
# entry, a password file, nor the session's options (which the handler sets itself); nor hostaddr,
# which connects elsewhere than the host whose ~/.pgpass entry libpq sends.
URL_KEYWORDS = frozenset({
    "host", "port", "dbname", "user", "password", "connect_timeout", "application_name",
    "fallback_application_name", "sslmode", "sslnegotiation", "sslsni", "ssl_min_protocol_version",
    "ssl_max_protocol_version", "channel_binding", "require_auth", "target_session_attrs", "load_balance_hosts",
    "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout"})


_DRIVER = re.compile(r"^(postgres(?:ql)?)\+[a-z0-9]+://")


def connection_url(ctx: StepContext) -> str:
    """The step's server: its config's URL (which a value may have made),
    checked; else the operator's."""
    url = ctx.config.get("connection_url") or ctx.env.get("DAGRUN_POSTGRES_URL")
    if url:
        url = _DRIVER.sub(r"\1://", url, count=1)  # SQLAlchemy's postgresql+psycopg2:// is libpq's postgresql://
        _check_url(url)
        return url
    return os.environ.get("DAGRUN_POSTGRES_URL") or DEFAULT_URL


def _check_url(url: str) -> None:
    try:
        given = psycopg2.extensions.parse_dsn(url)
    except psycopg2.ProgrammingError:  # (its message may quote the URL, which holds a password)
        raise PermanentError("connection_url: not a PostgreSQL URL libpq can read") from None
    refused = sorted(set(given) - URL_KEYWORDS)
    if refused:
        raise PermanentError(
            f"connection_url sets {', '.join(refused)}: a step's URL says where the server is and how to reach "
            "it, never a file libpq would read as root, a service or the session's options (for certificates and "
            "keys, the operator sets PGSSLROOTCERT, PGSSLCERT and PGSSLKEY in dagrun's own environment)")
    if any(host.startswith(("/", "@")) for host in given.get("host", "").split(",")):
        # libpq sends ~/.pgpass's "localhost" password to any socket: one a user made is theirs to read
        raise PermanentError("connection_url: a step's server is a host name or address, not a socket folder (a "
                             "local server over its socket is the operator's $DAGRUN_POSTGRES_URL)")


@contextmanager
def connect(ctx: StepContext) -> Iterator[psycopg2.extensions.connection]:
    read_only_root_files()  # what libpq reads unasked must be root's
    try:
        # (a client option outranks the database's and the role's settings)
        conn = psycopg2.connect(connection_url(ctx), connect_timeout=min(30, int(ctx.timeout or 30)),
                                options="-c search_path=pg_catalog")
    except psycopg2.OperationalError as exc:  # server down: worth a retry
        raise ConnectionError(f"cannot connect to PostgreSQL: {str(exc).strip()}") from None
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            cur.execute("SET search_path = pg_catalog")
        yield conn
    finally:
        conn.close()


def _one(conn, query: str, *params) -> tuple | None:
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchone()


ROLE = ("SELECT r.oid, pg_catalog.shobj_description(r.oid, 'pg_authid'), r.rolsuper OR r.rolcreaterole "
        "OR r.rolreplication OR r.rolbypassrls FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) %s")
# Is the role a member, at any depth, of a role that is privileged or predefined (pg_read_server_files...)?
PRIVILEGED_MEMBERSHIP = (
    "WITH RECURSIVE up(oid) AS (SELECT m.roleid FROM pg_catalog.pg_auth_members m WHERE m.member "
    "OPERATOR(pg_catalog.=) %s UNION SELECT m.roleid FROM pg_catalog.pg_auth_members m JOIN up ON m.member "
    "OPERATOR(pg_catalog.=) up.oid) SELECT 1 FROM up JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) "
    "up.oid WHERE r.rolsuper OR r.rolcreaterole OR r.rolreplication OR r.rolbypassrls OR "
    "pg_catalog.starts_with(r.rolname, 'pg_') LIMIT 1")
OPEN_TO_EVERY_ROLE = ("SELECT pg_catalog.has_database_privilege('public', d.oid, 'CONNECT') OR "
                      "pg_catalog.has_database_privilege('public', d.oid, 'TEMPORARY') FROM pg_catalog.pg_database d "
                      "WHERE d.datname OPERATOR(pg_catalog.=) %s")
DATABASE_OWNER = ("SELECT pg_catalog.pg_get_userbyid(d.datdba), pg_catalog.pg_encoding_to_char(d.encoding) "
                  "FROM pg_catalog.pg_database d WHERE d.datname OPERATOR(pg_catalog.=) %s")


def _adopted() -> set[str]:
    return {n.strip() for n in os.environ.get(ADOPT_ENV, "").split(",") if n.strip()}


def role_problem(conn, name: str, workspace_id: str) -> str | None:
    """Why the workspace may not use the existing role ``name``, or None
    (None too when there is no such role). Whose another role is, is not
    said: one tenant learns nothing of another's."""
    from dagrun.run.accounts import PREFIX, marker
    row = _one(conn, ROLE, name)
    if row is None:
        return None
    oid, mark, privileged = row
    adopted = _adopted()
    if mark in (marker(workspace_id), PREFIX + "*") or name in adopted:
        return None
    if mark and mark.startswith(PREFIX):
        return f"role {name} is another workspace's: choose another name"
    if "*" in adopted and not privileged and _one(conn, PRIVILEGED_MEMBERSHIP, oid) is None:
        return None
    return (f"role {name} exists and was not made by dagrun for workspace {workspace_id}: choose another name, or "
            f"let every workspace use it (the operator's {ADOPT_ENV}={name})")


def _permanent(exc: psycopg2.Error) -> PermanentError:
    return PermanentError(f"PostgreSQL refused: {str(exc).strip()}")


def create_role(ctx: StepContext) -> HandlerResult:
    name, workspace_id = ctx.config["username"], str(ctx.workspace.get("id"))
    with connect(ctx) as conn:
        if _one(conn, ROLE, name) is not None:
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
            # Hashed here (SCRAM, or what the server's password_encryption says): the statement never
            # holds the password, and a server logging it (log_statement, a failing statement's log
            # line, which a tenant's role name can provoke: helper-68) logs only the hash.
            from psycopg2.extensions import encrypt_password
            query = query + sql.SQL(" PASSWORD %s")
            params = (encrypt_password(ctx.config["password"], name, conn),)
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
        if _one(conn, ROLE, ctx.config["username"]) is not None:
            problem = role_problem(conn, ctx.config["username"], str(ctx.workspace.get("id")))
            if problem:  # (a --check: the run would fail on it)
                raise PermanentError(problem)
            return HandlerResult()
    return HandlerResult(ok=False, error=f"role {ctx.config['username']} does not exist")


def drop_role(ctx: StepContext) -> HandlerResult:
    if not ctx.result.get("created"):
        return HandlerResult(data=dict(NOTHING_TO_UNDO))
    name = ctx.config["username"]
    with connect(ctx) as conn:
        # Still the one this step made? (dropped meanwhile and made again, it may be another workspace's)
        from dagrun.run.accounts import marker
        row = _one(conn, ROLE, name)
        if row is None or row[1] != marker(str(ctx.workspace.get("id"))):
            return HandlerResult(data={"kept": name, "why": "it is no longer the role this step made"})
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
    return HandlerResult(data={"dropped": name})


def create_database(ctx: StepContext) -> HandlerResult:
    name, owner = ctx.config["database_name"], ctx.config["owner"]
    workspace_id = str(ctx.workspace.get("id"))
    with connect(ctx) as conn:
        if _one(conn, ROLE, owner) is None:
            raise PermanentError(f"owner role {owner!r} does not exist")
        problem = role_problem(conn, owner, workspace_id)
        if problem:
            raise PermanentError(f"database {name}: its owner: {problem}")
        found = _one(conn, DATABASE_OWNER, name)
        if found is not None:
            if found[0] != owner:  # another role's (another workspace's, or the server's own)
                raise PermanentError(f"database {name} exists and is owned by another role than {owner}: choose "
                                     "another name")
            if _one(conn, OPEN_TO_EVERY_ROLE, name)[0]:  # an older dagrun's, or a crash between create and revoke
                with conn.cursor() as cur:
                    cur.execute(_private(name))
                return HandlerResult(data={"database": name, "created": False, "made_private": True},
                                     changed=True)
            return HandlerResult(data={"database": name, "created": False}, changed=False)
        source = ctx.config["template"]
        if source not in TEMPLATES:  # a copy of a database is a copy of its data: only of one the workspace may use
            template = _one(conn, DATABASE_OWNER, source)
            if template is None or role_problem(conn, template[0], workspace_id):
                raise PermanentError(f"database {name}: template {source} is not one this workspace may copy "
                                     f"(template0, template1, or a database of a role it may use)")
        query = sql.SQL("CREATE DATABASE {} OWNER {} ENCODING {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(owner), sql.Literal(ctx.config["encoding"]),
            sql.Identifier(source))
        try:
            with conn.cursor() as cur:
                cur.execute(query)
                cur.execute(_private(name))
        except (psycopg2.errors.InsufficientPrivilege, psycopg2.errors.InvalidParameterValue,
                psycopg2.errors.UndefinedObject) as exc:
            raise _permanent(exc) from None
    return HandlerResult(data={"database": name, "owner": owner, "created": True}, changed=True)


def _private(name: str) -> sql.Composed:
    """PostgreSQL lets every role connect to a new database and make
    temporary tables there: another tenant's role read this one's schema
    and functions (helper-62). Only its owner (and superusers) may."""
    return sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name))


def validate_database(ctx: StepContext) -> HandlerResult:
    name, owner = ctx.config["database_name"], ctx.config["owner"]
    with connect(ctx) as conn:
        row = _one(conn, DATABASE_OWNER, name)
    if row is None:
        return HandlerResult(ok=False, error=f"database {name} does not exist")
    if row[0] != owner:
        return HandlerResult(ok=False, error=f"database {name} is owned by another role than {owner}")
    return HandlerResult(data={"owner": row[0], "encoding": row[1]})


def drop_database(ctx: StepContext) -> HandlerResult:
    if not ctx.result.get("created"):
        return HandlerResult(data=dict(NOTHING_TO_UNDO))
    name, owner = ctx.config["database_name"], ctx.result.get("owner") or ctx.config["owner"]
    with connect(ctx) as conn:
        # Still the one this step made? (dropped meanwhile and made again, it may be another workspace's)
        row = _one(conn, DATABASE_OWNER, name)
        if row is None:
            return HandlerResult(data={"dropped": None, "why": "it is gone already"})
        if row[0] != owner or role_problem(conn, owner, str(ctx.workspace.get("id"))):
            return HandlerResult(data={"kept": name, "why": "it is no longer the database this step made"})
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    return HandlerResult(data={"dropped": name})
