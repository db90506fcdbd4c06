"""Sending an issue, whatever the backend: plan, check, confirm, deliver; and its dry run and test copy.

    plan_send     the draft (or, for a resumed send, the draft as it was when the send began), rendered once,
                  measured against Gmail's clip, and who is to be mailed (the backend's plan)
    send_issue    plan, ask (a callback: the library never reads stdin), keep the draft and a durable receipt,
                  deliver through the backend, describe what happened
    dry_run_issue / send_test_copy     what would be sent, or one copy to one address, recording nothing

The receipt (drafts/<issue>.receipt.json) outlives a lost or replaced database: a send or build of an issue
that it knows of and the database does not is refused (Unrecorded) unless `force`.
"""

from __future__ import annotations

import errno
import json
import shutil
import sqlite3
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils

from digest import store
from digest.errors import CheckFailed, Clipped, Failed, SendError, SetupError, Unrecorded
from digest.issue.checks import check_issue
from digest.issue.draft import draft_path, parse_draft, write_durably
from digest.issue.render import GMAIL_CLIP_BYTES, render_issue
from digest.lock import hold
from digest.models import DeliveryStatus, Draft, IssueStatus
from digest.send.approval import draft_hash
from digest.send.base import Backend, SendPlan, SendReport, check_backend
from digest.send.registry import backend_class
from digest.settings.config import Config
from digest.settings.subscribers import is_valid_email
from digest.settings.yamlfile import read_text_file
from digest.urls import clean_url, url_key

RECEIPT = ".receipt.json"
NO_DRAFT = "no draft for this week (run `digest build` first)"
ROOM_BASE = 2_000_000  # bytes a send writes whatever its size: the draft kept, the issue's rows, WAL pages
ROOM_PER_RECIPIENT = 512  # a ledger row, its index entry and their copies in the WAL
SQLITE_IOERR, SQLITE_FULL = 10, 13  # "disk I/O error", "database or disk is full": primary result codes


def sending_began(db: sqlite_utils.Database, issue_id: str) -> bool:
    """Whether an earlier run began sending (ledger rows, or an email at a backend): the draft is fixed now."""
    issue = store.get_issue(db, issue_id) or {}
    return issue.get("status") == IssueStatus.SENDING or issue.get("remote_id") is not None


def plan_send(
    config: Config,
    db: sqlite_utils.Database,
    issue_id: str,
    backend: Backend,
    *,
    dry_run: bool = False,
    allow_clipped: bool = False,
    force: bool = False,
    approved_hash: str | None = None,
) -> SendPlan:
    """What a send of the issue would do, reading the draft once and rendering it once.

    An email that Gmail would clip is refused (Clipped) unless `allow_clipped`, a dry run, or a send that
    began with it allowed (it resumes the version its first subscribers got). A send the receipt knows of
    but the database does not is refused (Unrecorded) unless `force`. With `approved_hash` (a run under
    approval: required) only that very draft is sent, its checks' errors accepted by the editor.
    """
    if force and not dry_run:
        backend.forget_unanswered(db, issue_id)
    plan = SendPlan(issue=issue_id, backend=backend.name, done=backend.done(db, issue_id))
    if plan.done:
        return plan
    if not force:
        check_receipts(config, db)
    path = draft_path(config.drafts_dir, issue_id)
    file_text = read_text_file(path, NO_DRAFT)
    kept = (store.get_issue(db, issue_id) or {}).get("sent_draft") if sending_began(db, issue_id) else None
    plan.draft_text = kept if kept is not None else file_text
    plan.draft = parse_draft(path, plan.draft_text)
    if kept is not None and kept != file_text:
        plan.snapshot_note = (
            f"{path} changed since the send began; the rest of the subscribers get the version the first ones got"
        )
    if not plan.draft.items:
        plan.done = f"{issue_id}: {path} has no items, nothing to send"
        return plan
    if kept is None and approved_hash is not None and draft_hash(file_text) != approved_hash:
        raise Failed(f"{path} changed after it was approved: nothing sent; the next run mails a new review copy")
    if kept is None:  # a resumed send mails what its first subscribers got: nothing to check any more
        plan.check = check_issue(config, db, issue_id, draft=plan.draft, size=False)
        if plan.check.errors and dry_run:
            plan.warnings += [f"{finding} (a real send refuses it without --force)" for finding in plan.check.errors]
        elif plan.check.errors and not (force or approved_hash):
            raise CheckFailed(plan.check.refusal(path))
    plan.rendered = render_issue(plan.draft, config.newsletter, config.folder)
    plan.html_bytes = backend.html_bytes(plan)
    if plan.html_bytes > GMAIL_CLIP_BYTES and dry_run:
        plan.warnings.append(
            f"the email is {plan.html_bytes / 1024:.0f} KB of HTML: Gmail would clip it, and a real send "
            f"refuses it without --allow-clipped"
        )
    elif plan.html_bytes > GMAIL_CLIP_BYTES and not (allow_clipped or sending_began(db, issue_id)):
        raise Clipped(
            f"{issue_id}: the email is {plan.html_bytes / 1024:.0f} KB of HTML, and Gmail clips past "
            f"{GMAIL_CLIP_BYTES // 1024} KB, hiding the rest and the unsubscribe link: remove items from "
            f"{path} (or lower max_items in feeds.yaml and build again), or add --allow-clipped "
            f"to send it clipped"
        )
    backend.plan(db, plan, dry_run=dry_run)
    return plan


