"""SMTP delivery: a few reused connections in parallel, each delivery recorded before the next one is sent.

Each worker thread owns one SMTP connection and pulls recipients from a shared list; one more thread writes
the ledger for all of them (_Ledger), several messages' rows in one transaction. Per recipient a worker has
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

from __future__ import annotations

import base64
import collections
import contextlib
import os
import queue
import smtplib
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlite_utils

from digest import store
from digest.credentials import env_secret, redact, remember_secret
from digest.errors import DatabaseProblem, DigestError, SendError, SetupError
from digest.models import DeliveryStatus
from digest.retry import CONNECTION_REFUSED, LOOKUP_FAILED, NO_SUCH_HOST, TIMED_OUT, backoff, connection_failure
from digest.send import ListBackend, SendPlan, SendReport
from digest.send.message import MessageFactory, Unmailable
from digest.settings.config import Config
from digest.settings.sections import HOUR, setting
from digest.settings.subscribers import Subscriber, address_key
from digest.settings.yamlfile import MappingReader
from digest.urls import LOOPBACK_HOSTS

PASSWORD_ENV = "DIGEST_SMTP_PASSWORD"


@dataclass(frozen=True)
class SmtpSettings:
    host: str = setting("localhost")
    port: int = setting(587, minimum=1, maximum=65535)
    security: str = setting("starttls", choices=("starttls", "ssl", "none"))
    username: str | None = setting(None)
    connections: int = setting(4, minimum=1, maximum=100)  # used in parallel, each reused for many messages
    timeout: float = setting(30.0, above=0, maximum=HOUR)  # seconds, for every connection and command
    max_attempts: int = setting(5, minimum=1, maximum=100)  # per subscriber, for 4xx replies and dropped connections
    backoff: float = setting(1.0, minimum=0, maximum=HOUR)  # seconds before the first retry, doubled (at most 60)

    def check(self, reader: MappingReader) -> None:
        if not self.host.strip():
            raise reader.error("host", "must not be empty (the SMTP server's name or address)")
        if self.security == "none" and self.username and self.host not in LOOPBACK_HOSTS:
            raise reader.error(
                "security",
                f"none with a username would send the password to {self.host} unencrypted: use starttls or ssl",
            )


def _now() -> datetime:
    return datetime.now(UTC)


def _identity(path: str) -> tuple[int, int] | None:
    """Which file the database is: a send must notice that it was deleted or replaced under it."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def smtp_password(settings: SmtpSettings) -> str | None:
    """From the environment only; required when smtp.username is set."""
    password = env_secret(PASSWORD_ENV)
    if settings.username and not password:
        raise SetupError(f"{PASSWORD_ENV} (or {PASSWORD_ENV}_FILE) is not set, and smtp.username is")
    if settings.username and password:  # what AUTH PLAIN and LOGIN send, should a server echo it
        remember_secret(
            *(base64.b64encode(text.encode()).decode() for text in (password, f"\0{settings.username}\0{password}"))
        )
    return password


@dataclass
class Refused(Exception):
    """A non-2xx answer at one stage of a mail transaction."""

    stage: str  # MAIL, RCPT or DATA
    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text} (after {self.stage})"


def _text(reply: bytes | str) -> str:
    """A server's reply as stored and printed: decoded, and without any secret it may echo."""
    return redact(reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply))


_NAME_MISMATCH = (62, 64)  # OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH


def _setup_problem(exc: BaseException, settings: SmtpSettings) -> SendError | None:
    """What no retry can fix when connecting (TLS, certificates, login, a server that refuses us), as the
    SendError that stops the run (exit 1); None for what time may fix (a refused or dropped connection,
    a timeout, a 4xx greeting), which is retried and then left pending (exit 75)."""
    where = f"{settings.host}:{settings.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _NAME_MISMATCH:
            return SendError(
                f"TLS to {where}: {exc.verify_message.rstrip('.')}; set smtp.host to a name the server's "
                f"certificate is for"
            )
        return SendError(f"TLS to {where}: {exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        return SendError(
            f"TLS with {where} failed ({exc.reason or exc}): is smtp.security right for this port? "
            f"(ssl is TLS from the first byte, usually port 465; starttls upgrades a plain "
            f"connection, usually port 587)"
        )
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return SendError(
            f"SMTP login as {settings.username!r} at {where} refused: {exc.smtp_code} {_text(exc.smtp_error)}; "
            f"check smtp.username and {PASSWORD_ENV}"
        )
    if isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code >= 500:
        return SendError(f"{where} refused the session: {exc.smtp_code} {_text(exc.smtp_error)}")
    if isinstance(exc, (smtplib.SMTPNotSupportedError, smtplib.SMTPHeloError)):
        return SendError(f"{where}: {_text(str(exc))}")
    return None


