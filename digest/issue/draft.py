"""The editable draft of an issue: drafts/<issue>.yaml, read, written, and merged with new posts.

The editor may delete, reorder or rewrite anything in the file. A re-build keeps
those edits and only appends posts that were never offered to this draft before
(the store remembers which were), each at the end of its section: merge.py splices
them into the file as text, in the YAML styles of draft_yaml.py.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from digest.errors import BadWeek, ConfigError
from digest.issue.draft_yaml import as_prose, draft_yaml, section_yaml, with_prose
from digest.issue.merge import splice, splice_held
from digest.issue.prose import escape_markdown
from digest.issue.selection import SelectedPost
from digest.issue.weeks import week_dates
from digest.models import Draft, DraftItem, DraftSection, MoreGroup, Placement, Sponsor
from digest.settings.yamlfile import MappingReader, check_url, load_yaml_with_lines, read_text_file
from digest.store import from_iso
from digest.urls import clean_url, host_of, url_key

HEADER = """\
# Draft of {issue} ({start:%a %d %b} – {end:%a %d %b %Y}).
# Edit freely: delete, reorder or rewrite items, fill in the intro and sponsor, comment lines out with #.
# `digest build` keeps your edits and comments, and only adds posts that are new since the last build,
# each at the end of its section. `digest preview` shows the email each time you save this file.
# `digest send` sends exactly what this file says.
# Text after `>-` or `|` may hold any character (quotes, colons): keep it indented under its key.
"""
_COMMENTS = {
    "preheader": "# The line an inbox shows after the subject (empty: the intro's start, else the first titles).\n",
    "intro": "# Paragraphs above the first section: indent them under `intro: |`, a blank line between two.\n",
    "sponsor": "# The sponsored block; `sponsor: null` leaves it out.\n",
    "no sponsor": (
        "# A sponsored block: replace `null` with three indented lines, e.g.\n"
        "#   title: Acme Hosting\n#   url: https://acme.example.com/?ref=digest\n"
        "#   text: One or two sentences.\n"
    ),
    "sections": (
        "# In the order of the email. An item needs a title; without a url (a post with no link of its own)\n"
        "# the title is shown unlinked: set url to the `site` below it to link it to its feed's site.\n"
        "# Held back, not in the email: `more` (a feed's posts past its max_items; the email says \"and 3 more\n"
        "# from ...\") and `stale` (dated long before this week), and `held` (an unattended run's checks found it\n"
        "# broken: its `reason` says why). Move an item into `items` to send it.\n"
    ),
}

DraftError = ConfigError  # same shape: file, line, field, problem

# PyYAML's words for the slips an editor makes, and what to do about them.
_YAML_HINTS = (
    (
        "mapping values are not allowed",
        "text holding ': ' needs quotes around it, or `>-` and the text indented on the next lines",
    ),
    ("cannot start any token", "indent with spaces, not tabs; text starting with @ or ` needs quotes"),
)


def draft_path(drafts_dir: Path, issue_id: str, suffix: str = ".yaml") -> Path:
    return drafts_dir / f"{issue_id}{suffix}"


def source_of(url: str | None) -> str:
    return host_of(url)


def item_from_post(post: SelectedPost, tz: ZoneInfo) -> DraftItem:
    row = post.row
    url = row["canonical_url"]
    return DraftItem(
        title=row["title"],
        url=url,
        summary=escape_markdown(row["summary"] or ""),  # the feed's plain text, shown as it is
        source=row["source"] or source_of(url) or source_of(post.site),
        author=row["author"] or None,
        published=from_iso(row["published_at"]).astimezone(tz).date(),
        site=None if url else post.site,
        **(_image_of(row) if post.feed.images else {}),
    )


def _image_of(row: dict) -> dict:
    if not row.get("image_url"):
        return {}
    return {"image": row["image_url"], "image_width": row["image_width"], "image_height": row["image_height"]}


def new_draft(issue_id: str, subject: str, sections: list[str]) -> Draft:
    start, end = week_dates(issue_id)
    return Draft(
        issue=issue_id,
        week_start=start,
        week_end=end,
        subject=subject,
        sections=[DraftSection(title=name) for name in sections],
        markdown=True,
    )


@dataclass
class Added:
    """What a build added to the draft."""

    items: int = 0  # in the email
    more: int = 0  # held back: over their feed's max_items
    stale: int = 0  # held back: dated long before the week
    already: int = 0  # not added: the editor wrote their link into the draft by hand


def add_posts(
    draft: Draft,
    posts: list[SelectedPost],
    section_order: tuple[str, ...],
    tz: ZoneInfo,
    offered_links: AbstractSet[str] = frozenset(),
) -> Added:
    """Append posts where `select` placed them: a section's items, its `more` group of the post's feed, or
    its stale list (creating a section the editor removed). A post whose link the editor wrote into the
    draft by hand (a link no post offered to it has: `offered_links` are their url_keys) is not added
    twice; posts that share a link with another post are all added (distinct entries of a feed)."""
    by_hand = {url_key(clean_url(item.url) or item.url) for item in _all_items(draft) if item.url} - offered_links
    added = Added()
    for post in posts:
        item = item_from_post(post, tz)
        if item.url and url_key(item.url) in by_hand:
            added.already += 1
            continue
        section = next((s for s in draft.sections if s.title.strip() == post.section), None)
        if section is None:
            section = DraftSection(title=post.section)
            draft.sections.insert(_section_position(draft, post.section, section_order), section)
        if post.placement == Placement.STALE:
            section.stale.append(item)
            added.stale += 1
        elif post.placement == Placement.MORE:
            group = next((g for g in section.more if g.feed == post.feed.name), None)
            if group is None:
                group = MoreGroup(feed=post.feed.name, site=post.site)
                section.more.append(group)
            group.items.append(item)
            added.more += 1
        else:
            section.items.append(item)
            added.items += 1
    return added


def _all_items(draft: Draft) -> Iterator[DraftItem]:
    for section in draft.sections:
        yield from section.items
        for group in section.more:
            yield from group.items
        yield from section.stale
        yield from section.held


def _section_position(draft: Draft, title: str, section_order: tuple[str, ...]) -> int:
    """Where a re-created section goes: before the first present section that comes after it in the config."""
    rank = {name: index for index, name in enumerate(section_order)}
    mine = rank.get(title, len(rank))
    for index, section in enumerate(draft.sections):
        if rank.get(section.title, len(rank)) > mine:
            return index
    return len(draft.sections)


def dump_draft(draft: Draft) -> str:
    sponsor = with_prose(asdict(draft.sponsor)) if draft.sponsor else None
    head = {
        "issue": draft.issue,
        "subject": draft.subject,
        "preheader": as_prose(draft.preheader),
        "intro": as_prose(draft.intro),
        "sponsor": sponsor,
        **({"markdown": True} if draft.markdown else {}),
    }
    lines = draft_yaml(head).splitlines(keepends=True)
    start = 0
    for key in head:  # each top-level key under its comment: the first line from there starting with `key:`
        comment = _COMMENTS.get("no sponsor" if key == "sponsor" and sponsor is None else key)
        start = next(n for n in range(start, len(lines)) if lines[n].startswith(f"{key}:"))
        if comment:
            lines.insert(start, comment)
            start += 1
    sections = "".join(map(section_yaml, draft.sections))
    return (
        HEADER.format(issue=draft.issue, start=draft.week_start, end=draft.week_end)
        + "".join(lines)
        + _COMMENTS["sections"]
        + ("sections:\n" + sections if sections else "sections: []\n")
    )


def write_draft(path: Path, draft: Draft) -> None:
    """Write the draft; over an existing file, only insert what is new, so the editor's comments,
    layout and commented-out items stay (the whole file is re-written only when that is not possible)."""
    text = merged_text(path, draft) if path.exists() else None
    write_atomically(path, text if text is not None else dump_draft(draft))


def merged_text(path: Path, draft: Draft) -> str | None:
    """The existing file with what `draft` adds to it inserted as text, or with the items `draft` holds back
    moved as text to their section's `held` list (merge.py), or None when that is not possible or would not
    read back as exactly `draft`. `draft` must be the file's draft with entries appended (as `add_posts`
    does), or with items moved to the end of `held` (as holdback.py does)."""
    try:
        text = path.read_bytes().decode("utf-8")  # as it is: line ends too
        old = parse_draft(path, text)
        merged = splice(text, old, draft)
        if merged is None:
            merged = splice_held(text, old, draft)
        return merged if merged is not None and parse_draft(path, merged) == draft else None
    except (OSError, UnicodeDecodeError, ConfigError):
        return None


def write_atomically(path: Path, text: str, *, durable: bool = False) -> None:
    """Replace the file in one step, so a reader (or a kill) never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as stream:
            stream.write(text)
            if durable:
                stream.flush()
                os.fsync(stream.fileno())
        os.chmod(temporary, _mode_for(path))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if durable:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def write_durably(path: Path, text: str) -> None:
    """Like write_atomically, and on disk before it returns (the file and its folder entry fsynced)."""
    write_atomically(path, text, durable=True)


