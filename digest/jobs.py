"""The weekly job as plain functions, each one command: load_config (feeds.yaml with every backend's section),
build (select → draft → render), run_week (the whole week, as cron runs it) and unsubscribe. Collecting is
collecting.py's, sending is sending.py's.

The CLI calls one of these (or of sending.py) per command and prints the report it returns.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import sqlite_utils

from digest import store
from digest.errors import ConfigError, SetupError
from digest.feeds.collect import CollectReport, FeedReport, collect
from digest.issue.draft import add_posts, draft_path, new_draft, parse_draft, read_draft, write_atomically, write_draft
from digest.issue.holdback import HeldBack, hold_back
from digest.issue.links import fetched_once
from digest.issue.render import WARN_BYTES, personalize, render_issue, size_advice
from digest.issue.selection import new_for_issue
from digest.issue.weeks import current_week, week_dates, week_id
from digest.lock import hold
from digest.models import IssueStatus, RenderedIssue
from digest.send import SendPlan, SendReport, backend_class, check_backend, registry
from digest.send.approval import Decision, approval_started, decide
from digest.send.sending import check_receipts, send_locked, sending_began
from digest.send.unsubscribe import SECRET_ENV, sample_url, signed_address, unsubscribe_secret
from digest.settings import config as config_file
from digest.settings.config import Config
from digest.settings.subscribers import is_valid_email, read_subscriber_export, spreadsheet_safe
from digest.settings.yamlfile import read_text_file

if TYPE_CHECKING:
    from digest.web.publish import PublishReport


def load_config(path: Path | str) -> Config:
    """feeds.yaml read and checked, every backend's section (`smtp:`, `buttondown:`) with it: the settings stage
    knows no backend, so the registry of them is passed in from here (`digest.load_config` is this)."""
    return config_file.load_config(path, backends=registry())


# --- build ---------------------------------------------------------------------------


@dataclass
class BuildReport:
    issue: str
    outcome: str  # "built", "empty", "sent"
    draft: Path | None = None
    html: Path | None = None
    text: Path | None = None
    items: int = 0  # in the draft's email
    new_items: int = 0  # of which this build added
    held_more: int = 0  # in the draft, not in the email: over their feed's max_items
    held_stale: int = 0  # in the draft, not in the email: dated long before the week
    already: int = 0  # new posts not added because the draft holds their link already
    html_bytes: int = 0
    size_warning: str | None = None  # the email is near or past Gmail's clipping limit, and what to do
    advice: str | None = None  # empty: what is stored, why none of it was taken, what to try

    @property
    def counts(self) -> str:
        """ "27 items (3 new since the last build); held back in the draft: 12 over max_items, 2 stale"."""
        line = f"{self.items} items ({self.new_items} new since the last build)"
        held = [f"{self.held_more} over their feed's max_items"] if self.held_more else []
        held += [f"{self.held_stale} stale"] if self.held_stale else []
        if held:
            line += "; held back in the draft: " + ", ".join(held)
        if self.already:
            line += f"; {self.already} new posts whose link the draft already holds"
        return line


def subject_for(config: Config, db: sqlite_utils.Database, issue_id: str) -> str:
    """The subject of a new draft: {number} is the issues sent before this one plus one; {lead} stays in the
    draft, filled in with the first item's title whenever it is rendered (render.resolve_subject)."""
    start, end = week_dates(issue_id)
    number = db.execute(  # issues sent, or handed to a backend that sends them (Buttondown)
        "SELECT count(*) + 1 FROM issues WHERE (status = 'sent' OR remote_id IS NOT NULL) AND id < ?", [issue_id]
    ).fetchone()[0]
    return config.newsletter.subject.format(
        title=config.newsletter.title, issue=issue_id, start=start, end=end, lead="{lead}", number=number
    )


def build(
    config: Config, db: sqlite_utils.Database, issue_id: str, *, now: datetime | None = None, force: bool = False
) -> BuildReport:
    """Write (or update) drafts/<issue>.yaml with the week's posts, then render .html and .txt, under the send
    lock (a build never changes an issue, or its posts, under a send: exit 75 while one runs).

    An existing draft keeps the editor's edits; only posts never offered to it are
    appended, each where `select` placed it. A broken draft raises ConfigError before anything is written.
    """
    with hold(store.database_path(db)):
        return _build(config, db, issue_id, now=now or datetime.now(UTC), force=force)


