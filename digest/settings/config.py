"""feeds.yaml: the newsletter's settings and its feeds, read into typed objects, each value checked.

Every problem is a ConfigError whose message names the file, the line and the field. Sections of settings
(`collect:`, and one per backend: `smtp:`, `buttondown:`) are described as dataclasses and read by
`sections.read_section`; each backend brings its own section, passed in by the caller that chooses the backends
(`load_config(path, backends=digest.send.registry())`): the settings never import a backend.
"""

from __future__ import annotations

import contextlib
import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import time
from email.utils import parseaddr
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from digest.errors import ConfigError
from digest.settings.folders import check_secret_files_apart, check_site_apart
from digest.settings.patterns import check_placeholders, check_subject
from digest.settings.sections import DAY, HOUR, Renamed, read_section, setting
from digest.settings.subscribers import is_valid_email
from digest.settings.yamlfile import MappingReader, YamlNode, check_url, load_yaml_with_lines, read_text_file
from digest.text import one_line

DEFAULT_SECTIONS = ("News", "Articles", "Events", "Videos", "Projects", "Jobs")
DEFAULT_SUBJECT = "{title}: {start:%b %-d} – {end:%b %-d, %Y}"
# RFC 2919's list-id: a dot-atom whose last part is a domain ("weekly.digest.example.com").
_MAX_LIST_ID = 255
_LIST_ID = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)+$")


@dataclass(frozen=True)
class Newsletter:
    title: str = "Weekly Digest"
    from_address: str = "Weekly Digest <digest@example.com>"
    reply_to: str | None = None
    timezone: str = "UTC"
    subject: str = DEFAULT_SUBJECT
    sections: tuple[str, ...] = DEFAULT_SECTIONS
    language: str = "en"
    site_url: str | None = None
    archive_url: str | None = None  # may hold {issue}, e.g. https://example.com/archive/{issue}/
    unsubscribe_url: str | None = None  # may hold {token} and {email}
    postal_address: str | None = None
    reason: str = "You are receiving this email because you subscribed to this newsletter."
    list_id: str | None = None  # the List-Id header's id (RFC 2919); derived from title and site_url when None
    stale_after_weeks: int = 4  # posts dated longer before the week are held back for the editor
    approval: str = "none"  # "required": `digest run` mails the editors a review copy and sends only once approved
    editors: tuple[str, ...] = ()  # who gets the review copies
    approval_deadline: tuple[int, time] | None = None  # (weekday, Monday 0; time): send unapproved after it

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def list_identifier(self) -> str:
        """RFC 2919's list-id, which also names the newsletter in unsubscribe tokens: `list_id`, else the
        title's words joined by hyphens, a dot, and the domain of site_url (else of the sender):
        `django-digest.digest.example.com`. Accents are dropped (`Café` gives `cafe`); a long title is cut at
        a hyphen so that the id keeps within RFC 2919's 255 octets."""
        if self.list_id:
            return self.list_id
        letters = "".join(
            c for c in unicodedata.normalize("NFKD", one_line(self.title)) if not unicodedata.combining(c)
        )
        label = "-".join(re.findall(r"[a-z0-9]+", letters.lower())) or "newsletter"
        domain = urlsplit(self.site_url or "").hostname or parseaddr(self.from_address)[1].rpartition("@")[2]
        domain = domain or "localhost"
        room = _MAX_LIST_ID - len(domain.encode()) - 1  # RFC 2919: the whole id is at most 255 octets
        if len(label) > room:
            label = label[: room + 1].rpartition("-")[0] or label[: max(room, 1)]
        return f"{label}.{domain}"


