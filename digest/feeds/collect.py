"""The collect stage as one function: fetch every feed (fetch.py), parse the changed ones on all cores
(parse.py), store their posts (store.py); and the health of each feed, for `digest feeds`.

Kept apart from the other jobs so that `digest collect`, which cron may run every hour, imports neither the
renderer nor the senders.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import multiprocessing
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import sqlite_utils

from digest import store
from digest.models import FeedOutcome, ParsedFeed
from digest.settings.config import CollectSettings, Config, FeedConfig

if TYPE_CHECKING:  # fetch (httpx) is imported by collect itself: `digest feeds` needs neither
    import httpx

    from digest.feeds.fetch import Fetcher, FetchRequest, FetchResult


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
    from digest.feeds.fetch import FetchRequest, configured_private

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
    # A 304 to the validators of a body that did not parse: the same body, so the same error.
    still_broken = {url: state["broken_body_error"] for url, state in states.items() if state["broken_body_error"]}
    report = CollectReport()
    # Feeds without a validator answer with their whole body: those will need parsing.
    unconditional = sum(1 for request in requests if not (request.etag or request.last_modified))
    with _ParsePool(unconditional) as pool:
        asyncio.run(_collect(config, db, requests, still_broken, now, settings, pool, transport, report, on_feed))
    order = {feed.url: position for position, feed in enumerate(config.feeds)}
    report.feeds.sort(key=lambda feed: order[feed.url])  # as feeds.yaml lists them, not as they finished
    report.seconds = time.perf_counter() - started
    return report


async def _collect(config, db, requests, still_broken, now, settings, pool, transport, report, on_feed) -> None:
    from digest.feeds.fetch import Fetcher

    configured = {feed.url for feed in config.feeds}

    async def one(fetcher: Fetcher, feed: FeedConfig, request: FetchRequest) -> None:
        """Fetch, parse and store one feed. Whatever its bytes provoke is this feed's failure, never the
        run's; only the database failing (locked, full, unwritable) ends the run."""
        result = await fetcher.fetch(request)
        parsed = None
        if result.content is not None and result.error is None:
            try:
                parsed = await pool.parse(result.content, feed.url, result.headers, result.url)
            except Exception as exc:
                parsed = ParsedFeed(
                    title=None, posts=[], error=f"cannot parse: {_one_line(exc)}", error_from_document=False
                )
        try:
            feed_report = _store(db, feed, result, parsed, now, configured, still_broken.get(feed.url))
        except sqlite3.OperationalError:
            raise
        except Exception as exc:
            failed = replace(result, content=None, error=f"cannot store: {_one_line(exc)}")
            feed_report = _store(db, feed, failed, None, now, configured)
        if feed.summaries == "page" and feed_report.outcome != FeedOutcome.FAILED:
            await _page_summaries(fetcher, db, feed, request.allow_private, settings)
        report.feeds.append(feed_report)
        if on_feed:
            on_feed(feed_report)

    # `concurrency` workers take the feeds in turn, each from its request to its storing: when parsing is
    # slower than fetching the fetches wait, and memory holds a bounded number of bodies, and of tasks,
    # whatever the number of feeds.
    waiting = iter(requests)

    async def worker(fetcher: Fetcher) -> None:
        for request in waiting:
            await one(fetcher, config.feed(request.key), request)

    async with Fetcher(settings, len(requests), transport) as fetcher:
        workers = [asyncio.create_task(worker(fetcher)) for _ in range(min(settings.concurrency, len(requests)))]
        try:
            await asyncio.gather(*workers)
        except BaseException:  # the database failed: the others stop at once, not after fetching every feed
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise


MAX_PAGES = 50  # pages fetched for one feed in one run: a feed that suddenly lists a thousand posts waits


PAGES_AT_ONCE = 4  # a feed's pages in flight together


async def _page_summaries(
    fetcher: Fetcher, db, feed: FeedConfig, allow_private: bool, settings: CollectSettings
) -> None:
    """The feed's posts without any text get their page's description (pages.py), newest first, MAX_PAGES a
    run (the others in the next runs). Each link is asked for once, a few at a time, through the feeds'
    fetcher (its size cap, redirect and address rules), all within one feed's deadline. A page at a loopback
    or private address is fetched only on the feed's own host: a feed configured there may relay links that
    strangers wrote. A page that fails, or says nothing, leaves the summary to the editor."""
    from urllib.parse import urlsplit

    from digest.feeds.fetch import FetchRequest
    from digest.feeds.pages import PageInfo, charset_of, page_info

    feed_host = urlsplit(feed.url).hostname
    posts = store.posts_without_text(db, feed.url, MAX_PAGES)
    links: dict[str, list[str]] = {}
    for post_id, url in posts:
        links.setdefault(url, []).append(post_id)
    gate = asyncio.Semaphore(PAGES_AT_ONCE)

    async def one(url: str) -> tuple[str, PageInfo]:
        async with gate:
            private = allow_private and urlsplit(url).hostname == feed_host
            result = await fetcher.fetch(FetchRequest(key=url, url=url, allow_private=private))
        if not result.content or result.error:
            return url, PageInfo()
        return url, page_info(result.content, result.url, charset_of(result.headers.get("content-type", "")))

    found: dict[str, PageInfo] = {}
    try:
        async with asyncio.timeout(settings.deadline):
            for task in asyncio.as_completed([one(url) for url in links]):
                url, summary = await task
                found[url] = summary
    except TimeoutError:
        pass  # the pages not reached are asked for again next run
    store.record_page_summaries(
        db, [(found[url].description, found[url].image, post_id) for url in found for post_id in links[url]]
    )


