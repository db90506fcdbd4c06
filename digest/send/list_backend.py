"""The base of the backends that mail the subscribers of subscribers.csv themselves (smtp, memory): who is
still to be mailed, the ledger's first rows, the size of the largest copy, a dry run's .eml files.

Apart from base.py because only these backends need the subscriber list, the messages and the signed links.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import sqlite_utils

from digest import store
from digest.issue.render import personalize
from digest.issue.unsubscribe_link import longest_url
from digest.models import DeliveryStatus
from digest.send.base import Backend, SendPlan, SendReport
from digest.send.message import MessageFactory
from digest.send.unsubscribe import UnsubscribeLinks
from digest.settings.subscribers import Subscriber, address_key, read_subscribers

if TYPE_CHECKING:
    from digest.settings.config import Config

DRY_RUN_SAMPLES = 3


class ListBackend(Backend):
    """A backend that mails the subscribers of subscribers.csv itself, recording each delivery in the ledger."""

    def __init__(self, config: Config, *, send_now: bool = False, on_result: Callable[[str, str], None] | None = None):
        super().__init__(config, send_now=send_now, on_result=on_result)
        self.links = UnsubscribeLinks.for_newsletter(config.newsletter)  # its secret, checked before any write

    def plan(self, db: sqlite_utils.Database, plan: SendPlan, *, dry_run: bool) -> None:
        """Who is still to be mailed: the active subscribers of the database and of subscribers.csv, not
        already mailed or failed for this issue. The database's unsubscribe, bounce or complaint wins over
        the file, and so does a confirmation on the web (the file has no dates: store.record_subscribers); a
        row deleted from the file is no longer mailed (unless the address also joined otherwise). Nothing is
        written here (a dry run writes nothing): `deliver` records the file's rows. With nobody to mail and
        nothing begun, there is nothing to do: an issue "sent" to nobody would use up its posts (a
        dry run still shows a sample)."""
        path = self.config.subscribers_path
        plan.listed, plan.problems = read_subscribers(path) if path.exists() else ([], [])
        kept = store.kept_over_lists(db)  # an unsubscribe, bounce or complaint, and a web confirmation
        sent = store.delivery_keys(db, plan.issue, DeliveryStatus.SENT)
        failed = store.delivery_keys(db, plan.issue, DeliveryStatus.FAILED)
        listed = set()
        for subscriber in plan.listed:
            key = address_key(subscriber.email)
            listed.add(key)
            self._consider(plan, key, subscriber, kept.get(key, subscriber.status), sent, failed)
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

    def message_factory(self, plan: SendPlan) -> MessageFactory:
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