def send_issue(
    config: Config,
    db: sqlite_utils.Database,
    issue_id: str,
    *,
    backend: str | Backend | None = None,
    confirm: Callable[[str], bool] | None = None,
    send_now: bool = False,
    allow_clipped: bool = False,
    force: bool = False,
    now: datetime | None = None,
    on_result: Callable[[str, str], None] | None = None,
    on_plan: Callable[[SendPlan], None] | None = None,
) -> SendReport:
    """Send the issue through a backend, under the send lock, and say what happened.

    `confirm` gets the question (who will get what) and says whether to go on; without it the send goes on.
    `on_plan` sees the plan first (the rows of subscribers.csv that were skipped, a changed draft). The
    database records each step so that a re-run resumes: see docs/sending.md, "The delivery guarantee".
    """
    with hold(store.database_path(db)):
        return send_locked(
            config,
            db,
            issue_id,
            backend=backend,
            confirm=confirm,
            send_now=send_now,
            allow_clipped=allow_clipped,
            force=force,
            now=now,
            on_result=on_result,
            on_plan=on_plan,
        )


def send_locked(
    config: Config,
    db: sqlite_utils.Database,
    issue_id: str,
    *,
    backend: str | Backend | None,
    confirm: Callable[[str], bool] | None,
    send_now: bool,
    allow_clipped: bool,
    force: bool,
    now: datetime | None,
    on_result: Callable[[str, str], None] | None,
    on_plan: Callable[[SendPlan], None] | None,
    approved_hash: str | None = None,
) -> SendReport:
    """send_issue, for a caller that holds the send lock already (run_week)."""
    chosen = _backend(config, backend, db, issue_id, send_now=send_now, on_result=on_result)
    try:
        plan = plan_send(
            config, db, issue_id, chosen, allow_clipped=allow_clipped, force=force, approved_hash=approved_hash
        )
        if on_plan is not None:
            on_plan(plan)
        if plan.done:
            return SendReport(issue=issue_id, backend=chosen.name, done=plan.done, lines=[plan.done])
        if confirm is not None and not confirm(chosen.question(plan)):
            raise Failed("not confirmed: nothing sent")
        report = _deliver(config, db, plan, chosen, now or datetime.now(UTC))
    except (sqlite3.Error, OSError, SendError) as exc:
        full = no_space(exc)
        if not full and not _disk_failure(exc):
            raise
        raise Failed(_after_full_disk(config, db, issue_id, full)) from None
    report.lines = chosen.describe(report, plan)
    return report