def _build(
    config: Config, db: sqlite_utils.Database, issue_id: str, *, now: datetime, force: bool = False
) -> BuildReport:
    issue = store.get_issue(db, issue_id)
    if issue is not None and issue["status"] != IssueStatus.DRAFT:
        return BuildReport(issue=issue_id, outcome=issue["status"])
    if not force:
        check_receipts(config, db)
    selection = new_for_issue(db, config, issue_id, now)
    fresh = selection.posts
    path = draft_path(config.drafts_dir, issue_id)
    if path.exists():
        draft = read_draft(path)
    elif not fresh:
        return BuildReport(issue=issue_id, outcome="empty", advice=empty_issue_advice(config, db, issue_id, now))
    else:
        draft = new_draft(issue_id, subject_for(config, db, issue_id), list(config.newsletter.sections))
    offered_links = {post["url_key"] for post in store.offered_posts(db, issue_id) if post["url_key"]}
    added = add_posts(draft, fresh, config.newsletter.sections, config.newsletter.tz, offered_links)
    rendered = render_issue(draft, config.newsletter, config.folder)  # first: a broken template changes nothing
    if added.items or added.more or added.stale or not path.exists():
        write_draft(path, draft)
    store.ensure_issue(db, issue_id, draft.subject, now)
    store.add_offered(
        db, issue_id, [(post.id, post.placement, post.feed.url) for post in fresh], now, selection.seen_seq
    )
    html_path, text_path, html_bytes = write_renderings(config, rendered, path)
    report = BuildReport(
        issue=issue_id,
        outcome="built",
        draft=path,
        html=html_path,
        text=text_path,
        items=len(draft.items),
        new_items=added.items,
        held_more=draft.held_more,
        held_stale=draft.held_stale,
        already=added.already,
        html_bytes=html_bytes,
    )
    if html_bytes > WARN_BYTES:
        busiest = sorted(
            (
                (count, feed.name)
                for url, count in store.offered_items_per_feed(db, issue_id).items()
                if (feed := config.feed(url))
            ),
            reverse=True,
        )
        report.size_warning = size_advice(
            draft,
            config.newsletter,
            html_path,
            html_bytes,
            [(name, count) for count, name in busiest[:3]],
            config.folder,
        )
    return report


def empty_issue_advice(config: Config, db: sqlite_utils.Database, issue_id: str, now: datetime) -> str:
    """Why an issue found no post, for a user who sees posts stored: from which weeks they are, why they were
    not taken (a first issue takes only its own week; the rest went out or were passed over before), and the
    newest week not sent that has posts, to build instead: never one before the last issue sent (a back issue
    out of order); after one, new posts come from collecting."""
    tz = config.newsletter.tz
    count, oldest, newest = db.execute(
        "SELECT count(*), min(published_at), max(published_at) FROM posts WHERE published_at <= ?", [store.iso(now)]
    ).fetchone()
    if not count:
        return "no posts stored yet (digest collect)"
    first, last = (week_id(store.from_iso(moment).astimezone(tz).date()) for moment in (oldest, newest))
    weeks = f"all from {first}" if first == last else f"from {first} to {last}"
    advice = f"{count} post{'s' if count > 1 else ''} stored, {weeks}, none from this week; "
    last_sent = store.last_sent_issue(db, before=issue_id)
    if last_sent is None:
        advice += "before any issue is sent, an issue takes only its own week's posts"
    else:
        advice += (
            f"after {last_sent['id']}, an issue takes its own week's posts and those collected since "
            f"{last_sent['id']} was built; the others went out or were passed over then"
        )
    sent = {row[0] for row in db.execute("SELECT id FROM issues WHERE status IN ('sending', 'sent')")}
    latest = store.last_sent_issue(db)
    for (moment,) in db.execute(
        "SELECT published_at FROM posts WHERE published_at <= ? ORDER BY published_at DESC", [store.iso(now)]
    ):
        week = week_id(store.from_iso(moment).astimezone(tz).date())
        if latest is not None and week <= latest["id"]:
            break
        if week not in sent and week != issue_id:
            return f"{advice}; try: digest build --week {week}"
    return f"{advice}; digest collect brings new ones"


