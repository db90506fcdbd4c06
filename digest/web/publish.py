"""`digest publish`: the static archive of sent issues, a folder that any web server can serve.

    index.html                  the sent issues, newest first, the feeds, and the signup form
    issues/<issue>/index.html   an issue's email as a web page: no per-subscriber links, a navigation bar
    feed.xml, feed.json         the newest issues in Atom 1.0 and JSON Feed 1.1: full content, absolute links

A file is written (atomically) only when its bytes change, and an issue's page is not even rendered when its
inputs are those of the last publish. The manifest (.digest-publish.json) keeps, for each file, a hash of what
made it (the draft as sent, the issues its navigation links to, every template file, the newsletter's
settings, digest's version) and a hash of its bytes, so that a file changed or deleted by hand is made again;
and, for each issue, the hash of its draft and its subject, so that an unchanged draft is not even parsed.
Measured on 200 issues of 20 items: 2.2 s to publish them first (about 10 ms of MJML and premailer each),
40 ms to publish them again unchanged (hashing the drafts and the files; nothing parsed or rendered).
"""

from __future__ import annotations

import hashlib
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

import sqlite_utils

from digest import __version__
from digest.errors import BadWeek, ConfigError, SetupError
from digest.issue.draft import draft_path, parse_draft, write_atomically
from digest.issue.render import (
    after_body_tag,
    forget_templates,
    issue_context,
    personalize,
    render_issue,
    render_page,
    template_folders,
)
from digest.issue.weeks import parse_week
from digest.models import Draft
from digest.settings.config import Config, PublishSettings
from digest.settings.yamlfile import read_text_file
from digest.store import from_iso
from digest.text import one_line

MANIFEST = ".digest-publish.json"
_MANIFEST_FORMAT = 1
INDEX, ATOM_FEED, JSON_FEED = "index.html", "feed.xml", "feed.json"
_ATOM = "http://www.w3.org/2005/Atom"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
JSON_FEED_VERSION = "https://jsonfeed.org/version/1.1"
_HEAD_END = re.compile(r"</head\s*>", re.IGNORECASE)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
# What only Outlook's Word engine reads: conditional comments (a downlevel-revealed one's markers only, its
# content is for everyone), the VML and Office namespaces, and mso- declarations in styles.
_OUTLOOK_ONLY = re.compile(
    r"<!--\[if [^\]]*\]><!-->|<!--<!\[endif\]-->|<!--\[if [^\]]*\]>.*?<!\[endif\]-->|\s+xmlns:[vo]=\"[^\"]*\"",
    re.DOTALL,
)
_STYLES = re.compile(r"<style\b[^>]*>.*?</style\s*>|\bstyle=\"[^\"]*\"", re.DOTALL | re.IGNORECASE)
_MSO_DECLARATION = re.compile(r"\bmso-[\w-]+\s*:[^;\"}]*;?")
_NO_SENT_DRAFT = (
    "the database holds no copy of the draft as sent (a send through Buttondown by a release before 0.2), "
    "and this file is missing"
)


@dataclass
class PublishReport:
    out: Path
    issues: int = 0  # sent issues in the archive
    written: list[str] = field(default_factory=list)  # paths relative to out that were (re)written
    unchanged: int = 0  # files left as they were
    warnings: list[str] = field(default_factory=list)  # issues left out of the archive, settings that do not fit


@dataclass
class _Issue:
    """A sent issue as the archive shows it. Its draft is parsed only when a page or a feed is made from it."""

    id: str
    sent_at: datetime  # UTC
    path: Path  # where the draft would be: names it in errors
    text: str  # the draft as sent
    digest: str  # sha256 of `text`
    subject: str = ""
    _draft: Draft | None = None

    @property
    def draft(self) -> Draft:
        if self._draft is None:
            self._draft = parse_draft(self.path, self.text)
        return self._draft

    @property
    def page(self) -> str:
        return f"issues/{self.id}/index.html"


def site_url(config: Config) -> str:
    """The site's absolute URL, ending in "/": every link of the archive and the feeds is made from it."""
    url = config.newsletter.site_url
    if not url:
        raise SetupError(f"{config.path}: newsletter.site_url is required to publish (the feeds' links are absolute)")
    return url if url.endswith("/") else url + "/"