def no_space(exc: BaseException | None) -> bool:
    """Whether the disk was full: SQLite's SQLITE_FULL (or an error raised while handling one, such as a temp
    table that could not be made and then not dropped), ENOSPC or a quota, a backend's error that says so."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, sqlite3.Error) and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == SQLITE_FULL:
            return True
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "database or disk is full" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _disk_failure(exc: BaseException) -> bool:
    """SQLite's SQLITE_IOERR, raised here or by a backend's worker: a write the disk refused (a file size limit,
    a failing disk)."""
    if isinstance(exc, SendError):
        return str(exc).startswith("database: disk I/O error")
    return isinstance(exc, sqlite3.Error) and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == SQLITE_IOERR


def _after_full_disk(config: Config, db: sqlite_utils.Database, issue_id: str, full: bool = True) -> str:
    """One line after a full disk (or, not `full`, a disk that refused a write) stopped a send: the disk named (the
    database's folder), and the issue a draft again when nothing was delivered (its receipt gone), or what is
    left to resume."""
    path = Path(store.database_path(db))
    if full:
        head, advice = f"no space left on the disk of {path.parent} (the database {path.name})", "free some space"
    else:
        head = f"the disk of {path.parent} refused a write to the database {path.name} (disk I/O error)"
        advice = "check that disk (is it full?)"
    try:
        issue = store.get_issue(db, issue_id) or {}
        returned = (
            issue.get("remote_id") is None
            and issue.get("idempotency_key") is None  # a request to Buttondown may have created the email
            and issue.get("status") != IssueStatus.SENT
            and store.return_to_draft_if_undelivered(db, issue_id)
        )
        issue = store.get_issue(db, issue_id) or {}
        counts = store.delivery_counts(db, issue_id)
    except sqlite3.Error:  # not even that could be written
        return f"{head}: {issue_id} may be left sending; {advice} and send again: it resumes"
    if returned or issue.get("status") in (None, IssueStatus.DRAFT):
        draft_path(config.drafts_dir, issue_id, RECEIPT).unlink(missing_ok=True)
        return f"{head}: nothing was delivered, {issue_id} is a draft again; {advice} and send again"
    delivered, in_flight = counts.get(DeliveryStatus.SENT, 0), counts.get(DeliveryStatus.SENDING, 0)
    line = f"{head}: {delivered:,} delivered before it stopped; {advice} and send again: it resumes"
    if in_flight:  # the server may have accepted them, the ledger could not record it: at most one a connection
        verb, when = "was" if in_flight == 1 else "were", "the disk filled" if full else "the disk refused the write"
        line += f"; {in_flight:,} {verb} in flight when {when}: a resume sends them again"
    return line


def _deliver(config: Config, db: sqlite_utils.Database, plan: SendPlan, backend: Backend, now: datetime) -> SendReport:
    """First the draft is kept in the database (with which posts the email holds) and a durable receipt is
    written next to it; the receipt follows the issue's state when the backend is done, or stops."""
    draft, _ = plan.ready()
    _check_room(db, plan)
    store.ensure_issue(db, plan.issue, draft.subject, now)
    offered = store.offered_posts(db, plan.issue)
    store.begin_send(db, plan.issue, plan.draft_text, posts_in(draft, offered), config.newsletter.list_identifier)
    receipt = draft_path(config.drafts_dir, plan.issue, RECEIPT)
    _write_receipt(receipt, db, plan.issue, plan.backend, now, status=IssueStatus.SENDING)
    try:
        return backend.deliver(db, plan)
    finally:
        issue = store.get_issue(db, plan.issue) or {}
        if issue.get("status") in (IssueStatus.SENDING, IssueStatus.SENT):
            _write_receipt(receipt, db, plan.issue, plan.backend, now, status=issue["status"])
        else:
            receipt.unlink(missing_ok=True)  # nothing was delivered: a draft again


def _check_room(db: sqlite_utils.Database, plan: SendPlan) -> None:
    """Refuse a send before its first write when the database's disk has no room for its ledger: a disk that fills
    up after the issue is marked sending may not even take the write that makes it a draft again."""
    folder = Path(store.database_path(db)).parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # not knowable here: the writes will say
    need = ROOM_BASE + ROOM_PER_RECIPIENT * len(plan.recipients)
    if free >= need:
        return
    head = (
        f"no space left on the disk of {folder} (the database {Path(store.database_path(db)).name}): "
        f"{free / 1e6:.1f} MB free, and a send to {len(plan.recipients):,} needs about {need / 1e6:.0f} MB"
    )
    if sending_began(db, plan.issue):  # a resume: what the ledger says, never "draft"
        delivered = store.delivery_counts(db, plan.issue).get(DeliveryStatus.SENT, 0)
        raise Failed(
            f"{head}; nothing more was sent: {delivered:,} delivered, {plan.issue} is still being sent; "
            f"free space on {folder} and run again to resume"
        )
    raise Failed(f"{head}; nothing was sent, {plan.issue} is still a draft: free some space and send again")


def dry_run_issue(
    config: Config,
    db: sqlite_utils.Database,
    issue_id: str,
    *,
    backend: str | Backend | None = None,
    send_now: bool = False,
) -> tuple[SendPlan, list[Path]]:
    """Write what would be sent to drafts/<issue>.dry-run/ (readable by its owner only: it may hold addresses and
    signed unsubscribe links), sending nothing; no files when there is nothing to send."""
    chosen = _backend(config, backend, db, issue_id, send_now=send_now)
    plan = plan_send(config, db, issue_id, chosen, dry_run=True)
    if plan.done:
        return plan, []
    directory = draft_path(config.drafts_dir, issue_id, ".dry-run")
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    return plan, chosen.dry_run(plan, directory)


def send_test_copy(config: Config, issue_id: str, address: str, *, backend: str | Backend | None = None) -> str:
    """One copy of the issue to one address, recording nothing; returns what the server answered."""
    if not is_valid_email(address):
        raise SetupError(f"--to: not a valid address: {address!r}")
    chosen = _backend(config, backend)
    path = draft_path(config.drafts_dir, issue_id)
    draft = parse_draft(path, read_text_file(path, NO_DRAFT))
    plan = SendPlan(
        issue=issue_id, backend=chosen.name, draft=draft, rendered=render_issue(draft, config.newsletter, config.folder)
    )
    return chosen.send_test(plan, address)


def _backend(
    config: Config,
    backend: str | Backend | None,
    db: sqlite_utils.Database | None = None,
    issue_id: str = "",
    **options,
) -> Backend:
    """A backend by name (its secrets read now, after checking that the issue was not begun with another), or
    the one given (tests build theirs)."""
    if isinstance(backend, Backend):
        return backend
    kind = backend_class(backend)
    if db is not None:
        check_backend(db, issue_id, kind.name)
    return kind(config, **options)


def _write_receipt(
    path: Path, db: sqlite_utils.Database, issue_id: str, backend: str, now: datetime, *, status: str
) -> None:
    """drafts/<issue>.receipt.json: that this issue began sending (or was sent), and how far it got."""
    try:
        began = json.loads(path.read_text(encoding="utf-8")).get("began")
    except (OSError, ValueError, AttributeError):
        began = None
    issue = store.get_issue(db, issue_id) or {}
    receipt = {
        "issue": issue_id,
        "status": status,
        "backend": backend,
        "began": began or store.iso(now),
        "updated": store.iso(datetime.now(UTC)),
        "delivered": store.delivery_counts(db, issue_id).get(DeliveryStatus.SENT, 0),
        "remote_id": issue.get("remote_id"),
        "database": store.database_path(db),
    }
    write_durably(path, json.dumps(receipt, indent=2) + "\n")


def check_receipts(config: Config, db: sqlite_utils.Database) -> None:
    """Refuse (Unrecorded) when a receipt in the drafts folder, of any issue, says more than the database
    knows: that the issue began sending or was sent when the database has no record of it (it was lost or
    replaced: its empty ledger would mail everyone again, and pick the posts of sent issues again), or that
    more were delivered than the database counts (a backup from before the send was put back)."""
    for path in sorted(config.drafts_dir.glob(f"*{RECEIPT}")):
        issue_id = path.name.removesuffix(RECEIPT)
        issue = store.get_issue(db, issue_id) or {}
        try:
            receipt = json.loads(path.read_text(encoding="utf-8"))
            status, delivered = str(receipt["status"]), int(receipt["delivered"])
            how = f"{status} ({delivered:,} delivered by {receipt['updated']})"
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            status, delivered, how = IssueStatus.SENDING, 0, "sending"
        database = store.database_path(db)
        if not (
            issue.get("status") in (IssueStatus.SENDING, IssueStatus.SENT)
            or issue.get("remote_id")
            or issue.get("sent_draft")
        ):
            problem = f"{database} has no record of it: the database was lost or replaced"
        else:
            counted = store.delivery_counts(db, issue_id).get(DeliveryStatus.SENT, 0)
            behind = delivered > counted or (status == IssueStatus.SENT and issue.get("status") != IssueStatus.SENT)
            if not behind:
                continue
            problem = (
                f"{database} records {counted:,} delivered and {issue.get('status')}: it is older than the "
                f"receipt (a backup put back?)"
            )
        raise Unrecorded(
            f"{path} says {issue_id} was {how}, but {problem}. Put back the database that sent it; or, to go on "
            f"from this database (people may get {issue_id} twice), add --force (to build, send or run)"
        )


def posts_in(draft: Draft, offered: list[dict]) -> list[str]:
    """Which offered posts the email holds: by link, or, for link-less items, by title; one post per item, so
    that of two posts sharing a link or a title, the one the editor deleted is not used up with the other."""
    links = Counter(url_key(clean_url(item.url) or item.url) for item in draft.items if item.url)
    titles = Counter(item.title for item in draft.items if not item.url)
    held = []
    for post in offered:
        wanted, key = (links, post["url_key"]) if post["canonical_url"] else (titles, post["title"])
        if wanted[key] > 0:
            wanted[key] -= 1
            held.append(post["id"])
    return held
