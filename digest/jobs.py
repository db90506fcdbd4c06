"""The weekly job as plain functions, each one command: collect (fetch → parse → store), build (select → draft
→ render), run_week (the whole week, as cron runs it) and unsubscribe. Sending is sending.py's.

The CLI calls one of these (or of sending.py) per command and prints the report it returns.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import sqlite_utils

from . import store
from .config import CollectSettings, Config, FeedConfig
from .credentials import env_secret
from .draft import add_posts, draft_path, new_draft, read_draft, write_atomically, write_draft
from .errors import SetupError
from .fetch import FetchRequest, FetchResult, configured_private, fetch_all
from .lock import hold
from .models import FeedOutcome, IssueStatus, ParsedFeed, RenderedIssue
from .render import WARN_BYTES, personalize, render_issue, size_advice
from .selection import new_for_issue
from .send import SendPlan, SendReport, backend_class, check_backend
from .send.unsubscribe import SECRET_ENV, sample_url, verify_token
from .sending import check_receipts, send_locked, sending_began
from .subscribers import is_valid_email
from .weeks import current_week, week_dates


@dataclass
class FeedReport:
    name: str
    url: str
    outcome: FeedOutcome
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
        return [feed for feed in self.feeds if feed.outcome == FeedOutcome.FAILED]

    @property
    def new_posts(self) -> int:
        return sum(feed.new_posts for feed in self.feeds)

    @property
    def all_failed(self) -> bool:
        return bool(self.feeds) and len(self.failed) == len(self.feeds)

    @property
    def exit_code(self) -> int:
        """`digest collect` fails (1) only when every feed failed: one broken feed is that feed's news."""
        return 1 if self.all_failed else 0


def collect(
    config: Config,
    db: sqlite_utils.Database,
    *,
    now: datetime | None = None,
    settings: CollectSettings | None = None,
    on_feed: Callable[[FeedReport], None] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> CollectReport:
    """Fetch every feed concurrently, parse the changed ones on all cores, store new posts.

    One failing feed never stops the others: its error is in the report and in the feeds table.
    """
    now = now or datetime.now(UTC)
    settings = settings or config.collect
    started = time.perf_counter()
    states = store.feed_states(db)
    requests = []
    for feed in config.feeds:
        state = states.get(feed.url, {})
        requests.append(
            FetchRequest(
                key=feed.url,
                url=state.get("redirect_url") or feed.url,
                etag=state.get("etag"),
                last_modified=state.get("last_modified"),
                allow_private=feed.private or configured_private(feed.url),
            )
        )
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


def _store(
    db, feed: FeedConfig, result: FetchResult, parsed: ParsedFeed | None, now: datetime, configured: set[str]
) -> FeedReport:
    error = result.error or (parsed.error if parsed else None)
    outcome = store.FetchOutcome(
        status=result.status,
        error=error,
        etag=result.etag,
        last_modified=result.last_modified,
        permanent_url=result.permanent_url,
        forget_redirect=result.refused,
        title=parsed.title if parsed else None,
        not_modified=result.not_modified,
        warning=parsed.warning if parsed else None,
        site_url=parsed.site_url if parsed else None,
    )
    posts = parsed.posts if parsed and not error else []
    new_posts = store.record_fetch(
        db,
        url=feed.url,
        name=feed.name,
        section=feed.section,
        outcome=outcome,
        posts=posts,
        now=now,
        configured=configured,
    )
    if error:
        kind = FeedOutcome.FAILED
    elif result.not_modified:
        kind = FeedOutcome.UNCHANGED
    else:
        kind = FeedOutcome.NEW if new_posts else FeedOutcome.UNCHANGED
    return FeedReport(
        name=feed.name,
        url=feed.url,
        outcome=kind,
        new_posts=new_posts,
        http_status=result.status,
        error=error,
        warning=None if error else outcome.warning,
    )


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
            return await asyncio.get_running_loop().run_in_executor(
                executor, _parse, content, feed_url, headers, fetched_url
            )
        except BrokenProcessPool:
            if self.executor is executor:
                executor.shutdown(wait=False, cancel_futures=True)
                self.executor = self._start("spawn")
            raise BrokenProcessPool(
                "the parsing process died (out of memory, or killed) while this feed or "
                "another was being parsed; it is fetched again next time"
            ) from None

    def __enter__(self) -> _ParsePool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def _import_parser() -> None:
    import digest.parse  # noqa: F401


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def feed_health(config: Config, db: sqlite_utils.Database) -> list[dict]:
    """Each configured feed's last fetch, status, error or warning, posts stored, failures in a row and
    remembered permanent redirect."""
    health = {row["url"]: row for row in store.feed_health(db)}
    rows = []
    for feed in config.feeds:
        row = health.get(feed.url, {})
        rows.append(
            {
                "name": feed.name,
                "url": feed.url,
                "section": feed.section,
                "last_fetched_at": row.get("last_fetched_at"),
                "last_status": row.get("last_status"),
                "last_error": row.get("last_error"),
                "last_warning": row.get("last_warning"),
                "posts": row.get("posts", 0),
                "consecutive_failures": row.get("consecutive_failures", 0),
                "redirect_url": row.get("redirect_url"),
            }
        )
    return rows


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


def subject_for(config: Config, issue_id: str) -> str:
    start, end = week_dates(issue_id)
    return config.newsletter.subject.format(title=config.newsletter.title, issue=issue_id, start=start, end=end)


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
        return BuildReport(issue=issue_id, outcome="empty")
    else:
        draft = new_draft(issue_id, subject_for(config, issue_id), list(config.newsletter.sections))
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

    @property
    def problem(self) -> str | None:
        """What cron must hear about although the week went on: every feed failed."""
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
    with hold(store.database_path(db)):
        kind = backend_class(backend)
        check_backend(db, report.issue, kind.name)
        chosen = kind(config, send_now=send_now)
        report.done = chosen.done(db, report.issue)
        if report.done:
            return report
        if not force:
            check_receipts(config, db)  # before collecting into the draft of a lost send
        report.resumed = sending_began(db, report.issue)
        if report.resumed:
            step(report)
        else:
            report.collected = collect(config, db, now=now, on_feed=on_feed)
            step(report)
            report.built = _build(config, db, report.issue, now=now, force=force)
            step(report)
            if report.built.outcome == "empty":
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
        )
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
        secret = env_secret(SECRET_ENV)
        newsletters = dict.fromkeys([config.newsletter.list_identifier, *store.list_ids(db)])  # tokens of any issue
        found = (verify_token(secret, list_id, text) for list_id in newsletters) if secret else iter(())
        signed_for = next((email for email in found if email is not None), None)
        if signed_for is None:
            raise SetupError(f"{text!r} is neither an address nor a token of this newsletter signed with {SECRET_ENV}")
        email = signed_for
    new = store.suppress(db, email, "unsubscribed", now or datetime.now(UTC), detail="digest unsubscribe")
    return email, new