def site_context(config: Config) -> dict[str, Any]:
    """What web/base.html.j2 needs; the site's other pages (signup, confirmation) pass it too."""
    title = one_line(config.newsletter.title)
    return {
        "lang": one_line(config.newsletter.language) or "en",
        "newsletter_title": title,
        "title": title,
        "site_url": site_url(config),
    }


def publish(
    config: Config, db: sqlite_utils.Database, *, out: Path | None = None, now: datetime | None = None
) -> PublishReport:
    """Write the archive of the sent issues into `out` (config.site_dir by default), changing only what changed.

    `now` dates the feeds of an archive with no issue yet (otherwise their newest issue does). A sent issue
    whose draft cannot be found or read is left out, with a warning in the report.
    """
    forget_templates()  # in a long-lived process, an override added since the last publish is seen
    return _Publisher(config, Path(out) if out is not None else config.site_dir).run(db, now or datetime.now(UTC))


class _Publisher:
    """One publish: the settings, the manifest of the last publish and the one being made, the report."""

    def __init__(self, config: Config, out: Path):
        self.config = config
        self.url = site_url(config)
        self.out = out
        self.report = PublishReport(out=out)
        self.manifest = _Manifest(out / MANIFEST)
        self.fingerprint = _fingerprint(config)

    def run(self, db: sqlite_utils.Database, now: datetime) -> PublishReport:
        self.report.warnings.extend(_archive_url_warnings(self.config, self.url))
        issues = self._sent_issues(db)
        self.report.issues = len(issues)
        for number, issue in enumerate(issues):
            previous = issues[number - 1] if number else None
            following = issues[number + 1] if number + 1 < len(issues) else None
            self._issue_page(issue, previous, following)
        newest_first = issues[::-1]
        self._write(INDEX, self._index(newest_first), key="")
        self._feeds(newest_first[: (self.config.publish or PublishSettings()).feed_items], now)
        self.manifest.save()
        return self.report

    # --- the issues ----------------------------------------------------------------

    def _sent_issues(self, db: sqlite_utils.Database) -> list[_Issue]:
        """Sent issues, oldest first, each with the draft it was sent with: the database's copy, else (a send
        through Buttondown by an older release kept none) the draft file. One without either is left out."""
        rows = db.execute(
            "SELECT id, sent_draft, coalesce(sent_at, created_at) AS sent FROM issues WHERE status = 'sent' "
            "ORDER BY sent, id"
        ).fetchall()
        issues = []
        for issue_id, text, sent_at in rows:
            try:
                issues.append(self._issue(issue_id, text, sent_at))
            except (ConfigError, BadWeek) as exc:
                self.report.warnings.append(f"{issue_id}: left out of the archive: {exc}")
        return issues

    def _issue(self, issue_id: str, text: str | None, sent_at: str) -> _Issue:
        parse_week(issue_id)  # the id names a folder of the site: nothing but an ISO week
        path = draft_path(self.config.drafts_dir, issue_id)
        if text is None:
            text = read_text_file(path, _NO_SENT_DRAFT)
        moment = from_iso(sent_at)
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        issue = _Issue(id=issue_id, sent_at=moment, path=path, text=text, digest=_sha256(text.encode("utf-8")))
        known = self.manifest.subject(issue_id, issue.digest)  # parsed by an earlier publish
        issue.subject = known if known is not None else issue_context(issue.draft, self.config.newsletter)["subject"]
        self.manifest.issues[issue_id] = {"draft": issue.digest, "subject": issue.subject}
        return issue

    def _issue_page(self, issue: _Issue, previous: _Issue | None, following: _Issue | None) -> None:
        """The email as the subscribers got it, without their links, and a bar to the next and previous issues."""
        key = _sha256(
            json.dumps([self.fingerprint, issue.digest, previous and previous.id, following and following.id]).encode()
        )
        if self.manifest.fresh(self.out, issue.page, key):
            self.report.unchanged += 1
            return
        folder = self.config.folder
        rendered = render_issue(issue.draft, self.config.newsletter, folder, web=True)
        # an override that knows nothing of `web` keeps its unsubscribe link: it leads to the site instead
        html = personalize(rendered.html, unsubscribe_url=self.url, name="", html=True)
        nav = render_page(
            "web/nav.html.j2",
            {
                "previous": previous and f"../{previous.id}/",
                "archive": "../../",
                "next": following and f"../{following.id}/",
            },
            folder,
        )
        self._write(issue.page, _with_head_links(web_page(html, nav), self._feed_links()), key)

    def _feed_links(self) -> str:
        title = escape(one_line(self.config.newsletter.title), quote=True)
        return (
            f'<link rel="alternate" type="application/atom+xml" title="{title} (Atom)" href="{self.url}{ATOM_FEED}">'
            f'<link rel="alternate" type="application/feed+json" title="{title} (JSON Feed)" '
            f'href="{self.url}{JSON_FEED}">'
        )

    def _index(self, newest_first: list[_Issue]) -> str:
        tz = self.config.newsletter.tz
        issues = [
            {
                "id": issue.id,
                "subject": issue.subject,
                "href": f"issues/{issue.id}/",
                "sent_iso": _rfc3339(issue.sent_at),
                "sent_date": issue.sent_at.astimezone(tz).date().isoformat(),
            }
            for issue in newest_first
        ]
        context = {**site_context(self.config), "signup_url": self.config.signup_url, "issues": issues}
        return render_page("web/index.html.j2", context, self.config.folder)

    # --- the feeds -----------------------------------------------------------------

    def _feeds(self, newest: list[_Issue], now: datetime) -> None:
        """feed.xml and feed.json, made only when an issue in them, or what every page depends on, changed."""
        key = _sha256(json.dumps([self.fingerprint, [(i.id, i.digest, _rfc3339(i.sent_at)) for i in newest]]).encode())
        if self.manifest.fresh(self.out, ATOM_FEED, key) and self.manifest.fresh(self.out, JSON_FEED, key):
            self.report.unchanged += 2
            return
        entries = [self._entry(issue) for issue in newest]
        updated = entries[0]["date"] if entries else _rfc3339(now)
        self._write(ATOM_FEED, self._atom(entries, updated), key)
        self._write(JSON_FEED, self._json_feed(entries), key)

    def _entry(self, issue: _Issue) -> dict[str, str]:
        context = issue_context(issue.draft, self.config.newsletter)
        return {
            "url": f"{self.url}issues/{issue.id}/",
            "title": issue.subject,
            "date": _rfc3339(issue.sent_at),
            "summary": context["preheader"],
            "content": render_page("web/content.html.j2", context, self.config.folder).strip(),
        }

    def _atom(self, entries: list[dict[str, str]], updated: str) -> str:
        """Atom 1.0 (RFC 4287): each entry's id is its page's URL, which never changes."""
        title = one_line(self.config.newsletter.title)
        feed = ET.Element("feed", {"xmlns": _ATOM, _XML_LANG: site_context(self.config)["lang"]})
        ET.SubElement(feed, "title").text = title
        ET.SubElement(feed, "id").text = self.url
        ET.SubElement(feed, "link", rel="self", type="application/atom+xml", href=self.url + ATOM_FEED)
        ET.SubElement(feed, "link", rel="alternate", type="text/html", href=self.url)
        ET.SubElement(feed, "updated").text = updated
        ET.SubElement(ET.SubElement(feed, "author"), "name").text = title
        for item in entries:
            entry = ET.SubElement(feed, "entry")
            ET.SubElement(entry, "id").text = item["url"]
            ET.SubElement(entry, "title").text = item["title"]
            ET.SubElement(entry, "link", rel="alternate", type="text/html", href=item["url"])
            ET.SubElement(entry, "published").text = item["date"]
            ET.SubElement(entry, "updated").text = item["date"]
            if item["summary"]:
                ET.SubElement(entry, "summary").text = item["summary"]
            ET.SubElement(entry, "content", type="html").text = item["content"]
        ET.indent(feed)
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(feed, encoding="unicode") + "\n"

    def _json_feed(self, entries: list[dict[str, str]]) -> str:
        """JSON Feed 1.1 (https://jsonfeed.org/version/1.1), the same entries as the Atom feed."""
        title = one_line(self.config.newsletter.title)
        items = [
            {
                "id": item["url"],
                "url": item["url"],
                "title": item["title"],
                "content_html": item["content"],
                **({"summary": item["summary"]} if item["summary"] else {}),
                "date_published": item["date"],
            }
            for item in entries
        ]
        feed = {
            "version": JSON_FEED_VERSION,
            "title": title,
            "home_page_url": self.url,
            "feed_url": self.url + JSON_FEED,
            "language": site_context(self.config)["lang"],
            "authors": [{"name": title}],
            "items": items,
        }
        return json.dumps(feed, ensure_ascii=False, indent=2) + "\n"

    # --- files ---------------------------------------------------------------------

    def _write(self, name: str, text: str, key: str) -> None:
        """Write the file unless it holds these bytes already, and remember what made it."""
        data = text.encode("utf-8")
        target = self.out / name
        try:
            same = target.read_bytes() == data
        except OSError:
            same = False
        if same:
            self.report.unchanged += 1
        else:
            write_atomically(target, text)
            self.report.written.append(name)
        self.manifest.files[name] = {"key": key, "sha256": _sha256(data)}


