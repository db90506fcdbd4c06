"""Plain records passed between the stages of the data flow."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum

# Per-subscriber parts are substituted into the finished bytes of the rendered
# email (render once per issue, never per subscriber). These markers stand in
# for them; render.py guarantees feed content cannot produce them.
UNSUBSCRIBE_URL_MARK = "%%DIGEST_UNSUBSCRIBE_URL%%"
SUBSCRIBER_NAME_MARK = "%%DIGEST_SUBSCRIBER_NAME%%"


class IssueStatus(StrEnum):
    """An issue goes draft → sending (ledger rows, or handed to a backend) → sent."""

    DRAFT = "draft"
    SENDING = "sending"
    SENT = "sent"


class DeliveryStatus(StrEnum):
    """A ledger row goes pending → sending (committed before the message) → sent or failed; back to pending
    for a retry; skipped when the address left the list before it was mailed."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"


class FeedOutcome(StrEnum):
    NEW = "new"  # new posts were stored
    UNCHANGED = "unchanged"
    FAILED = "failed"


class Placement(StrEnum):
    """Where a build put a post: the email's items, or held back in the draft."""

    ITEM = "item"
    MORE = "more"  # over its feed's max_items
    STALE = "stale"  # dated long before the issue's week


@dataclass
class Post:
    """One entry of a feed, parsed and sanitized, before storage."""

    id: str  # stable: derived from the feed URL and the guid, else the link's url_key, else content_key
    feed_url: str
    canonical_url: str | None  # the article's own link: absolute http(s), tracking parameters removed
    title: str  # plain text, at most 200 characters
    author: str | None
    summary: str  # plain text, one or two sentences, at most 300 characters
    content_html: str  # sanitized HTML (strict allow-list, absolute links only)
    published_at: datetime | None  # UTC; None when the feed gives no date
    guid: str | None = None  # the feed's id of the entry, when it has one that identifies it
    url_key: str | None = None  # the link's identity (urls.url_key): one article across feeds
    content_key: str | None = None  # hash of the normalized title and text: a link-less entry's identity
    source: str | None = None  # the article's site, as shown under the item ("djangoproject.com")
    image_url: str | None = None  # the entry's thumbnail (media:thumbnail, an image enclosure), absolute https
    image_width: int | None = None
    image_height: int | None = None


@dataclass
class ParsedFeed:
    title: str | None
    posts: list[Post]
    error: str | None = None  # set when the document is not a usable feed
    error_from_document: bool = True  # False: the parsing process failed, not these bytes (fetch them again)
    warning: str | None = None  # set when posts were recovered from a document that is not well-formed
    site_url: str | None = None  # the home page the feed belongs to (its channel link)


@dataclass
class DraftItem:
    title: str
    url: str | None = None  # None: the post has no link of its own, and its title is shown unlinked
    summary: str = ""
    source: str = ""  # the source's domain, e.g. "djangoproject.com"
    author: str | None = None
    published: date | None = None
    site: str | None = None  # a link-less post's feed site: the editor may make it the url
    image: str | None = None  # a small image beside the item (a feed's `images: true`), with its size
    image_width: int | None = None
    image_height: int | None = None
    reason: str | None = None  # held back by the checks of an unattended run: why (a dead link, already sent)


@dataclass
class MoreGroup:
    """A feed's posts beyond its max_items: the email says "and N more from <feed>", linked to its site."""

    feed: str
    site: str | None = None
    items: list[DraftItem] = field(default_factory=list)


@dataclass
class DraftSection:
    title: str
    items: list[DraftItem] = field(default_factory=list)  # in the email
    more: list[MoreGroup] = field(default_factory=list)  # held back: counted in the email
    stale: list[DraftItem] = field(default_factory=list)  # held back: dated long before the week
    held: list[DraftItem] = field(default_factory=list)  # held back by the checks of an unattended run (reason)


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
    markdown: bool = False  # its prose is Markdown (drafts built since 0.3); a draft of before is plain text

    @property
    def items(self) -> list[DraftItem]:
        """The items the email holds."""
        return [item for section in self.sections for item in section.items]

    @property
    def held_more(self) -> int:
        return sum(len(group.items) for section in self.sections for group in section.more)

    @property
    def held_stale(self) -> int:
        return sum(len(section.stale) for section in self.sections)

    @property
    def held_checks(self) -> list[tuple[str, DraftItem]]:
        """(section, item) of each item the checks of an unattended run held back, with its reason."""
        return [(section.title, item) for section in self.sections for item in section.held]


@dataclass
class RenderedIssue:
    """The finished email of an issue, with the per-subscriber marks still in it."""

    subject: str
    preheader: str
    html: str
    text: str
