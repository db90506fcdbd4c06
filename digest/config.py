"""Reading and validating feeds.yaml, subscribers.csv and the environment.

Every problem is raised as a ConfigError whose message names the file, the
line and the field, so that the CLI can print one line and exit 2.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import string
import unicodedata
from datetime import date
from dataclasses import dataclass, field, replace
from email.utils import parseaddr
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from .text import one_line

DEFAULT_SECTIONS = ("News", "Articles", "Videos", "Projects", "Jobs")
DEFAULT_SUBJECT = "{title}: {start:%b %-d} – {end:%b %-d, %Y}"
# RFC 2919's list-id: a dot-atom whose last part is a domain ("weekly.digest.example.com").
_LIST_ID = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)+$")


class ConfigError(Exception):
    """Bad input in a file the user wrote: the message is one line for the user."""

    def __init__(self, path: Path | str, line: int | None, field: str | None, problem: str):
        self.path, self.line, self.field, self.problem = Path(path), line, field, problem
        where = f"{path}:{line}" if line else str(path)
        what = f"{field}: {problem}" if field else problem
        super().__init__(f"{where}: {what}")


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
    stale_after_weeks: int = 4  # posts dated longer before the issue's week are held back for the editor

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def list_identifier(self) -> str:
        """RFC 2919's list-id, which also names the newsletter in unsubscribe tokens: `list_id`, else the
        title's words joined by hyphens, a dot, and the domain of site_url (else of the sender):
        `django-digest.digest.example.com`."""
        if self.list_id:
            return self.list_id
        label = "-".join(re.findall(r"[a-z0-9]+", one_line(self.title).lower())) or "newsletter"
        domain = urlsplit(self.site_url or "").hostname or parseaddr(self.from_address)[1].rpartition("@")[2]
        return f"{label}.{domain or 'localhost'}"


@dataclass(frozen=True)
class FeedConfig:
    name: str
    url: str
    section: str
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_items: int = 25  # posts of this feed in one issue's email; the rest are listed in the draft
    private: bool = False  # may be fetched from loopback and private addresses (an intranet feed)
    line: int | None = None  # where the feed is declared in feeds.yaml

    def wants(self, title: str, summary: str) -> bool:
        """Include/exclude keywords, matched case-insensitively against title and summary."""
        haystack = f"{title}\n{summary}".casefold()
        if self.include and not any(word.casefold() in haystack for word in self.include):
            return False
        return not any(word.casefold() in haystack for word in self.exclude)


@dataclass(frozen=True)
class CollectSettings:
    concurrency: int = 128  # feeds fetched at once
    timeout: float = 20.0  # seconds for connecting and for each read
    deadline: float = 60.0  # seconds for the whole of one feed: every attempt, redirect and pause
    max_bytes: int = 10 * 1024 * 1024  # a larger answer (decoded) is refused
    retries: int = 2  # extra attempts after a timeout, a dropped connection, a 429 or a 5xx
    backoff: float = 0.5  # seconds before the first retry, doubled each time


@dataclass(frozen=True)
class SmtpSettings:
    host: str = "localhost"
    port: int = 587
    security: str = "starttls"  # starttls | ssl | none
    username: str | None = None
    connections: int = 4
    timeout: float = 30.0
    max_attempts: int = 5
    backoff: float = 1.0  # seconds before the first retry of a 4xx or dropped connection, doubled each time


@dataclass(frozen=True)
class ButtondownSettings:
    api_url: str = "https://api.buttondown.com/v1"
    timeout: float = 30.0
    max_attempts: int = 5  # for 429, 5xx and timeouts
    backoff: float = 1.0  # seconds before the first retry of a 5xx or timeout, doubled each time


@dataclass(frozen=True)
class Config:
    path: Path
    newsletter: Newsletter
    feeds: tuple[FeedConfig, ...]
    collect: CollectSettings = field(default_factory=CollectSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    buttondown: ButtondownSettings = field(default_factory=ButtondownSettings)
    drafts_dir: Path = Path("drafts")
    subscribers_path: Path = Path("subscribers.csv")

    @cached_property
    def _feeds_by_url(self) -> dict[str, FeedConfig]:
        return {feed.url: feed for feed in self.feeds}

    def feed(self, url: str) -> FeedConfig | None:
        return self._feeds_by_url.get(url)


API_URL_ENV = "BUTTONDOWN_API_URL"


# --- YAML with line numbers -------------------------------------------------


class YamlNode:
    """A YAML value with the line it starts on (1-based)."""

    __slots__ = ("value", "line")

    def __init__(self, value: Any, line: int):
        self.value, self.line = value, line


# libyaml's parser when PyYAML has it (its wheels do): 10x faster than the pure-Python one on big drafts.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_DEPTH = 32  # these files nest 6 levels at most; deeper input would overflow the composers' stacks


def _construct(node: yaml.Node, path: Path, scalars: yaml.SafeLoader, where: str = "") -> YamlNode:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        mapping: dict[str, YamlNode] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError(path, key_line, where or None, "a key must be plain text, not a list or mapping")
            key = key_node.value
            field = f"{where}.{key}" if where else key
            if key in mapping:
                raise ConfigError(path, key_line, field, "duplicate key")
            value = _construct(value_node, path, scalars, field)
            value.line = key_line
            mapping[key] = value
        return YamlNode(mapping, line)
    if isinstance(node, yaml.SequenceNode):
        return YamlNode([_construct(item, path, scalars, f"{where}[{index}]") for index, item in enumerate(node.value)],
                        line)
    return YamlNode(_scalar(node, path, scalars, where), line)


def _scalar(node: yaml.ScalarNode, path: Path, scalars: yaml.SafeLoader, where: str) -> Any:
    try:
        return scalars.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:
        raise ConfigError(path, node.start_mark.line + 1, where or None, exc.problem or "unsupported value") from None
    except (ValueError, TypeError, AttributeError, OverflowError):  # e.g. 2026-13-45, !!int x, !!timestamp x
        shown = node.value if len(node.value) <= 40 else node.value[:39] + "…"
        raise ConfigError(path, node.start_mark.line + 1, where or None,
                          f"cannot read {shown!r} as {node.tag.rpartition(':')[2]}") from None


def _check_events(path: Path, text: str) -> None:
    """Refuse anchors and aliases (nothing in these files needs them, and an alias can make a cycle, `feeds: &a
    [*a]`, or a billion laughs) and nesting deeper than MAX_DEPTH, before anything is built from the text."""
    depth = 0
    for event in yaml.parse(text, Loader=YAML_LOADER):
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise ConfigError(path, line, None, f"aliases (*{event.anchor}) are not supported: write the value out")
        if getattr(event, "anchor", None) is not None:
            raise ConfigError(path, line, None, f"anchors (&{event.anchor}) are not supported: write the value out")
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(path, line, None, f"nested more than {MAX_DEPTH} levels deep")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def load_yaml_with_lines(path: Path, text: str) -> YamlNode | None:
    try:
        _check_events(path, text)
        root = yaml.compose(text, Loader=YAML_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError(path, line, None, f"not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, None, None, f"not valid YAML: {exc}") from None
    if root is None:
        return None
    scalars = yaml.SafeLoader("")
    try:
        return _construct(root, path, scalars)
    finally:
        scalars.dispose()


class MappingReader:
    """Typed access to a mapping of _Nodes, raising ConfigError with file, line and field."""

    def __init__(self, path: Path, node: YamlNode, where: str):
        if not isinstance(node.value, dict):
            raise ConfigError(path, node.line, where or None, "must be a mapping of key: value")
        self.path, self.node, self.where = path, node, where
        self.mapping: dict[str, YamlNode] = node.value

    def field_name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def check_keys(self, allowed: set[str]) -> None:
        for key, value in self.mapping.items():
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                raise ConfigError(self.path, value.line, self.field_name(key), f"unknown key (known: {known})")

    def line(self, key: str) -> int:
        return self.mapping[key].line if key in self.mapping else self.node.line

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.path, self.line(key), self.field_name(key), problem)

    def get(self, key: str, kind: type, default: Any = None, required: bool = False) -> Any:
        if key not in self.mapping or self.mapping[key].value is None:
            if required:
                raise self.error(key, "is required")
            return default
        value = self.mapping[key].value
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"must be a {kind.__name__}")
        if kind is float and not math.isfinite(value):
            raise self.error(key, "must be a finite number")
        if kind is str and required and not value.strip():
            raise self.error(key, "must not be empty")
        return value

    def number(self, key: str, kind: type, default: Any, *, minimum: float | None = None,
               above: float | None = None, maximum: float | None = None) -> Any:
        """An int or float setting within its range; out of range is an error, never silently clamped."""
        value = self.get(key, kind, default)
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum:g}, got {value:g}")
        if above is not None and not value > above:
            raise self.error(key, f"must be more than {above:g}, got {value:g}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be at most {maximum:g}, got {value:g}")
        return value

    def one_line(self, key: str, value: str | None) -> None:
        """Text that goes into a mail header: a line break in it would start a header of its own."""
        if value is not None and ("\r" in value or "\n" in value):
            raise self.error(key, "must be one line (no line breaks)")

    def words(self, key: str) -> tuple[str, ...]:
        if key not in self.mapping or self.mapping[key].value is None:
            return ()
        value = self.mapping[key].value
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list) and all(isinstance(item.value, str) for item in value):
            return tuple(item.value for item in value)
        raise self.error(key, "must be a word or a list of words")

    def sub(self, key: str) -> MappingReader | None:
        if key not in self.mapping or self.mapping[key].value is None:
            return None
        return MappingReader(self.path, self.mapping[key], self.field_name(key))


def check_url(reader: MappingReader, key: str, url: str | None) -> None:
    """An http(s) URL setting, or an error naming its file, line and field."""
    if url is None:
        return
    if not is_http_url(url):
        raise reader.error(key, f"must be an http(s) URL, got {url!r}")


def is_http_url(url: str) -> bool:
    """An absolute http(s) URL with a host, that urllib and httpx can take apart (brackets, port)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not any(
        unicodedata.category(char) == "Cc" for char in url)


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def api_url_problem(url: str) -> str | None:
    """Why the API key must not be sent to this URL: https only, but for http to this machine (tests)."""
    if not is_http_url(url):
        return f"must be an https URL, got {url!r}"
    parts = urlsplit(url)
    if parts.scheme != "https" and parts.hostname not in LOOPBACK_HOSTS:
        return f"must be an https URL (the API key must not travel unencrypted), got {url!r}"
    return None


