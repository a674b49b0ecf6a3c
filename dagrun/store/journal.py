"""Records the store could not take, kept on local disk until it can.

When the database stays unreachable longer than the writer's retry limit,
or refuses a write, the batch of row operations goes to a JSON-lines file in
dagrun's data folder (``journal/<run id>.jsonl``), created readable by its
owner only. It never keeps the database password: ``dagrun db recover``
(:func:`recover`) is given the URL again when the journalled one had one.
A file is removed once all its batches are replayed; a batch that fails
stays for the next attempt.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from ..errors import InputError
from ..locations import journal_dir
from .engine import describe_url, writable


def append(run_id: str, url: str, ops: list[dict[str, Any]], owner: str | None = None) -> Path:
    """Add one batch to the run's journal; the file it went to. ``owner``:
    the run's owner then; replayed only while the run still has it."""
    directory = journal_dir()
    directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # (dagrun's data folder: its owner's only)
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / f"{run_id}.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"url": describe_url(url), "ops": ops, "run_id": run_id, "owner": owner},
                            default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())  # as durable as a commit: dependents may start after this
    return path


def _replay_url(journalled: str, given: str | None) -> str:
    """The journal keeps the database URL without its password: a URL that
    had one must be given again (``--db`` or ``$DAGRUN_DATABASE_URL``)."""
    if given:
        return given
    if "***" in journalled:
        raise InputError(f"the journal was written for {journalled}, whose password is not kept: "
                         "give the database URL (dagrun db recover --db URL, or DAGRUN_DATABASE_URL)")
    return journalled


def pending(run_id: str, folder: Path | None = None) -> Path | None:
    """The journal of ``run_id`` in ``folder`` (default: this process's
    journal folder), if it has records not yet replayed. One that cannot be
    looked at counts as pending."""
    path = (folder or journal_dir()) / f"{run_id}.jsonl"
    try:
        path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return path  # (another user's folder: what it holds cannot be told)
    return path


def pending_for(run_id: str, recorded: str | None, checked: bool = False) -> str | None:
    """Why a resume may not trust the store's records of ``run_id`` yet, if
    so: its journal here, or in the folder its last process recorded
    (``host:folder``: another HOME, the service's data folder) when that is
    on this host. On another host it cannot be looked at: refused unless
    ``checked`` (the operator looked there, or the host is gone)."""
    import socket
    kept = pending(run_id)
    host, _, folder = (recorded or "").partition(":")
    if kept is None and folder and host == socket.gethostname():
        kept = pending(run_id, Path(folder))
    if kept is not None:
        return (f"run {run_id} has records the store could not take, kept in {kept}: replay them first "
                f"(dagrun db recover{' ' + str(kept) if kept.parent != journal_dir() else ''}), then resume")
    if folder and host != socket.gethostname() and not checked:
        return (f"run {run_id} last ran on host {host}, whose journal ({folder}) may hold records the store "
                "could not take: a resume here would run again the steps they record. Run dagrun db recover "
                f"on {host} (or see that {folder}/{run_id}.jsonl does not exist there), then resume with "
                "--journal-checked (journal_checked=True); likewise if that host is gone for good")
    return None


def recover(journal: Path | None = None, url: str | None = None) -> list[tuple[Path, int, str | None]]:
    """Replay journalled operations; ``(file, batches applied, error)`` per file.
    ``url``: the database to replay into (needed when the journalled URL had a
    password)."""
    from .operations import NotOwner, apply_operations
    files = [journal] if journal else sorted(journal_dir().glob("*.jsonl"))
    report = []
    for path in files:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        applied, error, taken = 0, None, None
        for line in lines:
            entry = json.loads(line)
            owner = (entry["run_id"], entry["owner"]) if entry.get("owner") and entry.get("run_id") else None
            try:
                apply_operations(writable(_replay_url(entry["url"], url)), entry["ops"], {}, owner=owner)
            except NotOwner as exc:  # the run was taken over meanwhile: these records are the old owner's
                taken = str(exc)
                break
            except (SQLAlchemyError, OSError, ValueError, LookupError) as exc:  # the driver's own errors too
                error = (str(exc).splitlines() or [type(exc).__name__])[0]
                break
            except Exception as exc:  # noqa: BLE001 - psycopg2 / sqlite3 errors (attempt rows go through the driver)
                if type(exc).__module__.split(".")[0] not in ("psycopg2", "sqlite3"):
                    raise
                error = (str(exc).splitlines() or [type(exc).__name__])[0]
                break
            applied += 1
        if taken is not None:  # its records stand; the rest here were the process taken for dead
            path.unlink()
            report.append((path, applied, f"the rest not replayed: the run was taken over by {taken}"))
            continue
        if error is None:
            path.unlink()
        else:
            path.write_text("\n".join(lines[applied:]) + "\n", encoding="utf-8")
        report.append((path, applied, error))
    return report
