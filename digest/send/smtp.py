"""SMTP delivery: a few reused connections in parallel, each delivery recorded before the next one is sent.

Each worker thread owns one SMTP connection and pulls recipients from a shared list; one more thread writes
the ledger for all of them (Ledger), several messages' rows in one transaction. Per recipient a worker has
`sending` committed while MAIL and RCPT go out, waits for that commit before DATA, and has the outcome
recorded (a `sent` goes into the ledger's next transaction without the worker waiting):
- 250: sent, with the server's reply;
- 5xx to RCPT: failed and suppressed as a bounce (the address is never mailed again);
- 5xx to DATA: failed (the message was refused, not the address), not retried;
- 5xx to MAIL: the sender is refused, which no recipient can fix: the run stops;
- 4xx, a dropped connection or a timeout: retried with exponential backoff, at most smtp.max_attempts
  times in this run, then left pending for the next run.
A worker whose connection fails max_attempts times on one recipient gives up and hands it back.

Guarantee: at least once, exactly once but for a crash's messages in flight. A row is committed `sending`
before its DATA and `sent` after the 250, before the connection's next DATA (the ledger's transactions keep
the order the writes were asked in; synchronous=FULL: durable
through a power cut, not only a kill -9), so after a crash only rows left `sending` (at most one per
connection) are sent again; they keep their Message-ID, so receivers can recognize the copy. The same holds,
in one run, for a connection that drops after the message was sent but before the server's answer arrived.
"""

import collections
import os
import smtplib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from datetime import UTC, datetime

import sqlite_utils

from digest import store
from digest.credentials import redact, redact_printed
from digest.errors import DatabaseProblem, DigestError, SendError
from digest.models import DeliveryStatus
from digest.retry import backoff
from digest.send.base import SendPlan, SendReport
from digest.send.ledger import Ledger
from digest.send.list_backend import ListBackend
from digest.send.message import MessageFactory, Unmailable
from digest.send.smtp_transport import Connection, Refused, SmtpSettings, Unreachable, smtp_password
from digest.settings.config import Config
from digest.settings.subscribers import Subscriber, address_key