def write_renderings(config: Config, rendered: RenderedIssue, path: Path) -> tuple[Path, Path, int]:
    """The draft's email next to its YAML, with a sample unsubscribe link, for the editor to look at."""
    unsubscribe = sample_url(config.newsletter)
    html = personalize(rendered.html, unsubscribe_url=unsubscribe, name="", html=True)
    text = personalize(rendered.text, unsubscribe_url=unsubscribe, name="", html=False)
    html_path, text_path = path.with_suffix(".html"), path.with_suffix(".txt")
    write_atomically(html_path, html)
    write_atomically(text_path, text)
    return html_path, text_path, len(html.encode("utf-8"))


# --- the week ---------------------------------------------------------------------------


@dataclass
class WeekReport:
    """What `digest run` did: nothing (already done), or collect, build and send; or, resuming, only send."""

    issue: str
    done: str | None = None  # nothing to do, and why
    resumed: bool = False  # an earlier run began sending it: no collect, no build
    collected: CollectReport | None = None
    built: BuildReport | None = None
    sent: SendReport | None = None
    published: PublishReport | None = None  # with publish: in feeds.yaml, the archive after a complete send
    approval: Decision | None = None  # with approval: required, what was decided (send, or wait for the editor)
    held: list[HeldBack] | None = None  # without approval: the feed items the checks held back from the email

    @property
    def problem(self) -> str | None:
        """What cron must hear about although the week went on: every feed failed; past the approval deadline,
        an issue that cannot go out."""
        if self.approval is not None and self.approval.problem:
            return self.approval.problem
        if self.collected is None or not self.collected.all_failed:
            return None
        if self.sent is None:
            return "every feed failed: nothing was collected"
        return "every feed failed this time: the issue holds only posts collected earlier"

    @property
    def exit_code(self) -> int:
        if self.sent is not None and self.sent.exit_code:
            return self.sent.exit_code
        return 1 if self.problem else 0


def run_week(
    config: Config,
    db: sqlite_utils.Database,
    *,
    now: datetime | None = None,
    backend: str | None = None,
    confirm: Callable[[str], bool] | None = None,
    send_now: bool = False,
    allow_clipped: bool = False,
    force: bool = False,
    on_feed: Callable[[FeedReport], None] | None = None,
    on_result: Callable[[str, str], None] | None = None,
    on_plan: Callable[[SendPlan], None] | None = None,
    on_step: Callable[[WeekReport], None] | None = None,
) -> WeekReport:
    """The weekly job, for cron: collect, build and send the current week, under the send lock.

    Safe to run twice (an issue already sent is left alone) and to interrupt: a send an earlier run began
    is resumed without collecting or building, so its draft does not change. The backend's secrets are
    read, and the receipt checked, before anything is fetched. `on_step` sees the report after each step
    (resumed, collected, built), so that what was done is told even if the send then fails.
    """
    step = on_step or (lambda report: None)
    now = now or datetime.now(UTC)
    report = WeekReport(issue=current_week(now, config.newsletter.tz))
    with hold(store.database_path(db)), fetched_once():  # the hold-back's link check and the send's: one fetch
        kind = backend_class(backend)
        check_backend(db, report.issue, kind.name)
        chosen = kind(config, send_now=send_now)
        report.done = chosen.done(db, report.issue)
        if report.done:
            return report
        if not force:
            check_receipts(config, db)  # before collecting into the draft of a lost send
        report.resumed = sending_began(db, report.issue)
        needs_approval = config.newsletter.approval == "required"
        if report.resumed:
            step(report)
        elif not (needs_approval and approval_started(db, report.issue)):
            report.collected = collect(config, db, now=now, on_feed=on_feed)
            step(report)
            report.built = _build(config, db, report.issue, now=now, force=force)
            step(report)
            if report.built.outcome == "empty":
                return report
            if not needs_approval and not force:  # nobody reviews it: a broken feed item must not stop the week
                report.held = hold_back(config, db, report.issue, now=now)[0]
                step(report)
        if needs_approval and not report.resumed:
            report.approval = decide(config, db, report.issue, now)
            step(report)
            if not report.approval.send:
                return report
        report.sent = send_locked(
            config,
            db,
            report.issue,
            backend=backend,
            confirm=confirm,
            send_now=send_now,
            allow_clipped=allow_clipped,
            force=force,
            now=None,
            on_result=on_result,
            on_plan=on_plan,
            approved_hash=report.approval.approved_hash if report.approval else None,
        )
    if config.publish is not None and report.sent.complete:
        from digest.web.publish import publish

        report.published = publish(config, db, now=now)
    return report


