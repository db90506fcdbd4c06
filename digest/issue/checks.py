"""`digest check`: what could go wrong with an issue, found before it is sent.

    content      leftover placeholders (TK, TODO, XXX), items without a summary, an empty intro or section,
                 a subject past 78 characters, the email's size against Gmail's clipping
    already sent an item whose link went out in an earlier issue (hand-added ones too)
    placeholders notes (not warnings): the starter's sender and readers left at example.com, .org or .net
    links        every link of the issue fetched: a link surely gone (404, 410, a host the resolver says does not
                 exist) is an error; bot walls (401, 403, 429, 999), other answers past 400, no answer, TLS errors,
                 a resolver that cannot answer, a link not checked within check.deadline are warnings; so are a
                 redirect to the site's home page and http:// where https:// answers. When most links fail the same
                 way, the network or the resolver is the problem: that is said once, the links are not judged

An error stops `digest send` (unless --force); `digest run` holds back the items a feed brought that an error
is about (issue/holdback.py) and stops on the others; a warning is told. links.py fetches the links.
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from pathlib import Path

import sqlite_utils

from digest import store
from digest.errors import ConfigError
from digest.issue.draft import draft_path, parse_draft, read_draft
from digest.issue.findings import ERROR, NOTE, WARNING, Finding, short_url
from digest.issue.links import link_findings
from digest.issue.render import GMAIL_CLIP_BYTES, WARN_BYTES, personalize, render_issue, resolve_subject
from digest.issue.unsubscribe_link import longest_url
from digest.models import Draft
from digest.settings.config import Config
from digest.settings.subscribers import read_subscribers
from digest.text import cut_at_word
from digest.urls import clean_url, is_http_url, url_key

SUBJECT_CHARS = 78  # past this, inboxes cut the subject
# An editor's marker, in capitals, on its own: "TK", "TODO: link", "[XXX]"; not "Building TODO apps" (a word
# follows) nor "Python/TK" (part of a name) nor inside a URL.
PLACEHOLDER = re.compile(r"(?<![\w/.-])(TK|TODO|XXX|FIXME|TBD)(?![\w/.-])(?!\s+[a-z])")
_UNESCAPE = re.compile(r"\\(?=[\\`*_\[\]<>&])")  # Markdown's backslash before a character it would read
_URL_IN_TEXT = re.compile(r"https?://[^\s<>\"'\]]+")


@dataclass
class CheckReport:
    issue: str
    findings: list[Finding] = field(default_factory=list)
    links: int = 0  # links of the issue
    fetched: int = 0  # of which fetched now (the others answered within check.cache_hours)
    unjudged: int = 0  # without fetching: links with no answer kept (none yet, too old, or failed: not kept)
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
    places = item_places(draft)  # an item's findings that a run may hold it back for: already sent, dead links
    report.findings += [replace(found, item=places.get(found.where)) for found in already_sent_findings(db, draft)]
    if config.check.links if links is None else links:
        urls = issue_links(draft)
        report.links, report.fetched, found = link_findings(db, config.check, urls, now, fetch=fetch)
        report.findings += [replace(finding, item=places.get(finding.where)) for finding in found]
        if not fetch:
            report.unjudged = unkept_links(db, config.check.cache_hours, urls, now)
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


def item_places(draft: Draft) -> dict[str, tuple[int, int]]:
    """Where an item is named in findings → its (section, index) in the draft (the first, for a name twice)."""
    places: dict[str, tuple[int, int]] = {}
    for section_index, section in enumerate(draft.sections):
        for index, item in enumerate(section.items):
            places.setdefault(f"{section.title} #{index + 1} “{cut_at_word(item.title, 60)}”", (section_index, index))
    return places


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


def email_bytes(config: Config, draft: Draft) -> int:
    """The size of the email's HTML as the largest copy a subscriber gets (the longest unsubscribe link in it)."""
    html = render_issue(draft, config.newsletter, config.folder).html
    return len(personalize(html, unsubscribe_url=longest_url(config.newsletter), name="", html=True).encode())


def size_findings(config: Config, draft: Draft) -> list[Finding]:
    """The email's HTML as the largest copy a subscriber gets (the longest unsubscribe link in it)."""
    size = email_bytes(config, draft)
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
            findings.append(Finding(ERROR, where, f"already sent in {sent[_key(url)]}: {short_url(url)}"))
    return findings


def _key(url: str) -> str:
    return url_key(clean_url(url) or url)


# --- links: links.py fetches and judges them ------------------------------------------------


def unkept_links(db: sqlite_utils.Database, cache_hours: float, links: Iterable[str], now: datetime) -> int:
    """How many of the links have no answer kept within cache_hours: a check without fetching does not judge
    them (links.py keeps only answers below 400, so a 403 a run warned of is among them)."""
    since = store.iso(now - timedelta(hours=cache_hours))
    return sum(
        1
        for url in links
        if db.execute("SELECT 1 FROM link_checks WHERE url = ? AND checked_at >= ?", [url, since]).fetchone() is None
    )


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
