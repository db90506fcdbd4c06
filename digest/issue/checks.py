"""`digest check`: what could go wrong with an issue, found before it is sent.

    content      leftover placeholders (TK, TODO, XXX), items without a summary, an empty intro or section,
                 a subject past 78 characters, the email's size against Gmail's clipping
    already sent an item whose link went out in an earlier issue (hand-added ones too)
    placeholders notes (not warnings): the starter's sender and readers left at example.com, .org or .net
    links        every link of the issue fetched: 4xx and 5xx, no answer, TLS errors, a redirect to the site's
                 home page, http:// where https:// answers

An error stops `digest send` and `digest run` (unless --force); a warning is told. Links are fetched
concurrently, a few at a time per host, through collect's guarded transport (never to link-local or metadata
addresses, nor to loopback and private ones unless check.private), and what each answered is kept
check.cache_hours in the database, so that a second check, and the send after it, fetch nothing again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import sqlite_utils

from digest import store
from digest.errors import ConfigError
from digest.issue.draft import draft_path, parse_draft, read_draft
from digest.issue.render import GMAIL_CLIP_BYTES, WARN_BYTES, personalize, render_issue, resolve_subject
from digest.issue.unsubscribe_link import longest_url
from digest.models import Draft
from digest.settings.config import CheckSettings, Config
from digest.settings.subscribers import read_subscribers
from digest.text import cut_at_word
from digest.urls import clean_url, is_http_url, url_key

ERROR, WARNING, NOTE = "error", "warning", "note"  # a note: about the setup, not the issue; check alone tells it
SUBJECT_CHARS = 78  # past this, inboxes cut the subject
# An editor's marker, in capitals, on its own: "TK", "TODO: link", "[XXX]"; not "Building TODO apps" (a word
# follows) nor "Python/TK" (part of a name) nor inside a URL.
PLACEHOLDER = re.compile(r"(?<![\w/.-])(TK|TODO|XXX|FIXME|TBD)(?![\w/.-])(?!\s+[a-z])")
_UNESCAPE = re.compile(r"\\(?=[\\`*_\[\]<>&])")  # Markdown's backslash before a character it would read
_URL_IN_TEXT = re.compile(r"https?://[^\s<>\"'\]]+")


@dataclass(frozen=True)
class Finding:
    severity: str  # ERROR, WARNING or NOTE
    where: str  # "subject", "intro", "sponsor", "News #2 “A title”"
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.where}: {self.message}"


@dataclass
class CheckReport:
    issue: str
    findings: list[Finding] = field(default_factory=list)
    links: int = 0  # links of the issue
    fetched: int = 0  # of which fetched now (the others answered within check.cache_hours)
    seconds: float = 0.0

    @property
    def errors(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.severity == WARNING]

    @property
    def notes(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.severity == NOTE]

    def refusal(self, path: object) -> str:
        """Why a send stops, in one line (the errors, then what to do)."""
        errors = "; ".join(f"{finding.where}: {finding.message}" for finding in self.errors[:5])
        more = f" (and {len(self.errors) - 5} more)" if len(self.errors) > 5 else ""
        return (
            f"{self.issue}: {len(self.errors)} error(s) found by the checks: {errors}{more}. Fix {path} "
            f"(digest check lists them all), or add --force to send it as it is"
        )

    @property
    def summary(self) -> str:
        links = f"{self.links} links ({self.fetched} fetched now)" if self.links else "links not checked"
        return (
            f"check {self.issue}: {len(self.errors)} error(s), {len(self.warnings)} warning(s); {links} "
            f"in {self.seconds:.1f} s"
        )


def check_issue(
    config: Config,
    db: sqlite_utils.Database,
    issue_id: str,
    *,
    draft: Draft | None = None,
    links: bool | None = None,
    size: bool = True,
    fetch: bool = True,
    now: datetime | None = None,
) -> CheckReport:
    """Every check of the issue's draft (read from drafts/ unless given). `links` overrides check.links; `size`
    False leaves the size to the caller (a send measures the copy its backend sends); `fetch` False judges the
    links by their cached answers only (the preview, at every save)."""
    started = time.perf_counter()
    now = now or datetime.now(UTC)
    draft = draft or read_draft(draft_path(config.drafts_dir, issue_id))
    report = CheckReport(issue=issue_id)
    report.findings += content_findings(draft)
    if size:
        report.findings += size_findings(config, draft)
    report.findings += already_sent_findings(db, draft)
    if config.check.links if links is None else links:
        report.links, report.fetched, found = link_findings(db, config.check, issue_links(draft), now, fetch=fetch)
        report.findings += found
    report.findings += example_findings(config)
    report.seconds = time.perf_counter() - started
    return report


# --- placeholders --------------------------------------------------------------------------

EXAMPLE_DOMAINS = ("example.com", "example.org", "example.net")  # RFC 2606: reserved, no mail arrives there


def _example_domain(address: str) -> str | None:
    domain = address.rpartition("@")[2].lower().rstrip(".")
    return next((name for name in EXAMPLE_DOMAINS if domain == name or domain.endswith("." + name)), None)


def example_findings(config: Config) -> list[Finding]:
    """Notes, neither errors nor the issue's warnings (the tests and the demo use example.com on purpose): a
    sender at an example domain, whom no one can reply to, and the readers of subscribers.csv there, who get
    nothing (the starter's). `digest check` prints them; a send, which prints the warnings, does not."""
    findings = []
    sender = parseaddr(config.newsletter.from_address)[1]
    if domain := _example_domain(sender):
        findings.append(
            Finding(
                NOTE,
                "from",
                f"{sender} is a placeholder ({domain} is reserved: no mail arrives there, no one can reply): "
                "set newsletter.from in feeds.yaml",
            )
        )
    path = config.subscribers_path
    with contextlib.suppress(OSError, ConfigError):
        count = _example_readers(path, *(lambda stat: (stat.st_mtime_ns, stat.st_size))(path.stat()))
        if count:
            findings.append(
                Finding(
                    NOTE,
                    "subscribers",
                    f"{count} of {path.name}'s addresses are at example domains (example.com, .org, .net receive "
                    f"no mail): put your readers in {path.name}",
                )
            )
    return findings


@functools.lru_cache(maxsize=4)
def _example_readers(path: Path, mtime_ns: int, size: int) -> int:
    """Active subscribers at an example domain; read again only when the file changes (the preview checks at
    every save)."""
    subscribers, _ = read_subscribers(path)
    return sum(1 for person in subscribers if person.status == "active" and _example_domain(person.email))


# --- content -------------------------------------------------------------------------------


def _items(draft: Draft) -> Iterable[tuple[str, str, str, str | None]]:
    """(where, title, summary, url) of each item the email holds."""
    for section in draft.sections:
        for number, item in enumerate(section.items, 1):
            yield f"{section.title} #{number} “{cut_at_word(item.title, 60)}”", item.title, item.summary or "", item.url


def content_findings(draft: Draft) -> list[Finding]:
    findings = []
    subject = resolve_subject(draft)
    texts = [("subject", subject), ("intro", draft.intro)]
    if draft.sponsor is not None:
        texts += [("sponsor", f"{draft.sponsor.title}\n{draft.sponsor.text}")]
    texts += [(where, f"{title}\n{summary}") for where, title, summary, _ in _items(draft)]
    for where, text in texts:
        for word in dict.fromkeys(PLACEHOLDER.findall(text or "")):
            findings.append(Finding(ERROR, where, f"a placeholder is left: {word}"))
    if len(subject) > SUBJECT_CHARS:
        findings.append(Finding(WARNING, "subject", f"{len(subject)} characters: inboxes cut it past {SUBJECT_CHARS}"))
    if not (draft.intro or "").strip():
        findings.append(Finding(WARNING, "intro", "empty"))
    empty = [section.title for section in draft.sections if not section.items and not section.more]
    if empty:
        findings.append(Finding(WARNING, "sections", f"no item, left out of the email: {', '.join(empty)}"))
    for where, _, summary, _ in _items(draft):
        if not summary.strip():
            findings.append(Finding(WARNING, where, "no summary"))
    return findings


def size_findings(config: Config, draft: Draft) -> list[Finding]:
    """The email's HTML as the largest copy a subscriber gets (the longest unsubscribe link in it)."""
    html = render_issue(draft, config.newsletter, config.folder).html
    size = len(personalize(html, unsubscribe_url=longest_url(config.newsletter), name="", html=True).encode())
    if size > GMAIL_CLIP_BYTES:
        return [Finding(ERROR, "email", f"{size / 1024:.0f} KB of HTML: Gmail clips it past 102 KB")]
    if size > WARN_BYTES:
        return [Finding(WARNING, "email", f"{size / 1024:.0f} KB of HTML: close to Gmail's clipping at 102 KB")]
    return []


def already_sent_findings(db: sqlite_utils.Database, draft: Draft) -> list[Finding]:
    """Items whose link (compared as collect compares links: url_key) went out in an earlier issue: as a
    collected post the email held, or as any item of a draft as sent (hand-added ones too)."""
    sent: dict[str, str] = {}
    rows = db.execute(
        "SELECT posts.url_key, issue_posts.issue_id FROM issue_posts JOIN posts ON posts.id = issue_posts.post_id "
        "JOIN issues ON issues.id = issue_posts.issue_id WHERE issue_posts.in_email = 1 "
        "AND (issues.status = 'sent' OR issues.remote_id IS NOT NULL) "
        "AND issues.id != ? AND posts.url_key IS NOT NULL",
        [draft.issue],
    )
    sent.update(rows)
    for issue_id, text in db.execute(
        "SELECT id, sent_draft FROM issues WHERE (status = 'sent' OR remote_id IS NOT NULL) AND id != ? "
        "AND sent_draft IS NOT NULL",
        [draft.issue],
    ):
        try:
            earlier = parse_draft(Path(f"{issue_id}.yaml"), text)
        except ConfigError:
            continue  # a draft this digest cannot read: its collected posts above still count
        for item in earlier.items:  # what the email held: not the posts held back in the draft
            if item.url:
                sent.setdefault(_key(item.url), issue_id)
    findings = []
    for where, _, _, url in _items(draft):
        if url and _key(url) in sent:
            findings.append(Finding(ERROR, where, f"already sent in {sent[_key(url)]}: {url}"))
    return findings


def _key(url: str) -> str:
    return url_key(clean_url(url) or url)


# --- links ---------------------------------------------------------------------------------


def issue_links(draft: Draft) -> dict[str, str]:
    """Each http(s) link of the issue → where it is (the first place, when it is in several)."""
    links: dict[str, str] = {}
    for where, _, _, url in _items(draft):
        if url and url.startswith(("http://", "https://")):
            links.setdefault(url, where)
    if draft.sponsor is not None and draft.sponsor.url:
        links.setdefault(draft.sponsor.url, "sponsor")
    texts = [("intro", draft.intro), ("sponsor", draft.sponsor.text if draft.sponsor else "")]
    texts += [(where, summary) for where, _, summary, _ in _items(draft)]
    for where, text in texts:  # links written in the prose, bare or as Markdown's [text](url)
        for url in _URL_IN_TEXT.findall(text or ""):
            url = _UNESCAPE.sub("", url).rstrip(".,;:!?")  # a feed's summary is written with `\_` for `_`
            while url.endswith(")") and url.count(")") > url.count("("):  # "(see https://x/y)": not the link's
                url = url[:-1].rstrip(".,;:!?")
            if is_http_url(url):
                links.setdefault(url, where)
    return links


@dataclass
class LinkResult:
    url: str
    status: int | None = None  # of the last answer, after redirects
    final_url: str | None = None
    error: str | None = None  # no answer: why
    https_works: bool | None = None  # an http:// link whose https:// twin answered below 400


def link_findings(
    db: sqlite_utils.Database, settings: CheckSettings, links: dict[str, str], now: datetime, *, fetch: bool = True
) -> tuple[int, int, list[Finding]]:
    """(links, fetched now, findings): each link fetched unless its answer is cached, the new answers kept;
    without `fetch`, a link with no cached answer is left out."""
    since = store.iso(now - timedelta(hours=settings.cache_hours))
    results = {url: _cached(db, url, since) for url in links}
    stale = [url for url, result in results.items() if result is None] if fetch else []
    if stale:
        fetched = asyncio.run(_fetch_all(stale, settings))
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
    findings = []
    for url, where in links.items():
        result = results[url]
        if result is not None:  # None: not fetched (fetch False) and not cached
            findings += _judge(result, where)
    return len(links), len(stale), findings


def _cached(db: sqlite_utils.Database, url: str, since: str) -> LinkResult | None:
    row = db.execute(
        "SELECT status, final_url, error, https_works FROM link_checks WHERE url = ? AND checked_at >= ?", [url, since]
    ).fetchone()
    if row is None:
        return None
    status, final_url, error, https_works = row
    return LinkResult(url, status, final_url, error, None if https_works is None else bool(https_works))


def _judge(result: LinkResult, where: str) -> list[Finding]:
    url = result.url
    if result.error is not None:
        severity = ERROR if result.error.startswith("cannot connect: cannot resolve") else WARNING  # no such host
        return [Finding(severity, where, f"{url}: {result.error}")]
    findings = []
    if result.status is not None and result.status >= 400:
        findings.append(Finding(ERROR, where, f"{url} answers {result.status}"))
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

        return list(await asyncio.gather(*(one(url) for url in urls)))


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
        result.error = f"no answer within {timeout:g} s"
    except httpx.TooManyRedirects:
        result.error = "more than 10 redirects"
    except httpx.ConnectError as exc:
        text = str(exc)
        if text.startswith(REFUSED) and "(set `private: true`" in text:  # feeds' words: say what a check can do
            text = text.split(" (set `private: true`", 1)[0] + " (check.private: true fetches such links)"
        is_tls = "SSL" in text or "certificate" in text.lower()
        result.error = f"TLS: {text}" if is_tls else f"cannot connect: {text or type(exc).__name__}"
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    except ssl.SSLError as exc:
        result.error = f"TLS: {exc}"
    except Exception as exc:  # a host name IDNA refuses (`a..b`), a label too long: that link's error only
        result.error = f"cannot connect: cannot resolve: {type(exc).__name__}: {exc}"
    return result
