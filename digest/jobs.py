"""The weekly job's steps as plain functions: collect (fetch → parse → store) and build (select → draft → render).

The CLI is a thin layer over these; tests and the demo call them directly.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parseaddr
from pathlib import Path
from typing import Callable

import httpx
import sqlite_utils

from . import store
from .collect import FetchRequest, FetchResult, FetchSettings, fetch_all
from .config import Config, FeedConfig
from .draft import add_posts, draft_path, new_draft, read_draft, write_atomically, write_draft
from .models import ParsedFeed
from .parse import parse_feed
from .render import personalize, render_issue
from .select import select_posts
from .weeks import week_dates


@dataclass
class FeedReport:
    name: str
    url: str
    outcome: str  # "new", "unchanged", "failed"
    new_posts: int = 0
    http_status: int | None = None
    error: str | None = None


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


def collect(config: Config, db: sqlite_utils.Database, *, now: datetime | None = None,
            settings: FetchSettings = FetchSettings(), on_feed: Callable[[FeedReport], None] | None = None,
            transport: httpx.AsyncBaseTransport | None = None) -> CollectReport:
    """Fetch every feed concurrently, parse the changed ones on all cores, store new posts.

    One failing feed never stops the others: its error is in the report and in the feeds table.
    """
    now = now or datetime.now(timezone.utc)
    started = time.perf_counter()
    states = store.feed_states(db)
    requests = []
    for feed in config.feeds:
        state = states.get(feed.url, {})
        requests.append(FetchRequest(key=feed.url, url=state.get("redirect_url") or feed.url,
                                     etag=state.get("etag"), last_modified=state.get("last_modified")))
    report = CollectReport()
    with _parse_pool(len(requests)) as pool:
        asyncio.run(_collect(config, db, requests, now, settings, pool, transport, report, on_feed))
    report.seconds = time.perf_counter() - started
    return report


async def _collect(config, db, requests, now, settings, pool, transport, report, on_feed) -> None:
    loop = asyncio.get_running_loop()

    async def handle(feed: FeedConfig, result: FetchResult) -> None:
        parsed = None
        if result.content is not None and result.error is None:
            parsed = await loop.run_in_executor(pool, _parse, result.content, result.url, result.headers, now)
        feed_report = _store(db, feed, result, parsed, now)
        report.feeds.append(feed_report)
        if on_feed:
            on_feed(feed_report)

    handlers = []
    async for result in fetch_all(requests, settings, transport=transport):
        handlers.append(asyncio.create_task(handle(config.feed(result.key), result)))
    await asyncio.gather(*handlers)


def _parse(content: bytes, url: str, headers: dict[str, str], now: datetime) -> ParsedFeed:
    return parse_feed(content, feed_url=url, headers=headers, now=now)


def _store(db, feed: FeedConfig, result: FetchResult, parsed: ParsedFeed | None, now: datetime) -> FeedReport:
    error = result.error or (parsed.error if parsed else None)
    outcome = store.FetchOutcome(
        status=result.status, error=error, etag=result.etag, last_modified=result.last_modified,
        permanent_url=result.permanent_url, title=parsed.title if parsed else None,
        not_modified=result.not_modified,
    )
    posts = parsed.posts if parsed and not error else []
    new_posts = store.record_fetch(db, url=feed.url, name=feed.name, section=feed.section, outcome=outcome,
                                   posts=posts, now=now)
    if error:
        kind = "failed"
    elif result.not_modified:
        kind = "unchanged"
    else:
        kind = "new" if new_posts else "unchanged"
    return FeedReport(name=feed.name, url=feed.url, outcome=kind, new_posts=new_posts,
                      http_status=result.status, error=error)


class _InlineExecutor(Executor):
    """Parses in the calling thread: for a handful of feeds a process pool costs more than it saves."""

    def submit(self, fn, /, *args, **kwargs):
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the awaiting task, as a pool would
            future.set_exception(exc)
        return future


def _parse_pool(feed_count: int) -> Executor:
    """A process pool for parsing (CPU-bound), forked before the event loop starts any thread."""
    workers = min(os.cpu_count() or 1, feed_count)
    if workers < 2 or feed_count < 8:
        return _InlineExecutor()
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    for warm in [pool.submit(int) for _ in range(workers)]:
        warm.result()
    return pool


# --- build ---------------------------------------------------------------------------


@dataclass
class BuildReport:
    issue: str
    outcome: str  # "built", "empty", "sent"
    draft: Path | None = None
    html: Path | None = None
    text: Path | None = None
    items: int = 0
    new_items: int = 0
    html_bytes: int = 0


def subject_for(config: Config, issue_id: str) -> str:
    start, end = week_dates(issue_id)
    return config.newsletter.subject.format(title=config.newsletter.title, issue=issue_id, start=start, end=end)


def build(config: Config, db: sqlite_utils.Database, issue_id: str, *, now: datetime | None = None) -> BuildReport:
    """Write (or update) drafts/<issue>.yaml with the week's posts, then render .html and .txt.

    An existing draft keeps the editor's edits; only posts never offered to it are
    appended. A broken draft raises DraftError before anything is written.
    """
    now = now or datetime.now(timezone.utc)
    issue = store.get_issue(db, issue_id)
    if issue is not None and issue["status"] != "draft":
        return BuildReport(issue=issue_id, outcome=issue["status"])
    tz = config.newsletter.tz
    selected = select_posts(db, config, issue_id, now)
    path = draft_path(config.drafts_dir, issue_id)
    if path.exists():
        draft = read_draft(path)
        offered = store.offered_post_ids(db, issue_id)
        fresh = [post for post in selected if post.id not in offered]
    else:
        if not selected:
            return BuildReport(issue=issue_id, outcome="empty")
        draft = new_draft(issue_id, subject_for(config, issue_id), list(config.newsletter.sections))
        fresh = selected
    added = add_posts(draft, fresh, config.newsletter.sections, tz)
    if added or not path.exists():
        write_draft(path, draft)
    store.ensure_issue(db, issue_id, draft.subject, now)
    store.add_offered(db, issue_id, [post.id for post in fresh], now)
    html_path, text_path, html_bytes = render_files(config, draft, path)
    return BuildReport(issue=issue_id, outcome="built", draft=path, html=html_path, text=text_path,
                       items=len(draft.items), new_items=added, html_bytes=html_bytes)


def render_files(config: Config, draft, path: Path) -> tuple[Path, Path, int]:
    """Render the draft next to its YAML, with a sample unsubscribe link, for the editor to look at."""
    rendered = render_issue(draft, config.newsletter)
    unsubscribe = preview_unsubscribe_url(config)
    html = personalize(rendered.html, unsubscribe_url=unsubscribe, name="", html=True)
    text = personalize(rendered.text, unsubscribe_url=unsubscribe, name="", html=False)
    html_path, text_path = path.with_suffix(".html"), path.with_suffix(".txt")
    write_atomically(html_path, html)
    write_atomically(text_path, text)
    return html_path, text_path, len(html.encode("utf-8"))


def preview_unsubscribe_url(config: Config) -> str:
    template = config.newsletter.unsubscribe_url
    if template:
        return template.format(token="preview", email="subscriber@example.com")
    return f"mailto:{_address_of(config.newsletter.reply_to or config.newsletter.from_address)}?subject=unsubscribe"


def _address_of(mailbox: str) -> str:
    return parseaddr(mailbox)[1]