def _newsletter(path: Path, reader: MappingReader | None) -> Newsletter:
    if reader is None:
        return Newsletter()
    fields = {
        "title": "title", "from": "from_address", "reply_to": "reply_to", "timezone": "timezone",
        "subject": "subject", "language": "language", "site_url": "site_url",
        "archive_url": "archive_url", "unsubscribe_url": "unsubscribe_url",
        "postal_address": "postal_address", "reason": "reason",
    }
    reader.check_keys(set(fields) | {"sections", "list_id", "stale_after_weeks"})
    values: dict[str, Any] = {}
    for key, attr in fields.items():
        value = reader.get(key, str)
        if value is not None:
            values[attr] = value
    values["stale_after_weeks"] = reader.number("stale_after_weeks", int, Newsletter.stale_after_weeks, minimum=1,
                                                maximum=520)
    list_id = reader.get("list_id", str)
    if list_id is not None:
        list_id = list_id.strip().removeprefix("<").removesuffix(">")
        if not _LIST_ID.match(list_id):
            raise reader.error("list_id", f"must look like name.example.com (RFC 2919), got {list_id!r}")
        values["list_id"] = list_id
    for key in ("site_url", "archive_url", "unsubscribe_url"):
        check_url(reader, key, values.get(key))
    for key in ("title", "from", "reply_to", "subject"):
        reader.one_line(key, values.get(fields[key]))
    for key in ("from", "reply_to"):
        if fields[key] in values:
            values[fields[key]] = _mailbox(reader, key, values[fields[key]])
    _check_placeholders(reader, "archive_url", values.get("archive_url"), allowed={"issue"}, required=set())
    _check_placeholders(reader, "unsubscribe_url", values.get("unsubscribe_url"), allowed={"token", "email"},
                        required={"token"})
    timezone = values.get("timezone", "UTC")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise reader.error("timezone", f"unknown time zone {timezone!r}") from None
    sections = reader.words("sections")
    if sections:
        if len(set(sections)) != len(sections):
            raise reader.error("sections", "lists a section twice")
        values["sections"] = sections
    newsletter = Newsletter(**values)
    try:
        sample = newsletter.subject.format(title=newsletter.title, issue="2026-W01", start=date(2026, 1, 5),
                                           end=date(2026, 1, 11))
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
        raise reader.error("subject", f"bad pattern ({exc}); use {{title}}, {{issue}}, {{start}}, {{end}}") from None
    if "\r" in sample or "\n" in sample:
        raise reader.error("subject", "must give one line (no line breaks)")
    return newsletter