def _parse(content: bytes, feed_url: str, headers: dict[str, str], fetched_url: str) -> ParsedFeed:
    """Runs in a pool worker. feedparser is imported there, on first use: an unchanged run never needs it."""
    from digest.feeds.parse import parse_feed

    return parse_feed(content, feed_url, headers, fetched_url)


def _store(
    db,
    feed: FeedConfig,
    result: FetchResult,
    parsed: ParsedFeed | None,
    now: datetime,
    configured: set[str],
    still_broken: str | None = None,
) -> FeedReport:
    """Record one feed's fetch; `still_broken`: the error of the body whose validators were sent, if it had one."""
    error = result.error or (parsed.error if parsed else None)
    if result.not_modified and still_broken:
        error = still_broken  # the same body as the last time: the same error
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
        broken_body=bool(parsed and parsed.error and parsed.error_from_document),
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


class _ParsePool:
    """Where feeds are parsed: a pool of processes, one per core, so that parsing uses every core and a feed
    that crashes its parser (a C library's bug, the kernel's OOM killer) costs that process, not the run.

    It starts only when some feed is to be parsed: an unchanged run, where every feed answers 304, starts
    none. When some feeds have no ETag or Last-Modified (they answer with their whole body), the pool is
    forked now, before the event loop starts any thread; otherwise it starts with the first changed feed,
    with forkserver, since threads run by then (fork would copy their locks). A worker that dies fails the
    feeds it was parsing; the next ones get a new pool.
    """

    def __init__(self, expected: int) -> None:
        self.workers = os.cpu_count() or 1
        self.executor: ProcessPoolExecutor | None = None
        self.froze = bool(expected)
        if expected:
            # Frozen, what this process holds stays out of the workers' garbage collections, which would write
            # to every object and so copy each page of it into each worker (20 MB of 165 at 3,000 feeds).
            gc.freeze()
            self.executor = self._start("fork")
            for _ in range(self.workers):  # each worker forks now, and imports the parser while we fetch
                self.executor.submit(_import_parser)

    def _start(self, method: str) -> ProcessPoolExecutor:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context(method if method in methods else "spawn")
        if context.get_start_method() == "forkserver":
            context.set_forkserver_preload(["digest.feeds.parse"])
        return ProcessPoolExecutor(
            max_workers=self.workers, mp_context=context, initializer=_die_with, initargs=(os.getpid(),)
        )

    async def parse(self, content: bytes, feed_url: str, headers: dict[str, str], fetched_url: str) -> ParsedFeed:
        if self.executor is None:
            self.executor = self._start("forkserver")
        executor = self.executor
        try:
            return await asyncio.get_running_loop().run_in_executor(
                executor, _parse, content, feed_url, headers, fetched_url
            )
        except BrokenProcessPool:
            if self.executor is executor:
                executor.shutdown(wait=False, cancel_futures=True)
                self.executor = None
            raise BrokenProcessPool(
                "the parsing process died (out of memory, or killed) while this feed or "
                "another was being parsed; it is fetched again next time"
            ) from None

    def __enter__(self) -> _ParsePool:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
        if self.froze:
            gc.unfreeze()


PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when the thread that made it ends
PARENT_POLL = 1.0  # seconds between two looks at the parent, where prctl is not to be had


def _die_with(owner: int) -> None:
    """Each parsing process's start: it dies with the collect that started it (a kill -9 of collect left them
    running for ever, 40 MB each). On Linux the kernel kills it when its parent (collect, or the forkserver,
    which leaves when collect goes) ends; everywhere, a thread of its own ends it when its parent changes or
    the collect is gone."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # no libc to be found: the thread below does it
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if not _still_there(parent, owner):  # gone before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch, args=(parent, owner), name="digest-parent-watch", daemon=True).start()


def _still_there(parent: int, owner: int) -> bool:
    if os.getppid() != parent:
        return False
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: some process has that pid (never collect, which runs as this user)
        return False
    return True


def _watch(parent: int, owner: int) -> None:
    while _still_there(parent, owner):
        time.sleep(PARENT_POLL)
    os._exit(1)


def _import_parser() -> None:
    import digest.feeds.parse  # noqa: F401


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
