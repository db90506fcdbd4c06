"""The editable draft of an issue: drafts/<issue>.yaml, read, written, and merged with new posts.

The editor may delete, reorder or rewrite anything in the file. A re-build keeps
those edits and only appends posts that were never offered to this draft before
(the store remembers which were), each at the end of its section.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict
from datetime import date, datetime
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import yaml

from .config import ConfigError, MappingReader, load_yaml_with_lines
from .models import Draft, DraftItem, DraftSection, Sponsor
from .select import SelectedPost
from .store import from_iso
from .weeks import BadWeek, week_dates

HEADER = """\
# Draft of {issue} ({start:%a %d %b} – {end:%a %d %b %Y}).
# Edit freely: delete, reorder or rewrite items, fill in the intro and sponsor.
# `digest build` keeps your edits and only adds posts that are new since the last build.
# `digest send` sends exactly what this file says.
"""

DraftError = ConfigError  # same shape: file, line, field, problem


def draft_path(drafts_dir: Path, issue_id: str, suffix: str = ".yaml") -> Path:
    return drafts_dir / f"{issue_id}{suffix}"


def source_of(url: str) -> str:
    host = urlsplit(url).hostname or ""
    return host.removeprefix("www.")


def item_from_post(post: SelectedPost, tz: ZoneInfo) -> DraftItem:
    row = post.row
    url = row["canonical_url"] or _site_of(row["feed_url"])
    return DraftItem(
        title=row["title"], url=url, summary=row["summary"] or "", source=source_of(url),
        author=row["author"] or None, published=from_iso(row["published_at"]).astimezone(tz).date(),
    )


def _site_of(feed_url: str) -> str:
    """Where a post with no link of its own points: the home page of its feed's site."""
    parts = urlsplit(feed_url)
    return f"{parts.scheme}://{parts.netloc}/"


def new_draft(issue_id: str, subject: str, sections: list[str]) -> Draft:
    start, end = week_dates(issue_id)
    return Draft(issue=issue_id, week_start=start, week_end=end, subject=subject,
                 sections=[DraftSection(title=name) for name in sections])


def add_posts(draft: Draft, posts: list[SelectedPost], section_order: tuple[str, ...], tz: ZoneInfo) -> int:
    """Append posts at the end of their sections (creating a section the editor removed); returns how many.

    A post whose URL the draft already holds is not added twice.
    """
    known_urls = {item.url for item in draft.items}
    added = 0
    for post in posts:
        item = item_from_post(post, tz)
        if item.url in known_urls:
            continue
        section = next((s for s in draft.sections if s.title == post.section), None)
        if section is None:
            section = DraftSection(title=post.section)
            draft.sections.insert(_section_position(draft, post.section, section_order), section)
        section.items.append(item)
        known_urls.add(item.url)
        added += 1
    return added


def _section_position(draft: Draft, title: str, section_order: tuple[str, ...]) -> int:
    """Where a re-created section goes: before the first present section that comes after it in the config."""
    rank = {name: index for index, name in enumerate(section_order)}
    mine = rank.get(title, len(rank))
    for index, section in enumerate(draft.sections):
        if rank.get(section.title, len(rank)) > mine:
            return index
    return len(draft.sections)


# --- the YAML file ------------------------------------------------------------------


def dump_draft(draft: Draft) -> str:
    data = {
        "issue": draft.issue,
        "subject": draft.subject,
        "preheader": draft.preheader,
        "intro": draft.intro,
        "sponsor": asdict(draft.sponsor) if draft.sponsor else None,
        "sections": [
            {"title": section.title,
             "items": [{key: value for key, value in asdict(item).items() if value not in (None, "")}
                       for item in section.items]}
            for section in draft.sections
        ],
    }
    header = HEADER.format(issue=draft.issue, start=draft.week_start, end=draft.week_end)
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def write_draft(path: Path, draft: Draft) -> None:
    write_atomically(path, dump_draft(draft))


def write_atomically(path: Path, text: str) -> None:
    """Replace the file in one step, so a reader (or a kill) never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_draft(path: Path) -> Draft:
    """Parse the editor's file; any problem is a DraftError naming the file, line and field."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DraftError(path, None, None, "no draft for this week (run `digest build` first)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DraftError(path, None, None, f"cannot be read: {exc}") from None
    root = load_yaml_with_lines(path, text)
    if root is None:
        raise DraftError(path, 1, None, "the draft is empty")
    top = MappingReader(path, root, "")
    top.check_keys({"issue", "subject", "preheader", "intro", "sponsor", "sections"})
    issue_id = top.get("issue", str, required=True)
    expected = path.stem
    if issue_id != expected:
        raise top.error("issue", f"is {issue_id!r} but the file is for {expected!r}")
    try:
        start, end = week_dates(issue_id)
    except BadWeek as exc:
        raise top.error("issue", str(exc)) from None
    sponsor = None
    sponsor_reader = top.sub("sponsor")
    if sponsor_reader is not None:
        sponsor_reader.check_keys({"title", "url", "text"})
        sponsor = Sponsor(title=sponsor_reader.get("title", str, required=True),
                          url=_url(sponsor_reader, "url"), text=sponsor_reader.get("text", str, ""))
    sections_node = top.mapping.get("sections")
    sections: list[DraftSection] = []
    if sections_node is not None and sections_node.value is not None:
        if not isinstance(sections_node.value, list):
            raise top.error("sections", "must be a list of sections")
        for index, section_node in enumerate(sections_node.value):
            section = MappingReader(path, section_node, f"sections[{index}]")
            section.check_keys({"title", "items"})
            sections.append(DraftSection(title=section.get("title", str, required=True),
                                         items=_items(path, section)))
    return Draft(issue=issue_id, week_start=start, week_end=end,
                 subject=top.get("subject", str, required=True), preheader=top.get("preheader", str, ""),
                 intro=top.get("intro", str, ""), sponsor=sponsor, sections=sections)


def _items(path: Path, section: MappingReader) -> list[DraftItem]:
    node = section.mapping.get("items")
    if node is None or node.value is None:
        return []
    if not isinstance(node.value, list):
        raise section.error("items", "must be a list of items")
    items = []
    for index, item_node in enumerate(node.value):
        item = MappingReader(path, item_node, f"{section.where}.items[{index}]")
        item.check_keys({"title", "url", "summary", "source", "author", "published"})
        published = item.get("published", date)
        if isinstance(published, datetime):
            published = published.date()
        url = _url(item, "url")
        items.append(DraftItem(title=item.get("title", str, required=True), url=url,
                               summary=item.get("summary", str, ""), source=item.get("source", str, source_of(url)),
                               author=item.get("author", str), published=published))
    return items


def _url(reader: MappingReader, key: str) -> str:
    url = reader.get(key, str, required=True).strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise reader.error(key, f"must be an http(s) URL, got {url!r}")
    return url
