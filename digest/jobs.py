"""The weekly job's steps as plain functions: collect (fetch → parse → store) and build (select → draft → render).

The CLI is a thin layer over these; tests and the demo call them directly.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import re
import sqlite3
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import httpx
import sqlite_utils

from . import store
from .collect import FetchRequest, FetchResult, configured_private, fetch_all
from .config import (CollectSettings, Config, ConfigError, FeedConfig, Subscriber, address_key, is_valid_email,
                     read_subscribers, read_text_file)
from .draft import (add_posts, draft_path, new_draft, parse_draft, read_draft, write_atomically, write_draft,
                    write_durably)
from .models import Draft, ParsedFeed, RenderedIssue
from .render import GMAIL_CLIP_BYTES, WARN_BYTES, personalize, render_issue, size_advice
from .select import new_for_issue
from .urls import clean_url, url_key
from .send import Backend, Clipped, SendReport, SetupError, Unrecorded, env_secret
from .send.buttondown import ButtondownBackend, request_body
from .send.message import MessageFactory
from .send.smtp import SmtpBackend
from .send.unsubscribe import SECRET_ENV, UnsubscribeLinks, longest_url, sample_url, verify_token
from .weeks import week_dates


@dataclass
class FeedReport:
    name: str
    url: str
    outcome: str  # "new", "unchanged", "failed"
    new_posts: int = 0
    http_status: int | None = None
    error: str | None = None
    warning: str | None = None  # the feed worked, but something about it needs the editor's eye


@dataclass
class CollectReport:
    feeds: list[FeedReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[FeedReport]:
        return [feed for feed in self.feeds if feed.outcome == "failed"]

    @property
    def new_posts(self) -> int:
        return sum(feed.new_posts for feed in self.feeds)

    @property
    def all_failed(self) -> bool:
        return bool(self.feeds) and len(self.failed) == len(self.feeds)


def collect(config: Config, db: sqlite_utils.Database, *, now: datetime | None = None,
            settings: CollectSettings | None = None, on_feed: Callable[[FeedReport], None] | None = None,
            transport: httpx.AsyncBaseTransport | None = None) -> CollectReport:
    """Fetch every feed concurrently, parse the changed ones on all cores, store new posts.

    One failing feed never stops the others: its error is in the report and in the feeds table.
    """
    now = now or datetime.now(timezone.utc)
    settings = settings or config.collect
    started = time.perf_counter()
    states = store.feed_states(db)
    requests = []
    for feed in config.feeds:
        state = states.get(feed.url, {})
        requests.append(FetchRequest(key=feed.url, url=state.get("redirect_url") or feed.url,
                                     etag=state.get("etag"), last_modified=state.get("last_modified"),
                                     allow_private=feed.private or configured_private(feed.url)))
    report = CollectReport()
    with _ParsePool(len(requests)) as pool:
        asyncio.run(_collect(config, db, requests, now, settings, pool, transport, report, on_feed))
    report.seconds = time.perf_counter() - started
    return report


async def _collect(config, db, requests, now, settings, pool, transport, report, on_feed) -> None:
    configured = {feed.url for feed in config.feeds}

    async def handle(feed: FeedConfig, result: FetchResult) -> None:
        """Parse and store one feed. Whatever its bytes provoke is this feed's failure, never the run's; only
        the database failing (locked, full, unwritable) ends the run."""
        parsed = None
        if result.content is not None and result.error is None:
            try:
                parsed = await pool.parse(result.content, feed.url, result.headers, result.url)
            except Exception as exc:
                parsed = ParsedFeed(title=None, posts=[], error=f"cannot parse: {_one_line(exc)}")
        try:
            feed_report = _store(db, feed, result, parsed, now, configured)
        except sqlite3.OperationalError:
            raise
        except Exception as exc:
            failed = replace(result, content=None, error=f"cannot store: {_one_line(exc)}")
            feed_report = _store(db, feed, failed, None, now, configured)
        report.feeds.append(feed_report)
        if on_feed:
            on_feed(feed_report)

    handlers = []
    async for result in fetch_all(requests, settings, transport=transport):
        handlers.append(asyncio.create_task(handle(config.feed(result.key), result)))
    await asyncio.gather(*handlers)


def _parse(content: bytes, feed_url: str, headers: dict[str, str], fetched_url: str) -> ParsedFeed:
    """Runs in a pool worker. feedparser is imported there, on first use: an unchanged run never needs it."""
    from .parse import parse_feed

    return parse_feed(content, feed_url, headers, fetched_url)


def _store(db, feed: FeedConfig, result: FetchResult, parsed: ParsedFeed | None, now: datetime,
           configured: set[str]) -> FeedReport:
    error = result.error or (parsed.error if parsed else None)
    outcome = store.FetchOutcome(
        status=result.status, error=error, etag=result.etag, last_modified=result.last_modified,
        permanent_url=result.permanent_url, forget_redirect=result.refused, title=parsed.title if parsed else None,
        not_modified=result.not_modified, warning=parsed.warning if parsed else None,
        site_url=parsed.site_url if parsed else None,
    )
    posts = parsed.posts if parsed and not error else []
    new_posts = store.record_fetch(db, url=feed.url, name=feed.name, section=feed.section, outcome=outcome,
                                   posts=posts, now=now, configured=configured)
    if error:
        kind = "failed"
    elif result.not_modified:
        kind = "unchanged"
    else:
        kind = "new" if new_posts else "unchanged"
    return FeedReport(name=feed.name, url=feed.url, outcome=kind, new_posts=new_posts,
                      http_status=result.status, error=error, warning=None if error else outcome.warning)


class _InlineExecutor(Executor):
    """Parses in the calling thread: for a handful of feeds a process pool costs more than it saves."""

    def submit(self, fn, /, *args, **kwargs):
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the awaiting task, as a pool would
            future.set_exception(exc)
        return future


class _ParsePool:
    """Where feeds are parsed: a process pool (CPU-bound), forked before the event loop starts any thread,
    or inline for a handful of feeds. A worker that dies (the kernel's OOM killer, a crash in a C library)
    fails the feeds it was parsing; the next ones get a new pool, started without fork now that threads run."""

    def __init__(self, feed_count: int):
        self.workers = min(os.cpu_count() or 1, feed_count)
        self.executor: Executor = _InlineExecutor()
        if self.workers >= 2 and feed_count >= 8:
            self.executor = self._start("fork")
            for _ in range(self.workers):  # each submit forks one worker now; they import the parser while we fetch
                self.executor.submit(_import_parser)

    def _start(self, method: str) -> Executor:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context(method if method in methods else None)
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=context)

    async def parse(self, content: bytes, feed_url: str, headers: dict[str, str], fetched_url: str) -> ParsedFeed:
        executor = self.executor
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, _parse, content, feed_url, headers,
                                                                    fetched_url)
        except BrokenProcessPool:
            if self.executor is executor:
                executor.shutdown(wait=False, cancel_futures=True)
                self.executor = self._start("spawn")
            raise BrokenProcessPool("the parsing process died (out of memory, or killed) while this feed or "
                                    "another was being parsed; it is fetched again next time") from None

    def __enter__(self) -> _ParsePool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def _import_parser() -> None:
    import digest.parse  # noqa: F401


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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


def subject_for(config: Config, issue_id: str) -> str:
    start, end = week_dates(issue_id)
    return config.newsletter.subject.format(title=config.newsletter.title, issue=issue_id, start=start, end=end)


def build(config: Config, db: sqlite_utils.Database, issue_id: str, *, now: datetime | None = None) -> BuildReport:
    """Write (or update) drafts/<issue>.yaml with the week's posts, then render .html and .txt.

    An existing draft keeps the editor's edits; only posts never offered to it are
    appended, each where `select` placed it. A broken draft raises DraftError before anything is written.
    """
    now = now or datetime.now(timezone.utc)
    issue = store.get_issue(db, issue_id)
    if issue is not None and issue["status"] != "draft":
        return BuildReport(issue=issue_id, outcome=issue["status"])
    check_receipt(config, db, issue_id)
    selection = new_for_issue(db, config, issue_id, now)
    fresh = selection.posts
    path = draft_path(config.drafts_dir, issue_id)
    if path.exists():
        draft = read_draft(path)
    elif not fresh:
        return BuildReport(issue=issue_id, outcome="empty")
    else:
        draft = new_draft(issue_id, subject_for(config, issue_id), list(config.newsletter.sections))
    offered_links = {post["url_key"] for post in store.offered_posts(db, issue_id) if post["url_key"]}
    added = add_posts(draft, fresh, config.newsletter.sections, config.newsletter.tz, offered_links)
    if added.items or added.more or added.stale or not path.exists():
        write_draft(path, draft)
    store.ensure_issue(db, issue_id, draft.subject, now)
    store.add_offered(db, issue_id, [(post.id, post.placement, post.feed.url) for post in fresh], now,
                      selection.seen_seq)
    html_path, text_path, html_bytes = render_files(config, draft, path)
    report = BuildReport(issue=issue_id, outcome="built", draft=path, html=html_path, text=text_path,
                         items=len(draft.items), new_items=added.items, held_more=draft.held_more,
                         held_stale=draft.held_stale, already=added.already, html_bytes=html_bytes)
    if html_bytes > WARN_BYTES:
        busiest = sorted(((count, config.feed(url).name) for url, count in
                          store.offered_items_per_feed(db, issue_id).items() if config.feed(url)), reverse=True)
        report.size_warning = size_advice(draft, config.newsletter, html_path, html_bytes,
                                          [(name, count) for count, name in busiest[:3]])
    return report


def render_files(config: Config, draft, path: Path) -> tuple[Path, Path, int]:
    """Render the draft next to its YAML, with a sample unsubscribe link, for the editor to look at."""
    rendered = render_issue(draft, config.newsletter)
    unsubscribe = sample_url(config.newsletter)
    html = personalize(rendered.html, unsubscribe_url=unsubscribe, name="", html=True)
    text = personalize(rendered.text, unsubscribe_url=unsubscribe, name="", html=False)
    html_path, text_path = path.with_suffix(".html"), path.with_suffix(".txt")
    write_atomically(html_path, html)
    write_atomically(text_path, text)
    return html_path, text_path, len(html.encode("utf-8"))


# --- send and run --------------------------------------------------------------------

BACKENDS = ("smtp", "buttondown")
DRY_RUN_SAMPLES = 3


@dataclass
class SendPlan:
    """What a send would do, for the confirmation question; nothing is written until `send`."""

    issue: str
    backend: str
    draft: Draft | None = None
    done: str | None = None  # why there is nothing to do
    recipients: list[Subscriber] = field(default_factory=list)  # smtp: still to be mailed
    already: int = 0  # subscribers an earlier, interrupted run already mailed
    not_mailed: dict[str, int] = field(default_factory=dict)  # why others are not: unsubscribed, bounced, failed
    problems: list[ConfigError] = field(default_factory=list)  # subscribers.csv rows skipped
    draft_text: str = ""  # the draft as sent: a resumed send sends what the first subscribers got
    snapshot_note: str | None = None  # the draft file changed since the send began
    rendered: RenderedIssue | None = None  # the email, rendered once for the size check and the send
    html_bytes: int = 0  # its HTML with the longest unsubscribe link a subscriber can get

    @property
    def clipped(self) -> bool:
        return self.html_bytes > GMAIL_CLIP_BYTES


def _sent_html_bytes(config: Config, plan: SendPlan, send_now: bool) -> int:
    """The size of the HTML as a subscriber gets it: with the longest unsubscribe link digest can give, or, for
    Buttondown, the body it is sent (template syntax escaped) with room for Buttondown's own link."""
    if plan.backend == "buttondown":
        body = request_body(plan.rendered, plan.issue, send_now=send_now)["body"]
        return len(body.encode("utf-8")) + BUTTONDOWN_LINK_ROOM
    html = personalize(plan.rendered.html, unsubscribe_url=longest_url(config.newsletter), name="", html=True)
    return len(html.encode("utf-8"))


BUTTONDOWN_LINK_ROOM = 200  # bytes Buttondown's unsubscribe link may take beyond its template variable


def issue_done(db: sqlite_utils.Database, issue_id: str, backend: str, *, send_now: bool = False) -> str | None:
    """Why the issue needs no sending (already sent, or already a Buttondown draft), or None.

    Raises SetupError when the issue was started with the other backend: finishing it elsewhere could mail
    people twice.
    """
    issue = store.get_issue(db, issue_id) or {}
    if issue.get("backend") not in (None, backend):
        raise SetupError(f"{issue_id} was handed to {issue['backend']}; finish it with --backend {issue['backend']}")
    if issue.get("status") == "sent":
        return f"{issue_id}: already sent ({issue['backend']}, {issue['sent_at']}), nothing to do"
    if issue.get("remote_id") and not send_now:
        return (f"{issue_id}: already a draft at Buttondown (id {issue['remote_id']}), nothing to do; "
                f"--send-now sends it")
    return None


def sending_began(db: sqlite_utils.Database, issue_id: str) -> bool:
    """Whether an earlier run began sending (smtp rows, or a Buttondown draft): the draft must not change now."""
    issue = store.get_issue(db, issue_id) or {}
    return issue.get("status") == "sending" or issue.get("remote_id") is not None


def plan_send(config: Config, db: sqlite_utils.Database, issue_id: str, backend: str, *,
              send_now: bool = False, dry_run: bool = False, allow_clipped: bool = False,
              force: bool = False) -> SendPlan:
    """Read the draft and, for smtp, who is still to be mailed: active, not suppressed, not yet done.

    With nobody to mail and nothing begun, there is nothing to do (a dry run still shows a sample): an issue
    "sent" to nobody would use up its posts. An email that Gmail would clip is refused (Clipped) unless
    `allow_clipped`, a dry run, or a send that began with it allowed. A send the drafts folder's receipt
    knows of but the database does not is refused (Unrecorded) unless `force`. A resumed send reads the
    draft as it was when the send began, whatever the file says now.
    """
    plan = SendPlan(issue=issue_id, backend=backend, done=issue_done(db, issue_id, backend, send_now=send_now))
    if plan.done:
        return plan
    if not force:
        check_receipt(config, db, issue_id)
    path = draft_path(config.drafts_dir, issue_id)
    file_text = read_text_file(path, "no draft for this week (run `digest build` first)")
    kept = (store.get_issue(db, issue_id) or {}).get("sent_draft") if sending_began(db, issue_id) else None
    plan.draft_text = kept if kept is not None else file_text
    plan.draft = parse_draft(path, plan.draft_text)
    if kept is not None and kept != file_text:
        plan.snapshot_note = (f"{path} changed since the send began; the rest of the subscribers get the "
                              f"version the first ones got")
    if not plan.draft.items:
        plan.done = f"{issue_id}: {path} has no items, nothing to send"
        return plan
    plan.rendered = render_issue(plan.draft, config.newsletter)
    plan.html_bytes = _sent_html_bytes(config, plan, send_now)
    if plan.clipped and not (allow_clipped or dry_run or sending_began(db, issue_id)):
        raise Clipped(f"{issue_id}: the email is {plan.html_bytes / 1024:.0f} KB of HTML, and Gmail clips past "
                      f"{GMAIL_CLIP_BYTES // 1024} KB, hiding the rest and the unsubscribe link: remove items from "
                      f"{path} (or lower max_items in feeds.yaml and build again), or add --allow-clipped "
                      f"to send it clipped")
    if backend != "smtp":
        return plan
    subscribers, plan.problems = read_subscribers(config.subscribers_path)
    suppressed = store.suppressions(db)
    sent = store.delivery_keys(db, issue_id, "sent")
    failed = store.delivery_keys(db, issue_id, "failed")
    for subscriber in subscribers:
        key = address_key(subscriber.email)
        reason = suppressed.get(key) or (subscriber.status if subscriber.status != "active" else None)
        if reason is None and key in failed:
            reason = "failed"
        if reason:
            plan.not_mailed[reason] = plan.not_mailed.get(reason, 0) + 1
        elif key in sent:
            plan.already += 1
        else:
            plan.recipients.append(subscriber)
    if not plan.recipients and not dry_run and not store.delivery_counts(db, issue_id):  # a resumed send finishes
        plan.done = (f"{issue_id}: nobody to mail, {config.subscribers_path.name} has no active subscriber; "
                     f"nothing sent, nothing recorded")
    return plan


def backend_for(config: Config, plan: SendPlan, *, send_now: bool = False,
                on_result: Callable[[str, str], None] | None = None) -> Backend:
    """The backend, with its secrets read now, so that a missing one stops us before any question or write."""
    if plan.backend == "smtp":
        return SmtpBackend(config.smtp, config.newsletter, plan.recipients, on_result=on_result)
    return ButtondownBackend(config.buttondown, send_now=send_now)


def send(config: Config, db: sqlite_utils.Database, plan: SendPlan, backend: Backend, *,
         now: datetime | None = None) -> SendReport:
    """Deliver the issue as rendered by the plan; the database records each step so that a re-run resumes.

    First the draft is kept in the database (with which posts the email holds) and a durable receipt is
    written next to it; the receipt follows the issue's state when the backend is done, or stops.
    """
    now = now or datetime.now(timezone.utc)
    store.ensure_issue(db, plan.issue, plan.draft.subject, now)
    store.begin_send(db, plan.issue, plan.draft_text, _posts_in(plan.draft, store.offered_posts(db, plan.issue)))
    receipt = draft_path(config.drafts_dir, plan.issue, RECEIPT)
    _write_receipt(receipt, db, plan.issue, plan.backend, now, status="sending")
    try:
        return backend.deliver(db, plan.issue, plan.rendered)
    finally:
        issue = store.get_issue(db, plan.issue) or {}
        if issue.get("status") in ("sending", "sent"):
            _write_receipt(receipt, db, plan.issue, plan.backend, now, status=issue["status"])
        else:
            receipt.unlink(missing_ok=True)  # nothing was delivered: a draft again


RECEIPT = ".receipt.json"


def _write_receipt(path: Path, db: sqlite_utils.Database, issue_id: str, backend: str, now: datetime, *,
                   status: str) -> None:
    """drafts/<issue>.receipt.json: that this issue began sending (or was sent), and how far it got. It
    outlives a lost or replaced database, whose empty ledger would otherwise mail everyone again."""
    try:
        began = json.loads(path.read_text(encoding="utf-8")).get("began")
    except (OSError, ValueError, AttributeError):
        began = None
    issue = store.get_issue(db, issue_id) or {}
    receipt = {"issue": issue_id, "status": status, "backend": backend, "began": began or store.iso(now),
               "updated": store.iso(datetime.now(timezone.utc)),
               "delivered": store.delivery_counts(db, issue_id).get("sent", 0), "remote_id": issue.get("remote_id"),
               "database": store.database_path(db)}
    write_durably(path, json.dumps(receipt, indent=2) + "\n")


def check_receipt(config: Config, db: sqlite_utils.Database, issue_id: str) -> None:
    """Refuse (Unrecorded) when the receipt says the issue began sending or was sent and the database knows
    nothing of it: the database was lost or replaced, and its empty ledger would mail everyone again."""
    path = draft_path(config.drafts_dir, issue_id, RECEIPT)
    if not path.exists():
        return
    issue = store.get_issue(db, issue_id) or {}
    if issue.get("status") in ("sending", "sent") or issue.get("remote_id") or issue.get("sent_draft"):
        return
    try:
        receipt = json.loads(path.read_text(encoding="utf-8"))
        how = f"{receipt['status']} ({receipt['delivered']} delivered by {receipt['updated']})"
    except (OSError, ValueError, KeyError, TypeError):
        how = "sending"
    raise Unrecorded(f"{path} says {issue_id} was {how}, but {store.database_path(db)} has no record of it: the "
                     f"database was lost or replaced. Put back the database that sent it; or, to start again "
                     f"from an empty ledger (everyone may get it twice), add --force")


def _posts_in(draft: Draft, offered: list[dict]) -> list[str]:
    """Which offered posts the email holds: by link, or, for link-less items, by title."""
    links = {url_key(clean_url(item.url) or item.url) for item in draft.items if item.url}
    titles = {item.title for item in draft.items if not item.url}
    return [post["id"] for post in offered
            if (post["url_key"] in links if post["canonical_url"] else post["title"] in titles)]


def send_test(config: Config, issue_id: str, address: str) -> str:
    """One copy of the issue to one address over SMTP, recording nothing; returns the server's reply."""
    if not is_valid_email(address):
        raise SetupError(f"--to: not a valid address: {address!r}")
    draft = read_draft(draft_path(config.drafts_dir, issue_id))
    backend = SmtpBackend(config.smtp, config.newsletter, [])
    return backend.send_test(render_issue(draft, config.newsletter), issue_id, address)


def dry_run(config: Config, plan: SendPlan, *, send_now: bool = False) -> list[Path]:
    """Write what would be sent, sending nothing: a few complete .eml files (smtp) or the API request (buttondown).

    They go to drafts/<issue>.dry-run/, readable by their owner only (they hold subscribers' addresses and
    signed unsubscribe links); the samples are the first subscribers still to be mailed.
    """
    rendered = plan.rendered
    directory = draft_path(config.drafts_dir, plan.issue, ".dry-run")
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    if plan.backend == "buttondown":
        path = directory / "buttondown-request.json"
        body = request_body(rendered, plan.issue, send_now=send_now)
        write_atomically(path, json.dumps(body, indent=2, ensure_ascii=False) + "\n")
        return [path]
    factory = MessageFactory(rendered, config.newsletter, UnsubscribeLinks.for_newsletter(config.newsletter),
                             plan.issue)
    samples = plan.recipients[:DRY_RUN_SAMPLES] or [Subscriber(email="subscriber@example.com", name="Sample Reader")]
    paths = []
    for number, subscriber in enumerate(samples, 1):
        path = directory / f"{number:02d}-{re.sub(r'[^A-Za-z0-9@._-]', '_', subscriber.email)}.eml"
        path.unlink(missing_ok=True)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as stream:
            stream.write(factory.copy(subscriber.email, subscriber.name, factory.message_id(subscriber.email)))
        paths.append(path)
    return paths


def unsubscribe(config: Config, db: sqlite_utils.Database, address_or_token: str, *,
                now: datetime | None = None) -> tuple[str, bool]:
    """Record that an address (or the one an unsubscribe token of this newsletter was signed for) is never
    mailed again. The database wins over subscribers.csv. Returns the address and whether it is newly
    unsubscribed."""
    text = address_or_token.strip()
    if "@" in text:
        if not is_valid_email(text):
            raise SetupError(f"not a valid address: {text!r}")
        email = text
    else:
        secret = env_secret(SECRET_ENV)
        email = verify_token(secret, config.newsletter.list_identifier, text) if secret else None
        if email is None:
            raise SetupError(f"{text!r} is neither an address nor a token of this newsletter signed with {SECRET_ENV}")
    new = store.suppress(db, email, "unsubscribed", now or datetime.now(timezone.utc), detail="digest unsubscribe")
    return email, new