@dataclass(frozen=True)
class FeedConfig:
    name: str
    url: str
    section: str
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_items: int = 25  # posts of this feed in one issue's email; the rest are listed in the draft
    private: bool = False  # may be fetched from loopback and private addresses (an intranet feed)
    summaries: str = "feed"  # "page": a post without text gets its page's description (title-only feeds)
    images: bool = False  # each item shows its entry's thumbnail (or its page's og:image), small
    line: int | None = None  # where the feed is declared in feeds.yaml

    def wants(self, title: str, summary: str) -> bool:
        """Include/exclude keywords, matched case-insensitively against title and summary."""
        haystack = f"{title}\n{summary}".casefold()
        if self.include and not any(word.casefold() in haystack for word in self.include):
            return False
        return not any(word.casefold() in haystack for word in self.exclude)


@dataclass(frozen=True)
class CollectSettings:
    concurrency: int = setting(128, minimum=1, maximum=10_000)  # feeds fetched at once
    timeout: float = setting(20.0, above=0, maximum=HOUR)  # seconds for connecting and for each read
    deadline: float = setting(60.0, above=0, maximum=DAY)  # seconds for the whole of one feed, every attempt included
    max_megabytes: float = setting(10.0, above=0, maximum=1024)  # a larger answer (decoded) is refused
    max_attempts: int = setting(3, minimum=1, maximum=100)  # for a timeout, a dropped connection, a 429 or a 5xx
    backoff: float = setting(0.5, minimum=0, maximum=HOUR)  # seconds before the first retry, doubled each time

    @property
    def max_bytes(self) -> int:
        return int(self.max_megabytes * 2**20)

    def check(self, reader: MappingReader) -> None:
        if self.max_bytes < 1:
            raise reader.error("max_megabytes", "must be at least one byte")


# Keys of earlier releases, still read.
COLLECT_RENAMED = {
    "retries": Renamed("max_attempts", lambda retries: retries + 1, hint=" (one attempt more than retries)")
}


@dataclass(frozen=True)
class CheckSettings:
    """`check:`: how `digest check` (and `send` and `run`, which run it) checks the issue's links."""

    links: bool = True  # fetch every link of the issue
    timeout: float = setting(10.0, above=0, maximum=HOUR)  # seconds for one link, redirects included
    deadline: float = setting(60.0, above=0, maximum=DAY)  # seconds for the whole link check, every link included
    concurrency: int = setting(16, minimum=1, maximum=1000)  # links in flight at once
    per_host: int = setting(2, minimum=1, maximum=100)  # links in flight to one host: a polite visitor
    cache_hours: float = setting(24.0, minimum=0, maximum=24 * 365)  # a link checked this recently is not fetched
    private: bool = False  # also fetch links to loopback and private addresses (an intranet newsletter)


@dataclass(frozen=True)
class PublishSettings:
    """`publish:`: the static archive `digest publish` writes (and `digest serve` serves)."""

    dir: str = "site"  # the folder, relative to feeds.yaml
    feed_items: int = setting(20, minimum=1, maximum=1000)  # the newest issues in feed.xml and feed.json
    signup_url: str | None = None  # where the archive's signup form posts; {site_url}subscribe with serve:

    def check(self, reader: MappingReader) -> None:
        check_url(reader, "signup_url", self.signup_url, site=True)
        folder = reader.path.resolve().parent
        site = (folder / self.dir).resolve()
        if folder == site or folder.is_relative_to(site):
            raise reader.error(
                "dir", "must be a folder of its own: served, it would hand out feeds.yaml, the drafts and digest.db"
            )


@dataclass(frozen=True)
class ServeSettings:
    """`serve:`: the web endpoints of `digest serve` (signup, confirmation, unsubscribe, the archive)."""

    host: str = "127.0.0.1"
    port: int = setting(8080, minimum=0, maximum=65535)
    signup: bool = True  # POST /subscribe, and the archive's signup form
    subscribes_per_hour: int = setting(10, minimum=1, maximum=100_000)  # per client address
    confirmations_per_day: int = setting(3, minimum=1, maximum=100)  # confirmation mails per inbox
    confirmations_per_hour: int = setting(100, minimum=1, maximum=100_000)  # all of them: a cap on what a flood sends


