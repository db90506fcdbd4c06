"""The delivery ledger's writer for an SMTP send: one thread with its own SQLite connection, which commits the
rows of every worker, several messages' rows in one transaction.

Apart from the backend (smtp.py) because it is a concern of its own: the order and durability of the writes
that make "at least once, exactly once but for a crash's messages in flight" hold.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlite_utils

from digest import store
from digest.models import DeliveryStatus


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class _Write:
    """One request to the ledger: its statements, and the future its worker may wait on for their commit."""

    statements: Callable[[sqlite_utils.Database], object]
    kept: bool = False  # a `sent`: nobody waits; kept for the next transaction when this one fails
    committed: Future = field(default_factory=Future)


def _closing(db: sqlite_utils.Database) -> None:
    """The statements of the last write asked of the ledger: none; the writer stops after its transaction."""


_MOST_AT_ONCE = 256  # writes in one transaction


class Ledger:
    """The delivery ledger's only writer: a thread with a SQLite connection of its own, for every worker.

    What the workers ask for while it commits goes into its next transaction together: one fsync for the
    messages of several connections. A worker asks for a message's `sending` before MAIL and waits for its
    commit only before DATA, so the fsync overlaps the envelope's round trips; it asks for a `sent` without
    waiting. The guarantee is unchanged: a row is `sending` on disk before its DATA, `sent` only after the 250
    (synchronous=FULL: through a power cut too, not only a kill -9).

    A transaction that fails fails the writes waited on (their worker stops the run); its `sent` rows are kept
    and written first by the next transaction, down to the last one, at `close`. A writer that stops for any
    other reason (a bug) fails every write asked for then and after: no worker waits for ever."""

    def __init__(self, path: str, issue_id: str):
        """Returns once the ledger's database is open, or `error` says why it could not be."""
        self.path, self.issue_id = path, issue_id
        self._queue: queue.SimpleQueue[_Write] = queue.SimpleQueue()
        self._unwritten: list[_Write] = []  # `sent` rows of a failed transaction
        self.error: BaseException | None = None
        self._stopped = False  # the writer takes nothing more
        self._lock = threading.Lock()  # a write is queued before the writer stops, or refused after
        self._opened, self.closed = threading.Event(), threading.Event()
        threading.Thread(target=self._run, name="smtp-ledger", daemon=True).start()
        self._opened.wait()

    def sending(self, key: str, message_id: str) -> Future:
        """Its result: False when the row is no longer pending (settled meanwhile): this recipient must not be sent."""
        now = _now()
        return self._ask(_Write(lambda db: store.mark_sending(db, self.issue_id, key, message_id, now)))

    def sent(self, key: str, reply: str) -> None:
        now = _now()
        self._ask(
            _Write(lambda db: store.mark_delivery(db, self.issue_id, key, DeliveryStatus.SENT, reply, now), kept=True)
        )

    def outcome(self, key: str, status: str, reply: str, *, bounced: bool = False) -> None:
        now = _now()
        write = _Write(lambda db: store.mark_delivery(db, self.issue_id, key, status, reply, now, bounced=bounced))
        self._ask(write).result()

    def _ask(self, write: _Write) -> Future:
        with self._lock:
            if self._stopped:
                self._refuse(write)
            else:
                self._queue.put(write)
        return write.committed

    def _refuse(self, write: _Write) -> None:
        """A write the stopped writer will not make: a `sent` joins the unwritten, a waited one fails."""
        if write.kept:
            self._unwritten.append(write)
        elif not write.committed.done():
            write.committed.set_exception(self.error or sqlite3.OperationalError("the ledger is closed"))

    def close(self) -> None:
        """Ask for the last transaction, once every worker has stopped; `closed` is set when it is done."""
        self._ask(_Write(_closing))

    def unwritten_error(self) -> BaseException | None:
        """After `closed`: why `sent` rows could not be written (those recipients stay `sending`), if so."""
        return self.error if self._unwritten else None

    def _run(self) -> None:
        db: sqlite_utils.Database | None = None
        batch: list[_Write] = []  # taken from the queue, not yet committed
        try:
            db = store.open_db(self.path)
            db.execute("PRAGMA synchronous=FULL")
            self._opened.set()
            while True:
                batch = [self._queue.get()]
                with contextlib.suppress(queue.Empty):
                    while len(batch) < _MOST_AT_ONCE and batch[-1].statements is not _closing:
                        batch.append(self._queue.get_nowait())
                closing = batch[-1].statements is _closing
                self._commit(db, batch)
                batch = []
                if closing:
                    return
        except BaseException as exc:  # the database would not open, or a bug: one line from the workers, no hang
            self.error = self.error or exc
        finally:
            with self._lock, contextlib.suppress(queue.Empty):
                self._stopped = True
                for write in batch:
                    self._refuse(write)
                while True:
                    self._refuse(self._queue.get_nowait())
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            self._opened.set()
            self.closed.set()

    def _commit(self, db: sqlite_utils.Database, writes: list[_Write]) -> None:
        writes = self._unwritten + writes
        try:
            with store.transaction(db):
                results = [write.statements(db) for write in writes]
        except Exception as exc:  # a full disk, a lock held too long, or a bug: the workers waiting stop the run
            self.error = exc
            self._unwritten = [write for write in writes if write.kept]
            for write in writes:
                if not write.kept:
                    write.committed.set_exception(exc)
            return
        self._unwritten = []
        for write, result in zip(writes, results, strict=True):
            write.committed.set_result(result)
