"""Plain records passed between the stages of the data flow."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

# Per-subscriber parts are substituted into the finished bytes of the rendered
# email (render once per issue, never per subscriber). These markers stand in
# for them; render.py guarantees feed content cannot produce them.
UNSUBSCRIBE_URL_MARK = "%%DIGEST_UNSUBSCRIBE_URL%%"
SUBSCRIBER_NAME_MARK = "%%DIGEST_SUBSCRIBER_NAME%%"


@dataclass
class Post:
    """One entry of a feed, parsed and sanitized, before storage."""

    id: str  # stable: derived from the feed's guid, else canonical URL, else title+content
    feed_url: str
    canonical_url: str | None  # absolute http(s), tracking parameters and fragment removed
    title: str
    author: str | None
    summary: str  # plain text, one or two sentences, at most ~300 characters
    content_html: str  # sanitized HTML (strict allow-list, absolute links only)
    published_at: datetime | None  # UTC; None when the feed gives no date


@dataclass
class ParsedFeed:
    title: str | None
    posts: list[Post]
    error: str | None = None  # set when the document is not a usable feed
    warning: str | None = None  # set when posts were recovered from a document that is not well-formed


@dataclass
class DraftItem:
    title: str
    url: str
    summary: str = ""
    source: str = ""  # the source's domain, e.g. "djangoproject.com"
    author: str | None = None
    published: date | None = None


@dataclass
class DraftSection:
    title: str
    items: list[DraftItem] = field(default_factory=list)


@dataclass
class Sponsor:
    title: str
    url: str
    text: str = ""


@dataclass
class Draft:
    """The editor's view of one issue: what `digest send` sends."""

    issue: str  # ISO week id, e.g. "2026-W14"
    week_start: date  # Monday
    week_end: date  # Sunday
    subject: str
    preheader: str = ""
    intro: str = ""
    sponsor: Sponsor | None = None
    sections: list[DraftSection] = field(default_factory=list)

    @property
    def items(self) -> list[DraftItem]:
        return [item for section in self.sections for item in section.items]


@dataclass
class RenderedIssue:
    """The finished email of an issue, with the per-subscriber marks still in it."""

    subject: str
    preheader: str
    html: str
    text: str
