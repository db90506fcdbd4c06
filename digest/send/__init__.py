"""Delivery backends: one base class with every operation a send needs, and a registry of them by name.

    Backend                        done, plan, question, html_bytes, dry_run, send_test, deliver, describe
    └── ListBackend                    mails subscribers.csv itself, one ledger row per subscriber
        ├── smtp.SmtpBackend           over SMTP
        └── memory.MemoryBackend       into a list in memory (tests; not offered by --backend)
    buttondown.ButtondownBackend       hands the email to Buttondown, which has its own list

A backend is a module of this package that defines a subclass with a `name` and a `Settings` dataclass
(its section of feeds.yaml): `registry()` finds it, `--backend` offers it, config reads its section. No
other module names a backend. The send use case (sending.py) calls only these methods.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import sqlite_utils

from digest import store
from digest.errors import SetupError
from digest.models import DeliveryStatus, Draft, IssueStatus, RenderedIssue
from digest.settings.sections import read_section
from digest.settings.subscribers import Subscriber, address_key, read_subscribers

if TYPE_CHECKING:
    from digest.errors import ConfigError
    from digest.issue.checks import CheckReport
    from digest.settings.config import Config
    from digest.settings.yamlfile import MappingReader

DEFAULT = "smtp"  # the backend of `digest send` and `digest run` without --backend
DRY_RUN_SAMPLES = 3


@dataclass
class SendPlan:
    """What a send would do, for the confirmation question; nothing is written until the send."""

    issue: str
    backend: str
    draft: Draft | None = None
    done: str | None = None  # why there is nothing to do
    recipients: list[Subscriber] = field(default_factory=list)  # list backends: still to be mailed
    already: int = 0  # subscribers an earlier, interrupted run already mailed
    not_mailed: dict[str, int] = field(default_factory=dict)  # why others are not: unsubscribed, bounced, failed
    problems: list[ConfigError] = field(default_factory=list)  # subscribers.csv rows skipped
    listed: list[Subscriber] = field(default_factory=list)  # subscribers.csv's rows, recorded when the send begins
    warnings: list[str] = field(default_factory=list)  # what a real send would refuse, told by a dry run
    draft_text: str = ""  # the draft as sent: a resumed send sends what the first subscribers got
    snapshot_note: str | None = None  # the draft file changed since the send began
    check: CheckReport | None = None  # what the checks found (none for a resumed send: its draft is fixed)
    rendered: RenderedIssue | None = None  # the email, rendered once for the size check and the send
    html_bytes: int = 0  # its HTML as the largest copy a subscriber gets

    def ready(self) -> tuple[Draft, RenderedIssue]:
        """The draft and its email, which every plan with something to do has."""
        if self.draft is None or self.rendered is None:
            raise RuntimeError(f"{self.issue}: no draft in this plan ({self.done or 'not made'})")
        return self.draft, self.rendered


@dataclass
class SendReport:
    issue: str
    backend: str
    done: str | None = None  # nothing was to be done, and why
    sent: int = 0
    failed: int = 0  # permanently refused (5xx): not retried
    pending: int = 0  # still to send: retries ran out on 4xx or dropped connections; a re-run resumes
    resent: int = 0  # left "sending" by an interrupted run, so sent again (the possible duplicates)
    complete: bool = False  # the issue is now `sent`
    remote_id: str | None = None  # the email's id at a backend that keeps it (Buttondown)
    remote_status: str | None = None  # "draft" or "about_to_send"
    failures: list[tuple[str, str]] = field(default_factory=list)  # (address, reply) of this run's permanent failures
    returned_to_draft: bool = False  # nothing was delivered, so the issue is a draft again (editable, rebuildable)
    last_error: str | None = None  # why rows are still pending
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)  # what happened, for the person running it (Backend.describe)

    @property
    def exit_code(self) -> int:
        """75 (try again later) while deliveries are pending, or when nothing could be delivered yet."""
        return 75 if self.pending or self.returned_to_draft else 0


_REGISTRY: dict[str, type[Backend]] = {}


class Backend(ABC):
    """What a delivery backend does. A subclass with a `name` registers itself."""

    name: ClassVar[str]
    Settings: ClassVar[type]  # its section of feeds.yaml, read by settings.read_section
    listed: ClassVar[bool] = True  # offered by --backend
    sends_later: ClassVar[bool] = False  # can create the email first and send it later (--send-now sends now)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            _REGISTRY[cls.name] = cls

    def __init__(self, config: Config, *, send_now: bool = False, on_result: Callable[[str, str], None] | None = None):
        """Reads the backend's secrets now, so that a missing one stops the command before any question or write."""
        if send_now and not self.sends_later:
            later = ", ".join(name for name, backend in registry().items() if backend.sends_later)
            raise SetupError(
                f"--send-now is for backends that create the email first ({later}); {self.name} always sends"
            )
        self.config, self.send_now, self.on_result = config, send_now, on_result
        self.settings = config.backends[self.name]

    @classmethod
    def read_settings(cls, reader: MappingReader | None, warnings: list[str], environ: Mapping[str, str]) -> Any:
        """This backend's section of feeds.yaml (defaults when it is absent)."""
        return read_section(reader, cls.Settings, warnings)

    def done(self, db: sqlite_utils.Database, issue_id: str) -> str | None:
        """Why the issue needs no sending, or None."""
        check_backend(db, issue_id, self.name)
        issue = store.get_issue(db, issue_id) or {}
        if issue.get("status") == IssueStatus.SENT:
            return f"{issue_id}: already sent ({issue['backend']}, {issue['sent_at']}), nothing to do"
        return None

    def plan(self, db: sqlite_utils.Database, plan: SendPlan, *, dry_run: bool) -> None:  # noqa: B027 - optional
        """Fill in who is to be mailed (a backend with its own list has nothing to add)."""

    def forget_unanswered(self, db: sqlite_utils.Database, issue_id: str) -> None:  # noqa: B027 - optional
        """--force: forget a request whose answer never came, so that this send starts afresh (a backend
        that keeps no such request has nothing to forget)."""

    @abstractmethod
    def question(self, plan: SendPlan) -> str:
        """The confirmation question, naming who gets it."""

    @abstractmethod
    def html_bytes(self, plan: SendPlan) -> int:
        """The size of the largest HTML a subscriber gets, against Gmail's clipping limit."""

    @abstractmethod
    def dry_run(self, plan: SendPlan, directory: Path) -> list[Path]:
        """Write what would be sent into `directory` (private: it may hold addresses), sending nothing."""

    def send_test(self, plan: SendPlan, address: str) -> str:
        """One copy to one address, recording nothing; returns what the server answered."""
        raise SetupError(
            f"--to: the {self.name} backend cannot send a test copy; use a backend that mails "
            f"itself (--backend {DEFAULT})"
        )

    @abstractmethod
    def deliver(self, db: sqlite_utils.Database, plan: SendPlan) -> SendReport:
        """Deliver the rendered issue, recording progress in the database so that a re-run resumes."""

    @abstractmethod
    def describe(self, report: SendReport, plan: SendPlan) -> list[str]:
        """What happened, in lines for the person running digest."""


