"""The connection to the SQLite file: opening it (WAL, owner-only, migrated), one write transaction, and the
ISO 8601 times every table stores. Apart because every table family's module builds on it.

Times are stored as ISO 8601 strings in UTC (`2026-04-01T10:00:00+00:00`), so that comparing strings compares
instants.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils

from digest.store.migrations import migrate


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def from_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


def open_db(path: Path | str) -> sqlite_utils.Database:
    """Open (creating if needed) the database in WAL mode, its schema brought up to date (migrations.py).

    A new database is created readable by its owner only (it holds every subscriber's address; SQLite
    gives its -wal and -shm files the same mode). An empty file is refused, not taken for a new database:
    a truncated digest.db has lost the delivery ledger, and starting afresh would mail everyone again.
    """
    path = Path(path)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_size == 0:
            raise sqlite3.DatabaseError(
                f"{path} is empty (0 bytes): restore it from a backup, or delete it to "
                f"start a new database (which knows of no sent issue)"
            ) from None
    else:
        os.close(descriptor)
    connection = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    db = sqlite_utils.Database(connection)
    db.execute("PRAGMA journal_mode=WAL")
    for companion in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        _keep_private(companion)
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    migrate(db, str(path))
    return db


def _keep_private(path: Path) -> None:
    """A database made by an older digest, or copied in, may be readable by others: make it its owner's alone."""
    try:
        status = path.stat()
        if status.st_uid == os.getuid() and status.st_mode & 0o077:
            path.chmod(status.st_mode & 0o700)
    except FileNotFoundError:
        pass


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[None]:
    """One write transaction, taken at once (BEGIN IMMEDIATE) so that concurrent writers queue. Inside
    another transaction it is part of that one, which commits or rolls back the whole."""
    if db.conn.in_transaction:
        yield
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.conn.in_transaction:  # also a COMMIT that failed (disk full): never leave it open
            db.execute("ROLLBACK")
        raise


def database_path(db: sqlite_utils.Database) -> str:
    """The file behind a connection, so that each sending thread can open its own connection to it."""
    return next(db.execute("PRAGMA database_list"))[2]