@dataclass(frozen=True)
class Config:
    path: Path
    newsletter: Newsletter
    feeds: tuple[FeedConfig, ...]
    collect: CollectSettings = field(default_factory=CollectSettings)
    backends: dict[str, Any] = field(default_factory=dict)  # backend name -> its settings (send/)
    drafts_dir: Path = Path("drafts")
    subscribers_path: Path = Path("subscribers.csv")
    check: CheckSettings = field(default_factory=CheckSettings)
    publish: PublishSettings | None = None  # None: no `publish:` section (digest run does not publish)
    serve: ServeSettings | None = None  # None: no `serve:` section
    warnings: tuple[str, ...] = ()  # deprecated keys read: one line each, for the CLI to show

    @cached_property
    def _feeds_by_url(self) -> dict[str, FeedConfig]:
        return {feed.url: feed for feed in self.feeds}

    def feed(self, url: str) -> FeedConfig | None:
        return self._feeds_by_url.get(url)

    @property
    def folder(self) -> Path:
        """The newsletter's folder: where feeds.yaml is, and its own templates/ if any."""
        return self.path.resolve().parent

    @property
    def site_dir(self) -> Path:
        """Where `digest publish` writes the archive (publish.dir, else site/ beside feeds.yaml)."""
        return self.folder / (self.publish or PublishSettings()).dir

    @property
    def signup_url(self) -> str | None:
        """Where the archive's signup form posts: publish.signup_url, else /subscribe of `digest serve`."""
        if self.publish and self.publish.signup_url:
            return self.publish.signup_url
        if self.serve and self.serve.signup and self.newsletter.site_url:
            return self.newsletter.site_url + "subscribe"
        return None


def _newsletter(path: Path, reader: MappingReader | None) -> Newsletter:
    if reader is None:
        return Newsletter()
    fields = {
        "title": "title",
        "from": "from_address",
        "reply_to": "reply_to",
        "timezone": "timezone",
        "subject": "subject",
        "language": "language",
        "site_url": "site_url",
        "archive_url": "archive_url",
        "unsubscribe_url": "unsubscribe_url",
        "postal_address": "postal_address",
        "reason": "reason",
    }
    reader.check_keys(
        set(fields) | {"sections", "list_id", "stale_after_weeks", "approval", "editors", "approval_deadline"}
    )
    values: dict[str, Any] = {}
    for key, attr in fields.items():
        value = reader.get(key, str)
        if value is not None:
            values[attr] = value
    values["stale_after_weeks"] = reader.number(
        "stale_after_weeks", int, Newsletter.stale_after_weeks, minimum=1, maximum=520
    )
    list_id = reader.get("list_id", str)
    if list_id is not None:
        list_id = list_id.strip().removeprefix("<").removesuffix(">")
        if not _LIST_ID.match(list_id):
            raise reader.error("list_id", f"must look like name.example.com (RFC 2919), got {list_id!r}")
        values["list_id"] = list_id
    for key in ("site_url", "archive_url", "unsubscribe_url"):
        check_url(reader, key, values.get(key), site=True)
    for key in ("title", "from", "reply_to", "subject"):
        reader.one_line(key, values.get(fields[key]))
    for key in ("from", "reply_to"):
        if fields[key] in values:
            values[fields[key]] = _mailbox(reader, key, values[fields[key]])
    check_placeholders(reader, "archive_url", values.get("archive_url"), allowed={"issue"}, required=set())
    check_placeholders(
        reader, "unsubscribe_url", values.get("unsubscribe_url"), allowed={"token", "email"}, required={"token"}
    )
    timezone = values.get("timezone", "UTC")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise reader.error("timezone", f"unknown time zone {timezone!r}") from None
    _approval(reader, values)
    sections = reader.words("sections")
    if sections:
        if len(set(sections)) != len(sections):
            raise reader.error("sections", "lists a section twice")
        values["sections"] = sections
    newsletter = Newsletter(**values)
    check_subject(reader, newsletter.subject, newsletter.title)
    return newsletter