def _read_umask() -> int:
    umask = os.umask(0)  # the only way to read it; done once, at import, before any thread starts
    os.umask(umask)
    return umask


_NEW_FILE_MODE = 0o666 & ~_read_umask()


def _mode_for(path: Path) -> int:
    """The mode the file has, or a new file's usual mode (mkstemp's 0600 would hide drafts from the team)."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return _NEW_FILE_MODE


def read_draft(path: Path) -> Draft:
    """Parse the editor's file; any problem is a DraftError naming the file, line and field."""
    text = read_text_file(path, "no draft for this week (run `digest build` first)")
    return parse_draft(path, text)


def parse_draft(path: Path, text: str) -> Draft:
    """The draft in `text` (the content of `path`, which names it in errors)."""
    try:
        root = load_yaml_with_lines(path, text)
    except ConfigError as exc:
        hint = next((hint for words, hint in _YAML_HINTS if words in exc.problem), None)
        if hint is None:
            raise
        raise DraftError(exc.path, exc.line, exc.field, f"{exc.problem} ({hint})") from None
    if root is None:
        raise DraftError(path, 1, None, "the draft is empty")
    top = MappingReader(path, root, "")
    top.check_keys({"issue", "subject", "preheader", "intro", "sponsor", "sections", "markdown"})
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
        sponsor = Sponsor(
            title=sponsor_reader.get("title", str, required=True),
            url=_url(sponsor_reader, "url") or "",  # required: never empty
            text=sponsor_reader.get("text", str, ""),
        )
    sections_node = top.mapping.get("sections")
    sections: list[DraftSection] = []
    if sections_node is not None and sections_node.value is not None:
        if not isinstance(sections_node.value, list):
            raise top.error("sections", "must be a list of sections")
        for index, section_node in enumerate(sections_node.value):
            section = MappingReader(path, section_node, f"sections[{index}]")
            section.check_keys({"title", "items", "more", "stale", "held"})
            sections.append(
                DraftSection(
                    title=section.get("title", str, required=True),
                    items=_items(path, section, "items"),
                    more=_groups(path, section),
                    stale=_items(path, section, "stale"),
                    held=_items(path, section, "held"),
                )
            )
    subject = top.get("subject", str, required=True)
    top.one_line("subject", subject)  # a line break would start a mail header of its own
    return Draft(
        issue=issue_id,
        week_start=start,
        week_end=end,
        subject=subject,
        preheader=top.get("preheader", str, ""),
        intro=top.get("intro", str, ""),
        sponsor=sponsor,
        sections=sections,
        markdown=top.get("markdown", bool, False),
    )