def _mailbox(reader: MappingReader, key: str, value: str) -> str:
    """A sender or reply-to as a mail header can carry it: the display name without invisible controls, the
    domain in its ASCII (IDNA) form; an address that is not one, or whose local part is not ASCII, is refused."""
    name, address = parseaddr(value)
    local, _, domain = address.rpartition("@")
    try:
        address = f"{local}@{domain.encode('idna').decode('ascii')}" if local and not domain.isascii() else address
    except UnicodeError:
        pass
    if not is_valid_email(address) or not address.isascii():
        raise reader.error(key, f"must be an email address with an ASCII local part, such as "
                                f"\"Digest <digest@example.com>\", got {value!r}")
    name = one_line(name)
    if not name:
        return address
    if not re.fullmatch(r"[\w .'!-]*", name, re.ASCII):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{address}>"


def _check_placeholders(reader: MappingReader, key: str, value: str | None, *, allowed: set[str],
                        required: set[str]) -> None:
    """A URL pattern may hold only the named placeholders, and must hold the required ones: without {token},
    every subscriber would get the same unsigned unsubscribe link."""
    if value is None:
        return
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError as exc:
        raise reader.error(key, f"bad pattern ({exc}); write a literal brace as {{{{ or }}}}") from None
    wanted = ", ".join("{" + name + "}" for name in sorted(allowed))
    unknown = names - allowed
    if unknown:
        raise reader.error(key, f"unknown placeholder {{{sorted(unknown)[0]}}}: use {wanted}")
    missing = required - names
    if missing:
        raise reader.error(key, f"must hold {{{sorted(missing)[0]}}}: each subscriber's link is signed for them")