def _identity(path: str) -> tuple[int, int] | None:
    """Which file the database is: a send must notice that it was deleted or replaced under it."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


class _Work:
    """The recipients still to be mailed, taken one at a time by the workers from the plan's list (no copy
    of it is made); one that a worker's connection could not take goes back for another worker."""

    def __init__(self, recipients: Iterable[Subscriber]):
        self._next = iter(recipients)
        self._returned: collections.deque[Subscriber] = collections.deque()
        self._lock = threading.Lock()

    def take(self) -> Subscriber | None:
        with self._lock:
            return self._returned.popleft() if self._returned else next(self._next, None)

    def give_back(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._returned.append(subscriber)


class SmtpBackend(ListBackend):
    """Sends one issue to a list of subscribers; the deliveries table makes a re-run resume."""

    name = "smtp"
    Settings = SmtpSettings

    def __init__(
        self,
        config: Config,
        *,
        send_now: bool = False,
        on_result: Callable[[str, str], None] | None = None,
        sleep: Callable[[float], object] | None = None,
    ):
        super().__init__(config, send_now=send_now, on_result=on_result)
        self.password = smtp_password(self.settings)
        self._stop = threading.Event()
        # A pause before a retry ends early when the run is told to stop (Ctrl-C, SIGTERM from systemd).
        self.sleep = sleep or self._stop.wait
        self._lock = threading.Lock()
        self._fatal: DigestError | None = None
        self._last_error: str | None = None
        self._counts: dict[str, int] = {DeliveryStatus.SENT: 0, DeliveryStatus.FAILED: 0}
        self._failures: list[tuple[str, str]] = []

    def send_test(self, plan: SendPlan, address: str) -> str:
        """One copy to one address, with a message id of its own; nothing is recorded."""
        factory = self.message_factory(plan)
        connection = Connection(self.settings, self.password)
        message = factory.copy(address, "", factory.test_message_id())
        try:
            reply = connection.transact(factory.sender, address, message)
            assert reply is not None  # nothing was asked before DATA
            return reply
        except Refused as exc:
            raise SendError(f"{address}: {exc}") from None
        except Unreachable as exc:  # said at once: a person at a terminal is testing the settings
            raise SendError(str(exc)) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise SendError(
                f"{self.settings.host}:{self.settings.port}: {redact(str(exc) or type(exc).__name__)}"
            ) from None
        finally:
            connection.close()

    def deliver(self, db: sqlite_utils.Database, plan: SendPlan) -> SendReport:
        started = time.perf_counter()
        issue_id = plan.issue
        factory = self.message_factory(plan)
        resent = self.start(db, plan, datetime.now(UTC))  # each recipient's row: pending
        work = _Work(plan.recipients)
        path = store.database_path(db)
        self._database = _identity(path)
        ledger = Ledger(path, issue_id)
        if ledger.error is not None:  # no connection is opened for a send that could not record anything
            self._stop_run(SendError(f"database: {ledger.error}"))
        connections = 0 if self._stop.is_set() else min(self.settings.connections, len(plan.recipients))
        finished = [threading.Event() for _ in range(connections)]
        for number, done in enumerate(finished):
            threading.Thread(
                target=self._worker,
                args=(path, ledger, factory, work, done),
                name=f"smtp-{number}",
                daemon=True,
            ).start()
        interrupt = self._wait_for(finished, ledger)
        if error := ledger.unwritten_error():  # said even when something else stopped the run first
            lost = f"database: {error}; the last messages sent are still marked sending: they go again next run"
            with self._lock:
                self._fatal = SendError(f"{self._fatal}; {lost}" if self._fatal else lost)
        try:
            complete = store.finish_deliveries(db, issue_id, datetime.now(UTC))
            counts = store.delivery_counts(db, issue_id)
            returned = not complete and store.return_to_draft_if_undelivered(db, issue_id)
        except sqlite3.Error:
            if self._fatal:  # the database that stopped a worker: say so once
                raise self._fatal from None
            raise
        if interrupt is not None:
            raise interrupt
        if self._fatal:
            if returned:
                raise SendError(f"{self._fatal}; nothing was delivered, {issue_id} is a draft again") from None
            raise self._fatal
        pending = counts.get(DeliveryStatus.PENDING, 0) + counts.get(DeliveryStatus.SENDING, 0)
        return SendReport(
            issue=issue_id,
            backend=self.name,
            sent=self._counts[DeliveryStatus.SENT],
            failed=self._counts[DeliveryStatus.FAILED],
            pending=pending,
            resent=resent,
            complete=complete,
            failures=self._failures,
            last_error=self._last_error if pending else None,
            returned_to_draft=returned,
            seconds=time.perf_counter() - started,
        )

    def _wait_for(self, finished: list[threading.Event], ledger: Ledger) -> KeyboardInterrupt | None:
        """Wait until every worker has finished, then until the ledger has committed what they asked for, and
        return the Ctrl-C or SIGTERM that came meanwhile, if any: then each worker records the message it has
        in flight and stops. Workers say they are done with an Event: Thread.join interrupted by a signal can
        report a running thread as stopped (CPython 3.11), and the process would then end under a message in
        flight, leaving it `sending`."""
        interrupt, closing = None, False
        while True:
            try:
                for done in finished:
                    while not done.wait(0.5):  # wakes up for Ctrl-C and SIGTERM
                        pass
                if not closing:
                    ledger.close()  # a Ctrl-C between these two lines asks twice: the second is refused, harmless
                    closing = True
                while not ledger.closed.wait(0.5):
                    pass
                return interrupt
            except KeyboardInterrupt as exc:
                interrupt = interrupt or exc
                self._stop.set()

    # --- the workers ------------------------------------------------------------------

    def _worker(self, path: str, ledger: Ledger, factory: MessageFactory, work: _Work, done: threading.Event) -> None:
        """One connection's loop. What stops the run (a refused sender, a database that cannot record what
        was sent: disk full, locked) is kept for `deliver` to raise as one line, never a thread's traceback."""
        connection = Connection(self.settings, self.password)
        try:
            while not self._stop.is_set():
                if ledger.error is not None:  # its first failed write (a disk filling up): no new recipient
                    raise SendError(f"database: {ledger.error}")
                subscriber = work.take()
                if subscriber is None:
                    return
                key = address_key(subscriber.email)
                if _identity(path) != self._database:
                    work.give_back(subscriber)
                    raise DatabaseProblem(
                        f"the database {path} was removed or replaced during the send: stopped, "
                        f"so that no one is mailed twice from an empty ledger; put it back and "
                        f"run again to resume"
                    )
                if not self._deliver(ledger, connection, factory, key, subscriber):
                    work.give_back(subscriber)  # this connection gave up: another worker, or the next run
                    return
        except DigestError as exc:
            self._stop_run(exc)
        except sqlite3.Error as exc:
            self._stop_run(SendError(f"database: {exc}"))
        except OSError as exc:
            self._stop_run(SendError(redact(f"{exc.strerror or exc}")))
        except (
            Exception
        ) as exc:  # a bug or an input nobody foresaw: one line and a stopped run, never a thread's traceback
            self._stop_run(SendError(f"{type(exc).__name__}: {redact(str(exc))}"))
        finally:
            connection.close()
            done.set()

    def _stop_run(self, error: DigestError) -> None:
        with self._lock:
            if self._fatal is None:  # the first cause, not what it set off in the other workers
                self._fatal = error
        self._stop.set()

    def _deliver(
        self, ledger: Ledger, connection: Connection, factory: MessageFactory, key: str, subscriber: Subscriber
    ) -> bool:
        """Try one recipient up to max_attempts times; False when this worker's connection keeps failing."""
        message_id = factory.message_id(subscriber.email)
        try:
            message = factory.copy(subscriber.email, subscriber.name, message_id)
        except Unmailable as exc:
            self._record(ledger, key, DeliveryStatus.FAILED, f"not sent: {exc}")
            return True
        attempts = self.settings.max_attempts
        dropped = 0
        for attempt in range(1, attempts + 1):
            if self._stop.is_set() or ledger.error is not None:
                return True  # left pending (or as recorded) for the next run
            marked: Future | None = None
            reply: str | None = None
            try:
                if connection.smtp is None:
                    connection.open()
                marked = ledger.sending(key, message_id)  # committed while MAIL and RCPT go out
                reply = connection.transact(factory.sender, subscriber.email, message, ready=marked.result)
            except (Refused, OSError, smtplib.SMTPException) as exc:
                problem: Exception | None = exc
                if not isinstance(exc, (Refused, smtplib.SMTPNotSupportedError)):
                    connection.close()  # dropped or timed out: whatever comes next needs a new connection
            else:
                problem = None
            if marked is not None and not marked.result():
                return True  # sent or settled meanwhile (unsubscribed): never twice, and nothing to record
            if problem is None:
                assert reply is not None  # ready() said yes, and the DATA was answered
                self._record(ledger, key, DeliveryStatus.SENT, reply)
                return True
            if isinstance(problem, Refused):
                if problem.code < 500:
                    self._record(ledger, key, DeliveryStatus.PENDING, str(problem))
                elif problem.stage == "MAIL":
                    self._record(ledger, key, DeliveryStatus.PENDING, str(problem))
                    raise SendError(f"the server refused the sender {factory.sender}: {problem}") from None
                else:
                    self._record(ledger, key, DeliveryStatus.FAILED, str(problem), bounced=problem.stage == "RCPT")
                    return True
            elif isinstance(problem, smtplib.SMTPNotSupportedError):
                self._record(ledger, key, DeliveryStatus.FAILED, redact(str(problem)))
                return True
            else:  # dropped, timed out, refused to connect (closed above)
                dropped += 1
                said = (
                    str(problem)
                    if isinstance(problem, Unreachable)
                    else f"connection: {redact(str(problem) or type(problem).__name__)}"
                )
                self._record(ledger, key, DeliveryStatus.PENDING, said)
                if dropped >= attempts:
                    return False
            if attempt < attempts:
                self.sleep(backoff(attempt, self.settings.backoff))
        return True

    def _record(self, ledger: Ledger, key: str, status: str, reply: str, *, bounced: bool = False) -> None:
        reply = redact_printed(reply)  # outside text was redacted where it entered (_text, the exceptions above)
        if status == DeliveryStatus.SENT:
            ledger.sent(key, reply)
        else:
            ledger.outcome(key, status, reply, bounced=bounced)
        with self._lock:
            if status in self._counts:
                self._counts[status] += 1
            if status == DeliveryStatus.FAILED:
                self._failures.append((key, reply))
            elif status == DeliveryStatus.PENDING:
                self._last_error = reply
            if self.on_result and status != DeliveryStatus.PENDING:
                self.on_result(key, status)