def _tls_port_problem(exc: BaseException, settings: SmtpSettings) -> SendError | None:
    """A server that never greets a plain connection may be waiting for TLS (a port for `security: ssl`):
    without this check, every run would time out and be told to try again later, for ever."""
    if settings.security == "ssl" or not isinstance(exc, (TimeoutError, smtplib.SMTPServerDisconnected)):
        return None
    probe = ssl.create_default_context()
    probe.check_hostname, probe.verify_mode = False, ssl.CERT_NONE  # a handshake only; nothing is sent
    try:
        with (
            socket.create_connection((settings.host, settings.port), timeout=min(settings.timeout, 10)) as raw,
            probe.wrap_socket(raw, server_hostname=settings.host),
        ):
            pass
    except OSError:  # ssl.SSLError included: not TLS either, so time may fix it
        return None
    return SendError(
        f"{settings.host}:{settings.port} waits for TLS from the first byte, and smtp.security is "
        f"{settings.security}: set security: ssl for this port (or use the server's STARTTLS port, usually 587)"
    )


class Unreachable(OSError):
    """A connection that failed in a way a setting may explain (nothing listens, no such host, no answer): retried
    like any dropped connection, and told in words that name the setting."""


def _unreachable(exc: BaseException, settings: SmtpSettings) -> Unreachable | None:
    host, port = settings.host, settings.port
    why = connection_failure(exc)
    if why == CONNECTION_REFUSED:
        return Unreachable(
            f"smtp.port {port} on {host}: nothing listens (connection refused); set smtp.host and smtp.port "
            f"in feeds.yaml"
        )
    if why == NO_SUCH_HOST:
        return Unreachable(f"smtp.host {host}: no such host (DNS); set smtp.host in feeds.yaml")
    if why == LOOKUP_FAILED:
        return Unreachable(f"smtp.host {host}: the name could not be looked up (DNS); check the network and smtp.host")
    if why == TIMED_OUT:
        return Unreachable(
            f"{host} port {port}: no answer within smtp.timeout ({settings.timeout:g} s); check smtp.host and "
            f"smtp.port in feeds.yaml, or raise smtp.timeout"
        )
    return None


class Connection:
    """One SMTP session: opened on first use, reused, reopened after a drop."""

    def __init__(self, settings: SmtpSettings, password: str | None):
        self.settings, self._password = settings, password
        self.smtp: smtplib.SMTP | None = None

    def open(self) -> None:
        """Connect, secure and log in. Raises SendError for what retrying cannot fix, OSError otherwise (Unreachable
        when the failure points at a setting)."""
        try:
            self._open()
        except BaseException as exc:
            self.close()
            problem = _setup_problem(exc, self.settings) or _tls_port_problem(exc, self.settings)
            if problem is not None:
                raise problem from exc
            if isinstance(exc, OSError) and (unreachable := _unreachable(exc, self.settings)):
                raise unreachable from exc
            raise

    def _open(self) -> None:
        s = self.settings
        context = ssl.create_default_context()
        if s.security == "ssl":
            self.smtp = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=context)
        else:
            self.smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
        self.smtp.ehlo()
        if s.security == "starttls":
            if not self.smtp.has_extn("starttls"):
                raise SendError(f"{s.host}:{s.port} does not offer STARTTLS (see smtp.security)")
            self.smtp.starttls(context=context)
            self.smtp.ehlo()
        if s.username:
            if not self.smtp.has_extn("auth"):
                raise SendError(f"{s.host}:{s.port} does not offer AUTH here (see smtp.security and smtp.username)")
            self.smtp.login(s.username, self._password or "")

    def transact(
        self, sender: str, recipient: str, message: bytes, ready: Callable[[], bool] = lambda: True
    ) -> str | None:
        """One MAIL/RCPT/DATA transaction; returns the final reply or raises Refused / OSError. `ready` is asked
        before DATA: when it says no, the transaction is reset and nothing is sent (None)."""
        if self.smtp is None:
            self.open()
        smtp = self.smtp
        assert smtp is not None  # open() connected, or raised
        options = [f"SIZE={len(message)}"] if smtp.has_extn("size") else []
        if not recipient.isascii():
            if not smtp.has_extn("smtputf8"):
                raise smtplib.SMTPNotSupportedError("SMTPUTF8 not supported by server")
            options.append("SMTPUTF8")
        for stage, answer in (
            ("MAIL", lambda: _command(smtp, f"MAIL FROM:<{sender}>{''.join(' ' + option for option in options)}")),
            ("RCPT", lambda: _command(smtp, f"RCPT TO:<{recipient}>")),
            ("DATA", lambda: _data(smtp, message)),
        ):
            if stage == "DATA":
                try:
                    go_ahead = ready()
                except BaseException:
                    self.close()  # never left in the middle of a transaction
                    raise
                if not go_ahead:
                    if not self._reset():
                        self.close()
                    return None
            code, reply = answer()
            if not 200 <= code < 300:
                # RSET after a refused DATA too: refused before its 354, the transaction is still open
                if code == 421 or not self._reset():
                    self.close()
                raise Refused(stage, code, _text(reply))
        return f"{code} {_text(reply)}"

    def _reset(self) -> bool:
        if self.smtp is None:
            return False
        try:
            return self.smtp.rset()[0] == 250
        except (OSError, smtplib.SMTPException):
            return False

    def close(self) -> None:
        if self.smtp is not None:
            try:
                self.smtp.quit()
            except (OSError, smtplib.SMTPException):
                self.smtp.close()
            self.smtp = None


