"""An in-memory backend for tests: the subscribers of subscribers.csv, "delivered" into a list, with the same
ledger as SMTP, so that a test of the send use case needs no server. Not offered by --backend."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar

import sqlite_utils

from digest import store
from digest.models import DeliveryStatus
from digest.send.base import SendPlan, SendReport
from digest.send.list_backend import ListBackend
from digest.settings.subscribers import address_key


@dataclass(frozen=True)
class MemorySettings:
    """No settings: there is nothing to connect to."""


@dataclass(frozen=True)
class Delivered:
    issue: str
    email: str
    message: bytes


class MemoryBackend(ListBackend):
    name = "memory"
    Settings = MemorySettings
    listed = False
    outbox: ClassVar[list[Delivered]] = []  # every message delivered by any instance, in order
    refuse: ClassVar[set[str]] = set()  # addresses whose delivery fails (as a 5xx to the message would)

    def deliver(self, db: sqlite_utils.Database, plan: SendPlan) -> SendReport:
        started = time.perf_counter()
        now = datetime.now(UTC)
        factory = self.message_factory(plan)
        by_key = {address_key(subscriber.email): subscriber for subscriber in plan.recipients}
        resent = self.start(db, plan, now)
        report = SendReport(issue=plan.issue, backend=self.name, resent=resent)
        for key in store.delivery_keys(db, plan.issue, DeliveryStatus.PENDING):
            subscriber = by_key[key]
            message_id = factory.message_id(subscriber.email)
            store.mark_sending(db, plan.issue, key, message_id, now)
            if subscriber.email in self.refuse:
                store.mark_delivery(db, plan.issue, key, DeliveryStatus.FAILED, "554 refused in memory", now)
                report.failed += 1
                report.failures.append((key, "554 refused in memory"))
                continue
            self.outbox.append(
                Delivered(plan.issue, subscriber.email, factory.copy(subscriber.email, subscriber.name, message_id))
            )
            store.mark_delivery(db, plan.issue, key, DeliveryStatus.SENT, "250 delivered in memory", now)
            report.sent += 1
            if self.on_result:
                self.on_result(key, DeliveryStatus.SENT)
        report.complete = store.finish_deliveries(db, plan.issue, now)
        report.seconds = time.perf_counter() - started
        return report