def _feeds(path: Path, node: YamlNode | None, sections: tuple[str, ...], line: int) -> tuple[FeedConfig, ...]:
    if node is None or node.value is None:
        raise ConfigError(path, line, "feeds", "is required: a list of feeds with name, url and section")
    if not isinstance(node.value, list):
        raise ConfigError(path, node.line, "feeds", "must be a list")
    feeds: list[FeedConfig] = []
    seen: set[str] = set()
    for index, item in enumerate(node.value):
        reader = MappingReader(path, item, f"feeds[{index}]")
        reader.check_keys({"name", "url", "section", "include", "exclude", "max_items", "private"})
        url = reader.get("url", str, required=True).strip()
        check_url(reader, "url", url)
        if url in seen:
            raise reader.error("url", "is listed twice")
        seen.add(url)
        section = reader.get("section", str, default=sections[0])
        if section not in sections:
            raise reader.error("section", f"unknown section {section!r} (sections: {', '.join(sections)})")
        name = reader.get("name", str) or urlsplit(url).netloc
        feeds.append(FeedConfig(name=name, url=url, section=section, include=reader.words("include"),
                                exclude=reader.words("exclude"),
                                max_items=reader.number("max_items", int, FeedConfig.max_items, minimum=1),
                                private=reader.get("private", bool, False), line=item.line))
    return tuple(feeds)


