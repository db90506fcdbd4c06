"""The link check of `digest check`: every link of the issue fetched, each judged.

A link surely gone (404, 410, a host the resolver says does not exist) is an error; bot walls (401, 403, 429,
999), other answers past 400, no answer, TLS errors, a resolver that cannot answer, a link not checked within
check.deadline (one deadline for the whole check) are warnings; so are a redirect to the site's home page and
http:// where https:// answers. When most links fail the same way, the network or the resolver is the problem:
that is said once, and those links are not judged.

Within `fetched_once()` (a run: its hold-back's check, then its send's) a link is fetched at most once: a later
check reuses the answer, even one not kept (a 403, a 429, none within check.deadline), and fetches only the links
it has not seen (a draft changed in between is checked again, all of it).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import sqlite_utils

from digest import store
from digest.issue.findings import ERROR, WARNING, Finding, short_url
from digest.retry import CONNECTION_REFUSED, LOOKUP_FAILED, TIMED_OUT, connection_failure
from digest.settings.config import CheckSettings


@dataclass
class LinkResult:
    url: str
    status: int | None = None  # of the last answer, after redirects
    final_url: str | None = None
    error: str | None = None  # no answer: why
    https_works: bool | None = None  # an http:// link whose https:// twin answered below 400
    gone: bool = False  # no answer, and surely none will come: the resolver says the host does not exist
    kind: str | None = None  # no answer, in a word: "no such host", "timed out", "TLS"... (the same way for most?)


_FETCHED: ContextVar[dict[str, LinkResult] | None] = ContextVar("digest_links_fetched", default=None)


@contextmanager
def fetched_once() -> Iterator[None]:
    """Every link check within shares its answers: a link is fetched at most once (`digest run`)."""
    token = _FETCHED.set({})
    try:
        yield
    finally:
        _FETCHED.reset(token)


def link_findings(
    db: sqlite_utils.Database, settings: CheckSettings, links: dict[str, str], now: datetime, *, fetch: bool = True
) -> tuple[int, int, list[Finding]]:
    """(links, fetched now, findings): each link fetched unless its answer is cached, the new answers kept;
    without `fetch`, a link with no cached answer is left out."""
    since = store.iso(now - timedelta(hours=settings.cache_hours))
    seen = _FETCHED.get()
    results = {url: (seen or {}).get(url) or _cached(db, url, since) for url in links}
    stale = [url for url, result in results.items() if result is None] if fetch else []
    if stale:
        fetched = asyncio.run(_fetch_all(stale, settings))
        if seen is not None:
            seen.update({item.url: item for item in fetched})
        with store.transaction(db):  # only answers below 400: a link that failed is asked again next time
            db.conn.executemany(
                "INSERT OR REPLACE INTO link_checks (url, checked_at, status, final_url, error, https_works) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (item.url, store.iso(now), item.status, item.final_url, item.error, item.https_works)
                    for item in fetched
                    if item.error is None and item.status is not None and item.status < 400
                ],
            )
        results.update({item.url: item for item in fetched})
    network = _network_problem([result for result in results.values() if result is not None])
    findings = []
    if network is not None:
        kind, count = network
        findings.append(
            Finding(
                WARNING,
                "links",
                f"{count} of {len(links)} links failed the same way ({kind}): the network or the resolver is the "
                "problem, not the links; those were not judged (digest check tries them again)",
            )
        )
    for url, where in links.items():
        result = results[url]
        if result is not None and (network is None or result.kind != network[0]):  # None: not fetched, not cached
            findings += _judge(result, where)
    return len(links), len(stale), findings


NETWORK_SHARE, NETWORK_LINKS = 0.5, 5  # this share of the links, and at least this many, failing the same way


def _network_problem(results: list[LinkResult]) -> tuple[str, int] | None:
    """(kind, count) when most links failed the same way (a resolver down makes every host "not exist")."""
    kinds: dict[str, int] = {}
    for result in results:
        if result.kind is not None and result.kind != DEADLINE:
            kinds[result.kind] = kinds.get(result.kind, 0) + 1
    kind, count = max(kinds.items(), key=lambda pair: pair[1], default=("", 0))
    return (kind, count) if count >= NETWORK_LINKS and count >= NETWORK_SHARE * len(results) else None


def _cached(db: sqlite_utils.Database, url: str, since: str) -> LinkResult | None:
    row = db.execute(
        "SELECT status, final_url, error, https_works FROM link_checks WHERE url = ? AND checked_at >= ?", [url, since]
    ).fetchone()
    if row is None:
        return None
    status, final_url, error, https_works = row
    return LinkResult(url, status, final_url, error, None if https_works is None else bool(https_works))


GONE = (404, 410)  # the only answers that say a page is gone; 401, 403, 429, 999 are bot walls and limits


def _judge(result: LinkResult, where: str) -> list[Finding]:
    url = short_url(result.url)
    if result.error is not None:
        return [Finding(ERROR if result.gone else WARNING, where, f"{url}: {result.error}")]
    findings = []
    if result.status in GONE:
        findings.append(Finding(ERROR, where, f"{url} answers {result.status}"))
    elif result.status is not None and result.status >= 400:
        findings.append(
            Finding(WARNING, where, f"{url} answers {result.status} to digest (a robot); a reader's browser may not")
        )
    elif result.final_url and _is_home(result.final_url) and not _is_home(url):
        findings.append(Finding(WARNING, where, f"{url} redirects to the site's home page ({result.final_url})"))
    if result.https_works:
        findings.append(Finding(WARNING, where, f"{url}: https:// works, link to it"))
    return findings


def _is_home(url: str) -> bool:
    return urlsplit(url).path in ("", "/")


async def _fetch_all(urls: list[str], settings: CheckSettings) -> list[LinkResult]:
    import httpx

    from digest.feeds.fetch import USER_AGENT, allow_private, guarded_transport

    allow_private.set(settings.private)
    every = asyncio.Semaphore(settings.concurrency)
    hosts: dict[str, asyncio.Semaphore] = {}
    limits = httpx.Limits(max_connections=settings.concurrency)
    transport = guarded_transport(ssl.create_default_context(), limits)
    async with httpx.AsyncClient(
        headers={"User-Agent": USER_AGENT},
        timeout=httpx.Timeout(settings.timeout),
        follow_redirects=True,
        max_redirects=10,
        transport=transport,
    ) as client:

        async def one(url: str) -> LinkResult:
            try:
                host = urlsplit(url).hostname or ""
            except ValueError as exc:  # "http://[::1": a link no server can answer
                return LinkResult(url, error=f"not a valid address: {exc}")
            # the host's turn first, then a slot of all: a busy host does not hold slots the others could use
            async with hosts.setdefault(host, asyncio.Semaphore(settings.per_host)), every:
                result = await _fetch(client, url, settings.timeout)
                if url.startswith("http://") and result.error is None and (result.status or 500) < 400:
                    twin = await _fetch(client, urlunsplit(("https", *urlsplit(url)[1:])), settings.timeout)
                    result.https_works = twin.error is None and (twin.status or 500) < 400
                return result

        tasks = [asyncio.ensure_future(one(url)) for url in urls]
        done, pending = await asyncio.wait(tasks, timeout=settings.deadline) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        late = f"not checked: the {settings.deadline:g} s deadline of the link check (check.deadline)"
        return [
            task.result() if task in done else LinkResult(url, error=late, kind=DEADLINE)
            for url, task in zip(urls, tasks, strict=True)
        ]


DEADLINE = "deadline"


async def _fetch(client, url: str, timeout: float) -> LinkResult:
    """HEAD, then GET when HEAD is refused (some servers answer 405, 403 or 404 to HEAD alone); the body of a
    GET is never read. Within `timeout` for the whole, redirects included."""
    import httpx

    from digest.feeds.fetch import REFUSED

    result = LinkResult(url)
    try:
        async with asyncio.timeout(timeout):
            response = await client.head(url)
            if response.status_code >= 400:
                async with client.stream("GET", url) as streamed:
                    response = streamed
        result.status, result.final_url = response.status_code, str(response.url)
    except TimeoutError:
        result.error, result.kind = f"no answer within {timeout:g} s", "timed out"
    except httpx.TooManyRedirects:
        result.error = "more than 10 redirects"
    except httpx.ConnectError as exc:
        text = str(exc)
        if text.startswith(REFUSED) and "(set `private: true`" in text:  # feeds' words: say what a check can do
            text = text.split(" (set `private: true`", 1)[0] + " (check.private: true fetches such links)"
        is_tls = "SSL" in text or "certificate" in text.lower()
        result.error = f"TLS: {text}" if is_tls else f"cannot connect: {text or type(exc).__name__}"
        result.gone = _no_such_host(exc)
        result.kind = "TLS" if is_tls else _failure_kind(exc, result.gone)
    except httpx.HTTPError as exc:
        result.error, result.kind = f"{type(exc).__name__}: {exc}", type(exc).__name__
    except ssl.SSLError as exc:
        result.error, result.kind = f"TLS: {exc}", "TLS"
    except UnicodeError as exc:  # a host name IDNA refuses (`a..b`), a label too long: no host has that name
        result.error, result.gone = f"cannot connect: cannot resolve: {type(exc).__name__}: {exc}", True
    except Exception as exc:  # a link the HTTP library refuses (a 200 KB link): that link's warning only
        result.error = f"cannot fetch: {type(exc).__name__}: {str(exc)[:200]}"
    return result


def _no_such_host(exc: BaseException) -> bool:
    """The resolver answered that the name does not exist (NXDOMAIN: EAI_NONAME, or no address: EAI_NODATA); not
    that it could not answer (EAI_AGAIN: no network, a resolver down), which says nothing of the link."""
    names = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
    seen: BaseException | None = exc
    for _ in range(8):  # a chain is a few links long (httpcore raises `from None`: the context holds the cause)
        if seen is None:
            return False
        if isinstance(seen, socket.gaierror):
            return seen.errno in names
        if isinstance(seen, UnicodeError):  # a name IDNA refuses (`a..b`, a label too long): no host has it
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _failure_kind(exc: BaseException, gone: bool) -> str:
    failure = connection_failure(exc)
    if gone:
        return "no such host"
    if failure == LOOKUP_FAILED:
        return "the resolver could not answer"
    return {CONNECTION_REFUSED: "refused", TIMED_OUT: "timed out"}.get(failure or "", "cannot connect")