def unsubscribe(
    config: Config, db: sqlite_utils.Database, address_or_token: str, *, now: datetime | None = None
) -> tuple[str, bool]:
    """Record that an address (or the one an unsubscribe token of this newsletter was signed for) is never
    mailed again. The database wins over subscribers.csv. Returns the address and whether it is newly
    unsubscribed."""
    text = address_or_token.strip()
    if "@" in text:
        if not is_valid_email(text):
            raise SetupError(f"not a valid address: {text!r}")
        email = text
    else:
        secret = unsubscribe_secret("checks the unsubscribe tokens")
        signed_for = signed_address(db, secret, config.newsletter.list_identifier, text)
        if signed_for is None:
            raise SetupError(f"{text!r} is neither an address nor a token of this newsletter signed with {SECRET_ENV}")
        email = signed_for
    new = store.suppress(db, email, "unsubscribed", now or datetime.now(UTC), detail="digest unsubscribe")
    return email, new


# --- the list of subscribers ---------------------------------------------------------------


@dataclass
class ImportReport:
    path: Path
    format: str  # digest, buttondown, mailchimp, substack, listmonk, or a plain list
    read: int
    changes: store.SubscriberChanges
    problems: list  # ConfigError for each row skipped


def import_subscribers(db: sqlite_utils.Database, path: Path, *, now: datetime | None = None) -> ImportReport:
    """Add the subscribers of a file: our CSV or an export of Buttondown, Mailchimp, Substack or listmonk (told
    apart by its columns). The database's unsubscribes, bounces and complaints win over the file."""
    found = read_subscriber_export(path)
    changes = store.record_subscribers(db, found.subscribers, "import", now or datetime.now(UTC))
    return ImportReport(path, found.format, len(found.subscribers), changes, found.problems)


EXPORT_COLUMNS = ("email", "name", "status", "source", "joined_at", "consent_at")