def _command(smtp: smtplib.SMTP, line: str) -> tuple[int, bytes]:
    """MAIL or RCPT with an address as it is: subscribers' addresses are bare addr-specs (subscribers._EMAIL),
    which smtplib's quoteaddr would parse again for each message."""
    smtp.send(f"{line}\r\n".encode())  # UTF-8, which leaves an ASCII line as it is
    return smtp.getreply()


def _data(smtp: smtplib.SMTP, message: bytes) -> tuple[int, bytes]:
    """DATA for a message whose lines already end in CRLF (message.py makes them so): its dots stuffed with
    bytes.replace, which is what smtplib's regular expression does, at a fifteenth of its cost (150 µs a
    26 KB message, a sixth of the sender's CPU)."""
    smtp.send(b"DATA\r\n")
    code, reply = smtp.getreply()
    if code != 354:
        return code, reply
    stuffed = (b"." if message.startswith(b".") else b"") + message.replace(b"\n.", b"\n..")
    smtp.send(stuffed + (b".\r\n" if stuffed.endswith(b"\r\n") else b"\r\n.\r\n"))
    return smtp.getreply()


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


@dataclass(slots=True)
class _Write:
    """One request to the ledger: its statements, and the future its worker may wait on for their commit."""

    statements: Callable[[sqlite_utils.Database], object]
    kept: bool = False  # a `sent`: nobody waits; kept for the next transaction when this one fails
    committed: Future = field(default_factory=Future)


def _closing(db: sqlite_utils.Database) -> None:
    """The statements of the last write asked of the ledger: none; the writer stops after its transaction."""


_MOST_AT_ONCE = 256  # writes in one transaction


class _Ledger:
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
            raise SendError(f"{self.settings.host}:{self.settings.port}: {exc or type(exc).__name__}") from None
        finally:
            connection.close()

    def deliver(self, db: sqlite_utils.Database, plan: SendPlan) -> SendReport:
        started = time.perf_counter()
        issue_id = plan.issue
        factory = self.message_factory(plan)
        resent = self.start(db, plan, _now())  # each recipient's row: pending
        work = _Work(plan.recipients)
        path = store.database_path(db)
        self._database = _identity(path)
        ledger = _Ledger(path, issue_id)
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
            complete = store.finish_deliveries(db, issue_id, _now())
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

    def _wait_for(self, finished: list[threading.Event], ledger: _Ledger) -> KeyboardInterrupt | None:
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

    def _worker(self, path: str, ledger: _Ledger, factory: MessageFactory, work: _Work, done: threading.Event) -> None:
        """One connection's loop. What stops the run (a refused sender, a database that cannot record what
        was sent: disk full, locked) is kept for `deliver` to raise as one line, never a thread's traceback."""
        connection = Connection(self.settings, self.password)
        try:
            while not self._stop.is_set():
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
            self._stop_run(SendError(f"{exc.strerror or exc}"))
        except (
            Exception
        ) as exc:  # a bug or an input nobody foresaw: one line and a stopped run, never a thread's traceback
            self._stop_run(SendError(f"{type(exc).__name__}: {exc}"))
        finally:
            connection.close()
            done.set()

    def _stop_run(self, error: DigestError) -> None:
        with self._lock:
            if self._fatal is None:  # the first cause, not what it set off in the other workers
                self._fatal = error
        self._stop.set()

    def _deliver(
        self, ledger: _Ledger, connection: Connection, factory: MessageFactory, key: str, subscriber: Subscriber
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
            if self._stop.is_set():
                return True
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
                self._record(ledger, key, DeliveryStatus.FAILED, f"{problem}")
                return True
            else:  # dropped, timed out, refused to connect (closed above)
                dropped += 1
                said = (
                    str(problem)
                    if isinstance(problem, Unreachable)
                    else f"connection: {problem or type(problem).__name__}"
                )
                self._record(ledger, key, DeliveryStatus.PENDING, said)
                if dropped >= attempts:
                    return False
            if attempt < attempts:
                self.sleep(backoff(attempt, self.settings.backoff))
        return True

    def _record(self, ledger: _Ledger, key: str, status: str, reply: str, *, bounced: bool = False) -> None:
        reply = redact(reply)  # every reply and error the ledger keeps, whatever path it came by
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