def read_text_file(path: Path, missing: str, *, encoding: str = "utf-8") -> str:
    """A whole text file; any problem reading it is a one-line ConfigError (`missing` when it does not exist)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, None, None, missing) from None
    except OSError as exc:
        raise ConfigError(path, None, None, f"cannot read: {exc.strerror or exc}") from None
    if encoding == "utf-8-sig" and data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(path, line, None, f"not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})") from None


NOT_FOUND = "not found (run `digest init` to write a starter file)"


def load_config(path: Path | str) -> Config:
    path = Path(path)
    text = read_text_file(path, NOT_FOUND)
    root = load_yaml_with_lines(path, text)
    if root is None:
        raise ConfigError(path, 1, "feeds", "is required: the file is empty")
    top = MappingReader(path, root, "")
    top.check_keys({"newsletter", "feeds", "collect", "smtp", "buttondown", "drafts_dir", "subscribers"})
    newsletter = _newsletter(path, top.sub("newsletter"))
    feeds = _feeds(path, top.mapping.get("feeds"), newsletter.sections, root.line)

    collect = CollectSettings()
    collect_reader = top.sub("collect")
    if collect_reader is not None:
        collect_reader.check_keys({"concurrency", "timeout", "deadline", "max_megabytes", "retries"})
        max_bytes = int(collect_reader.number("max_megabytes", float, collect.max_bytes / 2**20, above=0) * 2**20)
        if max_bytes < 1:
            raise collect_reader.error("max_megabytes", "must be at least one byte")
        collect = CollectSettings(
            concurrency=collect_reader.number("concurrency", int, collect.concurrency, minimum=1),
            timeout=collect_reader.number("timeout", float, collect.timeout, above=0),
            deadline=collect_reader.number("deadline", float, collect.deadline, above=0),
            max_bytes=max_bytes,
            retries=collect_reader.number("retries", int, collect.retries, minimum=0),
        )

    smtp = SmtpSettings()
    smtp_reader = top.sub("smtp")
    if smtp_reader is not None:
        smtp_reader.check_keys({"host", "port", "security", "username", "connections", "timeout", "max_attempts",
                                "backoff"})
        security = smtp_reader.get("security", str, smtp.security)
        if security not in ("starttls", "ssl", "none"):
            raise smtp_reader.error("security", "must be starttls, ssl or none")
        smtp = SmtpSettings(
            host=smtp_reader.get("host", str, smtp.host),
            port=smtp_reader.number("port", int, smtp.port, minimum=1, maximum=65535),
            security=security,
            username=smtp_reader.get("username", str),
            connections=smtp_reader.number("connections", int, smtp.connections, minimum=1),
            timeout=smtp_reader.number("timeout", float, smtp.timeout, above=0),
            max_attempts=smtp_reader.number("max_attempts", int, smtp.max_attempts, minimum=1),
            backoff=smtp_reader.number("backoff", float, smtp.backoff, minimum=0),
        )
        if smtp.security == "none" and smtp.username and smtp.host not in LOOPBACK_HOSTS:
            raise smtp_reader.error("security", f"none with a username would send the password to {smtp.host} "
                                    "unencrypted: use starttls or ssl")
    buttondown = ButtondownSettings()
    bd_reader = top.sub("buttondown")
    if bd_reader is not None:
        bd_reader.check_keys({"api_url", "timeout", "max_attempts", "backoff"})
        api_url = bd_reader.get("api_url", str, buttondown.api_url).strip()
        problem = api_url_problem(api_url)
        if problem:
            raise bd_reader.error("api_url", problem)
        buttondown = ButtondownSettings(
            api_url=api_url,
            timeout=bd_reader.number("timeout", float, buttondown.timeout, above=0),
            max_attempts=bd_reader.number("max_attempts", int, buttondown.max_attempts, minimum=1),
            backoff=bd_reader.number("backoff", float, buttondown.backoff, minimum=0),
        )
    env_api_url = os.environ.get(API_URL_ENV, "").strip()
    if env_api_url:
        problem = api_url_problem(env_api_url)
        if problem:
            raise ConfigError(API_URL_ENV, None, None, problem)
        buttondown = replace(buttondown, api_url=env_api_url)

    base = path.resolve().parent
    drafts_dir = base / top.get("drafts_dir", str, "drafts")
    subscribers_path = base / top.get("subscribers", str, "subscribers.csv")
    return Config(path=path, newsletter=newsletter, feeds=feeds, collect=collect, smtp=smtp, buttondown=buttondown,
                  drafts_dir=drafts_dir, subscribers_path=subscribers_path)


# --- subscribers.csv ----------------------------------------------------------

SUBSCRIBER_STATUSES = ("active", "unsubscribed", "bounced")
_EMAIL = re.compile(r"^[^@\s<>(),;:\"\[\]\\\x00-\x1f\x7f]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$")


@dataclass(frozen=True)
class Subscriber:
    email: str
    name: str = ""
    status: str = "active"
    line: int | None = None


def address_key(address: str) -> str:
    """Who an address is, for comparing two: the domain lower-cased, and in the local part only ASCII letters.

    Unicode case folding would make `ſ@x.example` and `straße@x.example` the same person as `s@x.example`
    and `strasse@x.example`: one's unsubscribe link would unsubscribe the other.
    """
    local, at, domain = address.strip().rpartition("@")
    if not at:
        return address.strip().translate(_ASCII_LOWER)
    return f"{local.translate(_ASCII_LOWER)}@{domain.lower()}"


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def is_valid_email(address: str) -> bool:
    return bool(_EMAIL.match(address)) and len(address) <= 254


def clean_name(name: str) -> str:
    """A display name fit for a To header: a control character counts as a space (CR, LF, NUL...), invisible
    controls go (bidi overrides...; joiners stay inside words), white space is collapsed."""
    return one_line(_CONTROLS.sub(" ", name))


_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def read_subscribers(path: Path | str, strict: bool = False) -> tuple[list[Subscriber], list[ConfigError]]:
    """Subscribers from the CSV (columns email, name, status), the same address (`address_key`) merged.

    Rows with a bad address are returned as problems (or raised when strict), never silently dropped.
    """
    path = Path(path)
    text = read_text_file(path, NOT_FOUND, encoding="utf-8-sig")
    problems: list[ConfigError] = []
    by_email: dict[str, Subscriber] = {}
    with io.StringIO(text, newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            fieldnames = reader.fieldnames
        except csv.Error as exc:
            raise ConfigError(path, 1, None, f"not valid CSV: {exc}") from None
        if not fieldnames or "email" not in [name.strip().lower() for name in fieldnames]:
            raise ConfigError(path, 1, "email", "the header row must have an 'email' column")
        try:
            for row in reader:
                line = reader.line_num
                row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items() if k}
                email = row.get("email", "")
                status = (row.get("status") or "active").lower()
                if not email and not any(row.values()):
                    continue
                problem = None
                if not is_valid_email(email):
                    problem = ConfigError(path, line, "email", f"not a valid address: {email!r}")
                elif status not in SUBSCRIBER_STATUSES:
                    problem = ConfigError(path, line, "status", f"must be one of {', '.join(SUBSCRIBER_STATUSES)}")
                if problem:
                    if strict:
                        raise problem
                    problems.append(problem)
                    continue
                key = address_key(email)
                previous = by_email.get(key)
                if previous is not None and previous.status != "active":
                    continue  # an unsubscribe or bounce anywhere in the file wins
                by_email[key] = Subscriber(email=email, name=clean_name(row.get("name", "")), status=status,
                                           line=line)
        except csv.Error as exc:
            raise ConfigError(path, reader.line_num, None, f"not valid CSV: {exc}") from None
    return list(by_email.values()), problems