def _list(reader: MappingReader, key: str) -> list:
    node = reader.mapping.get(key)
    if node is None or node.value is None:
        return []
    if not isinstance(node.value, list):
        raise reader.error(key, f"must be a list of {'groups' if key == 'more' else 'items'}")
    return node.value


def _items(path: Path, parent: MappingReader, key: str) -> list[DraftItem]:
    items = []
    for index, item_node in enumerate(_list(parent, key)):
        item = MappingReader(path, item_node, f"{parent.where}.{key}[{index}]")
        item.check_keys(
            {
                "title",
                *("url", "summary", "source", "author", "published", "site"),
                *("image", "image_width", "image_height", "reason"),
            }
        )
        published = item.get("published", date)
        if isinstance(published, datetime):
            published = published.date()
        url = _url(item, "url", required=False)
        site = _url(item, "site", required=False)
        items.append(
            DraftItem(
                title=item.get("title", str, required=True),
                url=url,
                summary=item.get("summary", str, ""),
                source=item.get("source", str, source_of(url or site)),
                author=item.get("author", str),
                published=published,
                site=site,
                image=_url(item, "image", required=False),
                image_width=_pixels(item, "image_width"),
                image_height=_pixels(item, "image_height"),
                reason=item.get("reason", str),
            )
        )
    return items


def _pixels(item: MappingReader, key: str) -> int | None:
    if key not in item.mapping or item.mapping[key].value is None:
        return None
    return item.number(key, int, None, minimum=1, maximum=4000)


def _groups(path: Path, section: MappingReader) -> list[MoreGroup]:
    groups = []
    for index, group_node in enumerate(_list(section, "more")):
        group = MappingReader(path, group_node, f"{section.where}.more[{index}]")
        group.check_keys({"feed", "site", "items"})
        groups.append(
            MoreGroup(
                feed=group.get("feed", str, required=True),
                site=_url(group, "site", required=False),
                items=_items(path, group, "items"),
            )
        )
    return groups


def _url(reader: MappingReader, key: str, *, required: bool = True) -> str | None:
    url = reader.get(key, str, required=required)
    if url is None:
        return None
    url = url.strip()
    check_url(reader, key, url)
    return url
