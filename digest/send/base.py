"""The delivery backend's base class, with every operation a send needs, and the records of a send: its plan and report.

Apart from the backends and the registry, so that a backend imports its base without importing the package
(whose `__init__` re-exports the registry, which imports the backends). A subclass with a `name` registers
itself here; registry.py imports every backend module, so that each has.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import sqlite_utils

from digest import store
from digest.errors import SetupError
from digest.models import Draft, IssueStatus, RenderedIssue
from digest.settings.sections import read_section
from digest.settings.subscribers import Subscriber

if TYPE_CHECKING:
    from digest.errors import ConfigError
    from digest.issue.checks import CheckReport
    from digest.settings.config import Config
    from digest.settings.yamlfile import MappingReader

DEFAULT = "smtp"  # the backend of `digest send` and `digest run` without --backend


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
            later = ", ".join(name for name, backend in _REGISTRY.items() if backend.sends_later)
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


def check_backend(db: sqlite_utils.Database, issue_id: str, name: str) -> None:
    """An issue begun with another backend cannot be finished with this one: that could mail people twice."""
    issue = store.get_issue(db, issue_id) or {}
    if issue.get("backend") not in (None, name):
        raise SetupError(f"{issue_id} was handed to {issue['backend']}; finish it with --backend {issue['backend']}")