def _web_defaults(top: MappingReader, newsletter: Newsletter, section: str, serving: bool) -> Newsletter:
    """With a web side, site_url is required (it makes every link of the archive and the feeds absolute) and
    ends with a slash; archive_url defaults to its issue pages, and with `serve:` unsubscribe_url to its page."""
    if not newsletter.site_url:
        raise top.error(section, "needs newsletter.site_url: the archive's and the emails' links are made from it")
    site_url = newsletter.site_url if newsletter.site_url.endswith("/") else newsletter.site_url + "/"
    unsubscribe_url = newsletter.unsubscribe_url
    if serving and not unsubscribe_url:
        unsubscribe_url = site_url + "unsubscribe?token={token}"
    return replace(
        newsletter,
        site_url=site_url,
        archive_url=newsletter.archive_url or site_url + "issues/{issue}/",
        unsubscribe_url=unsubscribe_url,
    )


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _approval(reader: MappingReader, values: dict[str, Any]) -> None:
    """approval (none or required), editors (addresses), approval_deadline ("friday 17:00")."""
    approval = (reader.get("approval", str) or "none").strip()
    if approval not in ("none", "required"):
        raise reader.error("approval", f"must be none or required, got {approval!r}")
    editors = reader.words("editors")
    for editor in editors:
        if not is_valid_email(editor):
            raise reader.error("editors", f"not an address: {editor!r}")
    if approval == "required" and not editors:
        raise reader.error("approval", "required: list the editors who get the review copy (editors: [...])")
    values.update(approval=approval, editors=editors)
    deadline = reader.get("approval_deadline", str)
    if deadline is not None:
        match = re.fullmatch(r"\s*([a-z]+)\s+(\d{1,2}):(\d\d)\s*", deadline.lower())
        if not match or match[1] not in WEEKDAYS or int(match[2]) > 23 or int(match[3]) > 59:
            raise reader.error(
                "approval_deadline", f"must be a weekday and a time, such as 'friday 17:00', got {deadline!r}"
            )
        values["approval_deadline"] = (WEEKDAYS.index(match[1]), time(int(match[2]), int(match[3])))


def _mailbox(reader: MappingReader, key: str, value: str) -> str:
    """A sender or reply-to as a mail header can carry it: the display name without invisible controls, the
    domain in its ASCII (IDNA) form; an address that is not one, or whose local part is not ASCII, is refused."""
    name, address = parseaddr(value)
    local, _, domain = address.rpartition("@")
    with contextlib.suppress(UnicodeError):  # not a domain IDNA can encode: refused just below
        address = f"{local}@{domain.encode('idna').decode('ascii')}" if local and not domain.isascii() else address
    if not is_valid_email(address) or not address.isascii():
        raise reader.error(
            key,
            f'must be an email address with an ASCII local part, such as "Digest <digest@example.com>", got {value!r}',
        )
    name = one_line(name)
    if not name:
        return address
    if not re.fullmatch(r"[\w .'!-]*", name, re.ASCII):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{address}>"


def _feeds(path: Path, node: YamlNode | None, sections: tuple[str, ...], line: int) -> tuple[FeedConfig, ...]:
    if node is None or node.value is None:
        raise ConfigError(path, line, "feeds", "is required: a list of feeds with name, url and section")
    if not isinstance(node.value, list):
        raise ConfigError(path, node.line, "feeds", "must be a list")
    feeds: list[FeedConfig] = []
    seen: set[str] = set()
    for index, item in enumerate(node.value):
        reader = MappingReader(path, item, f"feeds[{index}]")
        reader.check_keys(
            {"name", "url", "section", "include", "exclude", "max_items", "private", "summaries", "images"}
        )
        summaries = reader.get("summaries", str, "feed").strip()
        if summaries not in ("feed", "page"):
            raise reader.error("summaries", f"must be feed or page, got {summaries!r}")
        url = reader.get("url", str, required=True).strip()
        check_url(reader, "url", url)
        if url in seen:
            raise reader.error("url", "is listed twice")
        seen.add(url)
        section = reader.get("section", str, default=sections[0])
        if section not in sections:
            raise reader.error("section", f"unknown section {section!r} (sections: {', '.join(sections)})")
        name = reader.get("name", str) or urlsplit(url).netloc
        feeds.append(
            FeedConfig(
                name=name,
                url=url,
                section=section,
                include=reader.words("include"),
                exclude=reader.words("exclude"),
                max_items=reader.number("max_items", int, FeedConfig.max_items, minimum=1),
                private=reader.get("private", bool, False),
                summaries=summaries,
                images=reader.get("images", bool, False),
                line=item.line,
            )
        )
    return tuple(feeds)