class _Manifest:
    """What the last publish made (read) and what this one makes (saved at the end): for each file, a hash of
    its inputs (`key`) and of its bytes; for each issue, the hash of its draft (which parsed) and its subject."""

    def __init__(self, path: Path):
        self.path = path
        self.old_text = ""
        old: dict = {}
        try:
            self.old_text = path.read_text(encoding="utf-8")
            old = json.loads(self.old_text)
        except (OSError, ValueError):
            pass  # none yet, or unreadable: every page is made again, and written only if its bytes changed
        if not isinstance(old, dict) or old.get("format") != _MANIFEST_FORMAT:
            old = {}
        self.old_files: dict = _mapping(old.get("files"))
        self.old_issues: dict = _mapping(old.get("issues"))
        self.files: dict[str, dict[str, str]] = {}
        self.issues: dict[str, dict[str, str]] = {}

    def subject(self, issue_id: str, digest: str) -> str | None:
        """The subject of the issue's draft, when an earlier publish parsed this very draft."""
        known = self.old_issues.get(issue_id)
        if isinstance(known, dict) and known.get("draft") == digest and isinstance(known.get("subject"), str):
            return known["subject"]
        return None

    def fresh(self, out: Path, name: str, key: str) -> bool:
        """Whether the file was made from these inputs and still holds the bytes written then."""
        entry = self.old_files.get(name)
        if not isinstance(entry, dict) or entry.get("key") != key:
            return False
        try:
            data = (out / name).read_bytes()
        except OSError:
            return False
        if _sha256(data) != entry.get("sha256"):
            return False
        self.files[name] = entry
        return True

    def save(self) -> None:
        text = json.dumps(
            {"format": _MANIFEST_FORMAT, "files": self.files, "issues": self.issues}, indent=1, sort_keys=True
        )
        if text + "\n" != self.old_text:
            write_atomically(self.path, text + "\n")