def export_subscribers(db: sqlite_utils.Database, stream: TextIO, *, status: str | None = None) -> int:
    """Every subscriber (or those of one status) as CSV, in the columns `import_subscribers` reads back.

    Names and addresses come from strangers (the signup form): a cell a spreadsheet would take for a formula
    (`=HYPERLINK(...)`, `+1-1+cmd@x`) is written behind an apostrophe, which the import takes off again."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    for row in store.subscriber_list(db, status):
        writer.writerow([spreadsheet_safe(row[column] or "") for column in EXPORT_COLUMNS])
        count += 1
    return count


# --- status -----------------------------------------------------------------------------------


@dataclass
class WeekStatus:
    """Where an issue stands (`digest status`; its --json prints these fields as they are)."""

    issue: str
    posts: int  # stored, all weeks
    last_collect: str | None
    failing_feeds: int
    draft: str | None = None  # its path; None before the first build
    advice: str | None = None  # no draft, and a build would find no post: why, and what to do (as build says)
    draft_error: str | None = None  # why the draft cannot be read
    built_at: str | None = None  # None for a draft written by hand
    items: int = 0  # in the email
    held_back: int = 0  # in the draft, not in the email
    held: list[str] = field(default_factory=list)  # of which the checks held back, one line each, with the reason
    errors: int = 0  # found by the checks, links as last fetched
    warnings: int = 0
    links: int = 0  # of the email
    unjudged_links: int = 0  # of which not in the counts: no answer kept (a failed one is not), status fetches none
    approval: str | None = None  # with approval: required: "approved", "void" (edited since) or "not approved"
    approved_at: str | None = None
    reviewed_at: str | None = None  # when the review copy was mailed
    status: str | None = None  # draft, sending, sent; None while there is no issue (nor draft) for the week
    backend: str | None = None
    deliveries: dict[str, int] = field(default_factory=dict)  # per delivery status


def week_status(config: Config, db: sqlite_utils.Database, issue_id: str) -> WeekStatus:
    """Where the week's issue stands: collected, built, checked, approved, sending, sent. The checks run
    without fetching links (their last good answers, within check.cache_hours, count). An issue sent or being
    sent shows the draft it went out with."""
    from digest.issue.checks import check_issue
    from digest.send.approval import draft_hash

    issue = store.get_issue(db, issue_id) or {}
    fetched = db.execute("SELECT max(last_fetched_at), sum(last_error IS NOT NULL) FROM feeds").fetchone()
    facts = WeekStatus(
        issue=issue_id,
        posts=db.execute("SELECT count(*) FROM posts").fetchone()[0],
        last_collect=fetched[0],
        failing_feeds=fetched[1] or 0,
        status=issue.get("status"),
        backend=issue.get("backend"),
        deliveries=dict(sorted(store.delivery_counts(db, issue_id).items())),
    )
    path = draft_path(config.drafts_dir, issue_id)
    text = issue.get("sent_draft") if facts.status != "draft" else None
    if text is None and not path.exists():
        now = datetime.now(UTC)
        if not new_for_issue(db, config, issue_id, now).posts:
            facts.advice = empty_issue_advice(config, db, issue_id, now)
        return facts
    facts.draft, facts.status = str(path), facts.status or "draft"
    try:
        text = text if text is not None else read_text_file(path, "no draft")
        draft = parse_draft(path, text)
    except ConfigError as exc:
        facts.draft_error = str(exc)
        return facts
    facts.built_at, facts.items = issue.get("built_at"), len(draft.items)
    facts.held_back = draft.held_more + draft.held_stale + len(draft.held_checks)
    facts.held = [f"{section}: “{item.title}”: {item.reason or 'held back'}" for section, item in draft.held_checks]
    check = check_issue(config, db, issue_id, draft=draft, fetch=False)
    facts.errors, facts.warnings = len(check.errors), len(check.warnings)
    facts.links, facts.unjudged_links = check.links, check.unjudged
    if config.newsletter.approval == "required":
        approved = issue.get("approved_hash")
        facts.approval = "approved" if approved == draft_hash(text) else "void" if approved else "not approved"
        facts.approved_at, facts.reviewed_at = issue.get("approved_at"), issue.get("reviewed_at")
    return facts


def week_status_lines(facts: WeekStatus) -> list[str]:
    """`digest status`: one line a stage."""
    lines = [
        f"{facts.issue}",
        f"  collected: {facts.posts:,} posts stored; last collect {facts.last_collect or 'never'}"
        + (f", {facts.failing_feeds} feed(s) failing" if facts.failing_feeds else ""),
    ]
    if facts.draft is None and facts.advice:
        return [*lines, f"  built:     no draft: {facts.advice}"]
    if facts.draft is None:
        return [*lines, f"  built:     no draft yet (digest build --week {facts.issue} writes it)"]
    if facts.draft_error:
        return [*lines, f"  built:     the draft cannot be read: {facts.draft_error}"]
    lines.append(
        f"  built:     {facts.built_at or 'by hand'}; {facts.items} items in the email"
        + (f", {facts.held_back} held back" if facts.held_back else "")
        + (f" ({len(facts.held)} held back by the checks)" if facts.held else "")
    )
    lines += [f"    held back: {line}" for line in facts.held]
    unjudged = (
        f"; {facts.unjudged_links} of {facts.links} links not judged: no answer kept (only good ones are, for "
        f"check.cache_hours)"
        if facts.unjudged_links
        else ""
    )
    lines.append(
        f"  checked:   {facts.errors} error(s), {facts.warnings} warning(s) (links as last fetched{unjudged}: "
        f"digest check fetches them)"
    )
    if facts.approval == "approved":
        lines.append(f"  approved:  approved at {facts.approved_at}")
    elif facts.approval == "void":
        lines.append("  approved:  approval void: the draft changed after it")
    elif facts.approval:
        reviewed = f"; review copy mailed at {facts.reviewed_at}" if facts.reviewed_at else ""
        lines.append(f"  approved:  not approved{reviewed}")
    if facts.status in (None, "draft"):
        lines.append("  sent:      not yet")
    else:
        shown = ", ".join(f"{count:,} {name}" for name, count in facts.deliveries.items())
        lines.append(f"  {str(facts.status) + ':':<10} {facts.backend or ''} {shown}".rstrip())
    return lines