NOT_FOUND = "not found (run `digest init` to write a starter file)"
TOP_LEVEL = {"newsletter", "feeds", "collect", "drafts_dir", "subscribers", "check", "publish", "serve"}


def database_path(config_path: Path, given: Path | None = None) -> Path:
    """The database: as given, else digest.db next to feeds.yaml, not in the current folder: a command run
    from elsewhere must find the same ledger and unsubscribes, or it would mail everyone again."""
    return given or config_path.parent / "digest.db"


class SectionOwner(Protocol):
    """What brings a section of its own to feeds.yaml (a delivery backend: `smtp:`, `buttondown:`)."""

    def read_settings(self, reader: MappingReader | None, warnings: list[str], environ: Mapping[str, str]) -> Any: ...


def load_config(path: Path | str, backends: Mapping[str, SectionOwner] | None = None) -> Config:
    """Read and check feeds.yaml. `backends` maps a section name to what reads it (digest.send.registry()):
    each is read into `Config.backends`, and a top-level key that is neither a section of digest nor one of
    theirs is refused as unknown.

    Without `backends` (a caller that reads feeds.yaml but sends nothing) the keys outside digest's own sections
    are left unread and unchecked: this stage cannot tell a backend's section from a misspelt key, and refusing
    every backend section would refuse every real feeds.yaml. `Config.backends` is then empty, so such a config
    cannot send. `digest.load_config` and the commands pass the registry, and check everything.
    """
    path = Path(path)
    text = read_text_file(path, NOT_FOUND)
    root = load_yaml_with_lines(path, text)
    if root is None:
        raise ConfigError(path, 1, "feeds", "is required: the file is empty")
    top = MappingReader(path, root, "")
    if backends is not None:
        top.check_keys(TOP_LEVEL | set(backends))
    backends = backends or {}
    newsletter = _newsletter(path, top.sub("newsletter"))
    feeds = _feeds(path, top.mapping.get("feeds"), newsletter.sections, root.line)
    warnings: list[str] = []
    collect = read_section(top.sub("collect"), CollectSettings, warnings, COLLECT_RENAMED)
    settings = {name: backend.read_settings(top.sub(name), warnings, os.environ) for name, backend in backends.items()}
    check = read_section(top.sub("check"), CheckSettings, warnings)
    publish = read_section(top.sub("publish"), PublishSettings, warnings) if "publish" in top.mapping else None
    serve = read_section(top.sub("serve"), ServeSettings, warnings) if "serve" in top.mapping else None
    if publish or serve:
        newsletter = _web_defaults(top, newsletter, "publish" if publish else "serve", serve is not None)
    base = path.resolve().parent
    drafts_dir = base / top.get("drafts_dir", str, "drafts")
    subscribers_path = base / top.get("subscribers", str, "subscribers.csv")
    if publish or serve:
        site = base / (publish or PublishSettings()).dir
        others = {"drafts_dir": drafts_dir, "subscribers": subscribers_path, "database": database_path(path)}
        check_site_apart(top, site, others)
        check_secret_files_apart(site, os.environ)
    return Config(
        path=path,
        newsletter=newsletter,
        check=check,
        publish=publish,
        serve=serve,
        feeds=feeds,
        collect=collect,
        backends=settings,
        drafts_dir=drafts_dir,
        subscribers_path=subscribers_path,
        warnings=tuple(warnings),
    )