def _mapping(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _fingerprint(config: Config) -> str:
    """A hash of what every page depends on besides its issue: digest's version, the newsletter's settings and
    every template file (built in, or the newsletter folder's own: any may be included by another)."""
    hashed = hashlib.sha256(json.dumps([__version__, asdict(config.newsletter)], default=str).encode())
    for rank, folder in enumerate(template_folders(config.folder)):
        files = sorted(path for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else []
        for path in files:
            hashed.update(f"{rank}:{path.relative_to(folder)}:{_sha256(path.read_bytes())}\n".encode())
    return hashed.hexdigest()


def _archive_url_warnings(config: Config, url: str) -> list[str]:
    wanted = url + "issues/{issue}/"
    archive_url = config.newsletter.archive_url
    if archive_url and archive_url != wanted:
        return [
            f"{config.path}: newsletter.archive_url is {archive_url}, but the issues' pages are published at "
            f"{wanted}: the emails' “View in browser” links do not lead to them"
        ]
    return []


def web_page(email_html: str, nav: str) -> str:
    """The email as a web page: the navigation bar, then the email as the page's <main>, without what only
    Outlook reads."""
    html = _OUTLOOK_ONLY.sub("", email_html)
    html = _STYLES.sub(lambda style: _MSO_DECLARATION.sub("", style.group()), html)
    ends = list(_BODY_END.finditer(html))
    end = ends[-1].start() if ends else len(html)
    return after_body_tag(html[:end] + "</main>" + html[end:], nav + "<main>")


def _with_head_links(html: str, links: str) -> str:
    return _HEAD_END.sub(lambda match: links + match.group(), html, count=1)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
