"""The signup requests' queue, in the database (store migration m011), and the thread that works it.

A POST /subscribe writes one row, the same for any address, and answers: whether the address is new, pending,
active or blocked is decided here, after the answer went out, so that the answer's timing tells nothing. The
thread then records the request (`signup.request_subscription`) and mails the confirmation link. Rows outlive
a SIGTERM or a crash: `digest serve` sends what is left before it exits (DRAIN_SECONDS at most), and the next
start sends the rest; a row is claimed before its mail (two serves on one database share the queue) and
deleted once the mail is accepted, so each is sent once (a kill -9 in between: once more, LEASE later).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import sqlite_utils

from digest import store
from digest.credentials import redact
from digest.web.signup import next_sequence

log = logging.getLogger("digest.serve")
DRAIN_SECONDS = 5.0  # at SIGTERM: how long the mails left may hold up the exit (the next start sends the rest)
ATTEMPTS = 5  # a mail the SMTP server refuses this often is given up, and logged
RETRY = timedelta(minutes=1)  # after a failure, times the attempts made
LEASE = timedelta(minutes=10)  # a row being mailed is another serve's to leave alone (a kill -9: sent again then)
IDLE_SECONDS = 1.0  # how often an idle thread looks for a retry that came due


def enqueue(db: sqlite_utils.Database, email: str, name: str, now: datetime) -> None:
    """The request's row, and its number in the subscriber events' sequence: one transaction, the same for
    every address."""
    with store.transaction(db):
        sequence = next_sequence(db)
        db.execute(
            "INSERT INTO signup_queue (email, name, requested_at, seq) VALUES (?, ?, ?, ?)",
            [email, name, store.iso(now), sequence],
        )


Record = Callable[[sqlite_utils.Database, str, str, datetime], bool]  # the request recorded: mail it?
Mail = Callable[[str, int], None]  # the confirmation mail for an address and its request's sequence


class Confirmations:
    """The thread that turns queued requests into subscribers and mails, one at a time: a slow or absent SMTP
    server never holds the request threads."""

    def __init__(self, db_path: Path, record: Record, mail: Mail, clock: Callable[[], datetime]):
        self.db_path, self._record, self._mail, self._clock = db_path, record, mail, clock
        self._wake = threading.Event()
        self._deadline: float | None = None  # set by drain: stop when the queue is empty or at this time
        self._thread = threading.Thread(target=self._run, name="confirmations", daemon=True)

    def start(self) -> Confirmations:
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def drain(self, seconds: float = DRAIN_SECONDS) -> None:
        """Send what is queued for at most `seconds` (a mail under way may take its SMTP timeout more), then
        stop; what is left waits in the database for the next start."""
        self._deadline = time.monotonic() + seconds
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            db = store.open_db(self.db_path)
        except Exception as exc:  # one line; the rows wait for the next start
            log.error("confirmation queue: %s", redact(f"{exc}" or type(exc).__name__))
            return
        while self._deadline is None or time.monotonic() < self._deadline:
            try:
                worked = self._step(db)
            except Exception as exc:  # a locked or full database: one line, and the row waits
                log.error("confirmation queue: %s", redact(f"{exc}" or type(exc).__name__))
                worked = False
            if not worked:
                if self._deadline is not None:
                    break
                self._wake.wait(IDLE_SECONDS)
                self._wake.clear()
        try:
            left = db.execute("SELECT count(*) FROM signup_queue").fetchone()[0]
        except Exception:  # nothing more to say than the errors logged already
            left = 0
        if left:
            log.warning("%d confirmation mails wait for the next start of digest serve", left)
        db.close()

    def _step(self, db: sqlite_utils.Database) -> bool:
        """The oldest row that is due, worked; False when there is none."""
        now = self._clock()
        with store.transaction(db):  # claimed: another serve on this database leaves it alone for LEASE
            row = db.execute(
                "SELECT id, email, name, requested_at, seq, state, attempts FROM signup_queue "
                "WHERE next_try IS NULL OR next_try <= ? ORDER BY id LIMIT 1",
                [store.iso(now)],
            ).fetchone()
            if row is None:
                return False
            db.execute("UPDATE signup_queue SET next_try = ? WHERE id = ?", [store.iso(now + LEASE), row[0]])
        row_id, email, name, requested_at, sequence, state, attempts = row
        if state == "new":
            with store.transaction(db):
                if self._record(db, email, name, store.from_iso(requested_at)):
                    db.execute("UPDATE signup_queue SET state = 'mail' WHERE id = ?", [row_id])
                else:
                    db.execute("DELETE FROM signup_queue WHERE id = ?", [row_id])
                    return True
        try:
            self._mail(email, sequence)
        except Exception as exc:  # one logged line, never the thread's end
            attempts += 1
            reason = redact(f"{exc}" or type(exc).__name__)
            if attempts >= ATTEMPTS:
                log.error("confirmation mail to %s given up after %d attempts: %s", email, attempts, reason)
                db.execute("DELETE FROM signup_queue WHERE id = ?", [row_id])
            else:
                log.error("confirmation mail to %s not sent (will retry): %s", email, reason)
                retry = store.iso(now + RETRY * attempts)
                db.execute("UPDATE signup_queue SET attempts = ?, next_try = ? WHERE id = ?", [attempts, retry, row_id])
            return True
        db.execute("DELETE FROM signup_queue WHERE id = ?", [row_id])
        return True