def registry() -> dict[str, type[Backend]]:
    """Every backend by name: the modules of this package are imported (once), and their classes register."""
    if not _DISCOVERED:
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
        _DISCOVERED.append(True)
    return _REGISTRY


_DISCOVERED: list[bool] = []


def check_backend(db: sqlite_utils.Database, issue_id: str, name: str) -> None:
    """An issue begun with another backend cannot be finished with this one: that could mail people twice."""
    issue = store.get_issue(db, issue_id) or {}
    if issue.get("backend") not in (None, name):
        raise SetupError(f"{issue_id} was handed to {issue['backend']}; finish it with --backend {issue['backend']}")


def backend_class(name: str | None, *, listed_only: bool = False) -> type[Backend]:
    """The backend of this name (default: DEFAULT); `listed_only`, as the command line asks: not one kept for
    tests (the in-memory one would mark an issue sent without mailing anyone)."""
    name = name or DEFAULT
    backends = registry()
    if name not in backends or (listed_only and not backends[name].listed):
        # sorted: the registry's order is whichever backend module was imported first
        listed = ", ".join(sorted(key for key, backend in backends.items() if backend.listed))
        raise SetupError(f"--backend: {name!r} is not one of {listed}")
    return backends[name]


class ListBackend(Backend):
    """A backend that mails the subscribers of subscribers.csv itself, recording each delivery in the ledger."""

    def __init__(self, config: Config, *, send_now: bool = False, on_result: Callable[[str, str], None] | None = None):
        from digest.send.unsubscribe import UnsubscribeLinks

        super().__init__(config, send_now=send_now, on_result=on_result)
        self.links = UnsubscribeLinks.for_newsletter(config.newsletter)  # its secret, checked before any write

    def plan(self, db: sqlite_utils.Database, plan: SendPlan, *, dry_run: bool) -> None:
        """Who is still to be mailed: the active subscribers of the database and of subscribers.csv, not
        already mailed or failed for this issue. The database's unsubscribe, bounce or complaint wins over
        the file; a row deleted from the file is no longer mailed (unless the address also joined otherwise).
        Nothing is written here (a dry run writes nothing): `deliver` records the file's rows. With nobody to
        mail and nothing begun, there is nothing to do: an issue "sent" to nobody would use up its posts (a
        dry run still shows a sample)."""
        path = self.config.subscribers_path
        plan.listed, plan.problems = read_subscribers(path) if path.exists() else ([], [])
        suppressed = store.suppressions(db)
        sent = store.delivery_keys(db, plan.issue, DeliveryStatus.SENT)
        failed = store.delivery_keys(db, plan.issue, DeliveryStatus.FAILED)
        listed = set()
        for subscriber in plan.listed:
            key = address_key(subscriber.email)
            listed.add(key)
            self._consider(plan, key, subscriber, suppressed.get(key, subscriber.status), sent, failed)
        for key, email, name, status, source in store.subscriber_rows(db):
            if key not in listed:
                if source == "csv" and status == "active":
                    status = f"no longer in {path.name}"
                self._consider(plan, key, Subscriber(email=email, name=name), status, sent, failed)
        if not plan.recipients and not dry_run and not store.delivery_counts(db, plan.issue):
            plan.done = (
                f"{plan.issue}: nobody to mail, no active subscriber in the database or in {path.name}; "
                f"nothing sent, nothing recorded"
            )

    @staticmethod
    def _consider(
        plan: SendPlan, key: str, subscriber: Subscriber, status: str, sent: set[str], failed: set[str]
    ) -> None:
        reason = None if status == "active" else status
        if reason is None and key in failed:
            reason = "failed"
        if reason:
            plan.not_mailed[reason] = plan.not_mailed.get(reason, 0) + 1
        elif key in sent:
            plan.already += 1
        else:
            plan.recipients.append(subscriber)

    def start(self, db: sqlite_utils.Database, plan: SendPlan, now: datetime) -> int:
        """Before the first message: subscribers.csv's rows recorded in the database, and each recipient's
        ledger row pending (see store.start_deliveries). Returns how many rows a killed run left `sending`."""
        store.record_subscribers(db, plan.listed, "csv", now, whole=True)
        keys = (address_key(subscriber.email) for subscriber in plan.recipients)
        return store.start_deliveries(db, plan.issue, self.name, keys, now)

    def question(self, plan: SendPlan) -> str:
        return f"Send {plan.issue} “{plan.ready()[1].subject}” to {len(plan.recipients):,} subscribers?"

    def html_bytes(self, plan: SendPlan) -> int:
        from digest.issue.render import personalize
        from digest.send.unsubscribe import longest_url

        html = personalize(
            plan.ready()[1].html, unsubscribe_url=longest_url(self.config.newsletter), name="", html=True
        )
        return len(html.encode("utf-8"))

    def dry_run(self, plan: SendPlan, directory: Path) -> list[Path]:
        """A few complete .eml files, for the first subscribers still to be mailed (or a sample reader)."""
        factory = self.message_factory(plan)
        samples = plan.recipients[:DRY_RUN_SAMPLES] or [
            Subscriber(email="subscriber@example.com", name="Sample Reader")
        ]
        paths = []
        for number, subscriber in enumerate(samples, 1):
            path = directory / f"{number:02d}-{re.sub(r'[^A-Za-z0-9@._-]', '_', subscriber.email)}.eml"
            path.unlink(missing_ok=True)
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as stream:
                stream.write(factory.copy(subscriber.email, subscriber.name, factory.message_id(subscriber.email)))
            paths.append(path)
        return paths

    def message_factory(self, plan: SendPlan):
        from digest.send.message import MessageFactory

        return MessageFactory(plan.ready()[1], self.config.newsletter, self.links, plan.issue)

    def describe(self, report: SendReport, plan: SendPlan) -> list[str]:
        notes = [f"{plan.already:,} had it already"] if plan.already else []
        notes += [f"{count:,} {reason}" for reason, count in sorted(plan.not_mailed.items())]
        if report.resent:
            notes.append(f"{report.resent} in flight when the last run stopped, sent again")
        lines = [
            f"send {report.issue} via {self.name}: {report.sent:,} sent, {report.failed:,} failed, "
            f"{report.pending:,} pending in {report.seconds:.1f} s" + (f" ({'; '.join(notes)})" if notes else "")
        ]
        lines += [f"  failed: {address}: {reply}" for address, reply in report.failures]
        if report.returned_to_draft:
            lines.append(
                f"  nothing was delivered, {report.issue} is a draft again; run again later. "
                f"Last error: {report.last_error}"
            )
        elif report.pending:
            lines.append(f"  still pending, last error: {report.last_error}; run again later to resume")
        return lines
