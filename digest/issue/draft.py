"""The editable draft of an issue: drafts/<issue>.yaml, read, written, and merged with new posts.

The editor may delete, reorder or rewrite anything in the file. A re-build keeps
those edits and only appends posts that were never offered to this draft before
(the store remembers which were), each at the end of its section.
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

import yaml

from digest.errors import BadWeek, ConfigError
from digest.issue.prose import escape_markdown
from digest.issue.selection import SelectedPost
from digest.issue.weeks import week_dates
from digest.models import Draft, DraftItem, DraftSection, MoreGroup, Placement, Sponsor
from digest.settings.yamlfile import YAML_LOADER, MappingReader, check_url, load_yaml_with_lines, read_text_file
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
        '# from ...") and `stale` (dated long before this week). Move an item into `items` to send it.\n'
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


def _section_position(draft: Draft, title: str, section_order: tuple[str, ...]) -> int:
    """Where a re-created section goes: before the first present section that comes after it in the config."""
    rank = {name: index for index, name in enumerate(section_order)}
    mine = rank.get(title, len(rank))
    for index, section in enumerate(draft.sections):
        if rank.get(section.title, len(rank)) > mine:
            return index
    return len(draft.sections)


# --- the YAML file ------------------------------------------------------------------


class _Prose(str):
    """Free text an editor rewrites: written as a block (`>-` or `|`) when long or when it would need quotes."""


class _DraftDumper(yaml.SafeDumper):
    """Styles that are easy to edit by hand: prose as blocks, and double quotes over single ones when the
    text holds an apostrophe (inside single quotes an editor would have to double it)."""

    PROSE_STYLE = "~"  # a marker on the event, never written
    PLAIN_PROSE_CHARS = 72

    def choose_scalar_style(self) -> str:
        event = self.event
        assert isinstance(event, yaml.ScalarEvent)  # the emitter asks only about scalars
        prose = event.style == self.PROSE_STYLE
        if prose:
            event.style = None
        try:
            style = super().choose_scalar_style()
        finally:
            if prose:
                event.style = self.PROSE_STYLE
        value = event.value
        if (
            prose
            and self.analysis is not None
            and self.analysis.allow_block
            and not self.simple_key_context
            and _blockable(value)
            and (style != "" or len(value) > self.PLAIN_PROSE_CHARS or "\n" in value)
        ):
            return "|" if "\n" in value else ">"
        if style == "'" and "'" in value and '"' not in value and "\\" not in value:
            return '"'
        return style


def _blockable(value: str) -> bool:
    """Whether PyYAML writes `value` as a block that reads back the same: it folds "more indented" lines
    wrongly, so no line may start with white space, and line breaks other than \\n stay quoted."""
    return not any(char in value for char in "\t\r\x85\u2028\u2029") and not any(
        line[:1].isspace() for line in value.split("\n")
    )


_DraftDumper.add_representer(
    _Prose,
    lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", str(value), style=_DraftDumper.PROSE_STYLE),
)
_PROSE_KEYS = {"summary", "text", "intro", "preheader"}


def _yaml(data) -> str:
    return yaml.dump(data, Dumper=_DraftDumper, sort_keys=False, allow_unicode=True, width=100)


# Held-back posts can number thousands (a feed's archive, a flood): libyaml writes them 10x faster than
# the pure-Python emitter, in its own styles, which matter less for text the editor only moves.
_HELD_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _held_yaml(data) -> str:
    return yaml.dump(data, Dumper=_HELD_DUMPER, sort_keys=False, allow_unicode=True, width=100)


def _prose(value):
    return _Prose(value) if isinstance(value, str) and value else value


def _with_prose(fields: dict) -> dict:
    return {key: _prose(value) if key in _PROSE_KEYS else value for key, value in fields.items()}


def _item_data(item: DraftItem) -> dict:
    return {key: value for key, value in asdict(item).items() if value not in (None, "")}


def _group_data(group: MoreGroup) -> dict:
    data = {"feed": group.feed, "site": group.site, "items": [_item_data(item) for item in group.items]}
    return {key: value for key, value in data.items() if value is not None}


def _items_yaml(items: list[DraftItem]) -> str:
    return _yaml([_with_prose(_item_data(item)) for item in items])


def _section_yaml(section: DraftSection) -> str:
    """One entry of `sections`: its items as the editor writes them, then what is held back (libyaml)."""
    text = _yaml([{"title": section.title, "items": [_with_prose(_item_data(item)) for item in section.items]}])
    held: dict = {}
    if section.more:
        held["more"] = [_group_data(group) for group in section.more]
    if section.stale:
        held["stale"] = [_item_data(item) for item in section.stale]
    return text + (_indent(_held_yaml(held), 2) if held else "")


def dump_draft(draft: Draft) -> str:
    sponsor = _with_prose(asdict(draft.sponsor)) if draft.sponsor else None
    head = {
        "issue": draft.issue,
        "subject": draft.subject,
        "preheader": _prose(draft.preheader),
        "intro": _prose(draft.intro),
        "sponsor": sponsor,
        **({"markdown": True} if draft.markdown else {}),
    }
    lines = _yaml(head).splitlines(keepends=True)
    start = 0
    for key in head:  # each top-level key under its comment: the first line from there starting with `key:`
        comment = _COMMENTS.get("no sponsor" if key == "sponsor" and sponsor is None else key)
        start = next(n for n in range(start, len(lines)) if lines[n].startswith(f"{key}:"))
        if comment:
            lines.insert(start, comment)
            start += 1
    sections = "".join(map(_section_yaml, draft.sections))
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


# --- re-build: new items spliced into the editor's text ---------------------------------


def merged_text(path: Path, draft: Draft) -> str | None:
    """The existing file with what `draft` adds to it (items, held-back posts, sections) inserted as text, or
    None when that is not possible or would not read back as exactly `draft`. `draft` must be the file's
    draft with entries appended (as `add_posts` does)."""
    try:
        text = path.read_bytes().decode("utf-8")  # as it is: line ends too
        old = parse_draft(path, text)
        root = yaml.compose(text, Loader=YAML_LOADER)  # parse_draft checked its depth, anchors and aliases
    except (OSError, UnicodeDecodeError, ConfigError, yaml.YAMLError):
        return None
    sections_node = _value_of(root, "sections")
    if not isinstance(sections_node, yaml.SequenceNode) or sections_node.flow_style or not sections_node.value:
        return None
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    nodes: dict[str, yaml.MappingNode] = {}
    for node in sections_node.value:
        title = _value_of(node, "title")
        if not isinstance(title, yaml.ScalarNode) or title.value in nodes:
            return None
        nodes[title.value] = node
    edits = _TextEdits(lines)
    old_sections = {section.title: section for section in old.sections}
    section_column = sections_node.start_mark.column
    for index, section in enumerate(draft.sections):
        node = nodes.get(section.title)
        if node is None:
            later = [nodes[s.title] for s in draft.sections[index + 1 :] if s.title in nodes]
            line = later[0].start_mark.line if later else _end_line(lines, sections_node.value[-1], section_column)
            edits.insert(line, _indent(_section_yaml(section), section_column))
        elif not _merge_section(edits, node, section_column, old_sections[section.title], section):
            return None
    if not edits.changed:
        return None
    merged = edits.apply()
    if "\r\n" in text:  # the editor's line ends, in what is added too
        merged = merged.replace("\r\n", "\n").replace("\n", "\r\n")
    try:
        if parse_draft(path, merged) != draft:
            return None
    except ConfigError:
        return None
    return merged


def _merge_section(edits: _TextEdits, node, column: int, old: DraftSection, new: DraftSection) -> bool:
    """Queue the text of what `new` adds to `old` (the same section as it is in the file at `node`)."""
    new_items = _tail(old.items, new.items)
    new_stale = _tail(old.stale, new.stale)
    if new_items is None or new_stale is None:
        return False
    if new_items and not edits.append(node, column, "items", _items_yaml(new_items)):
        return False
    old_groups = {group.feed: group for group in old.more}
    more_node = _value_of(node, "more")
    group_nodes = {}
    if isinstance(more_node, yaml.SequenceNode):
        group_nodes = {getattr(_value_of(g, "feed"), "value", None): g for g in more_node.value}
    new_groups = []
    for group in new.more:
        if group.feed not in old_groups:
            new_groups.append(group)
            continue
        tail = _tail(old_groups[group.feed].items, group.items)
        group_node = group_nodes.get(group.feed)
        if tail is None or (tail and group_node is None):
            return False
        if tail and not edits.append(
            group_node, more_node.start_mark.column, "items", _held_yaml([_item_data(item) for item in tail])
        ):
            return False
    return (
        not new_groups or edits.append(node, column, "more", _held_yaml([_group_data(g) for g in new_groups]))
    ) and (not new_stale or edits.append(node, column, "stale", _held_yaml([_item_data(i) for i in new_stale])))


def _tail(old: list, new: list) -> list | None:
    """What `new` appends to `old`, or None when `new` does not start with `old`."""
    return new[len(old) :] if new[: len(old)] == old else None


class _TextEdits:
    """Insertions into the lines of a YAML file, applied at once so that line numbers stay valid."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        self.inserts: list[tuple[int, int, str]] = []  # (before line index, order, text)
        self.replaced: dict[int, str] = {}  # line index -> new text of that line

    @property
    def changed(self) -> bool:
        return bool(self.inserts or self.replaced)

    def insert(self, line: int, text: str) -> None:
        self.inserts.append((line, len(self.inserts), text))

    def append(self, parent, parent_column: int, key: str, block: str) -> bool:
        """Append the entries of `block` (a YAML list) to the block list under `key` of the mapping `parent`
        (an entry of a block list whose dashes are at `parent_column`), writing the key when it lacks it."""
        value = _value_of(parent, key)
        if isinstance(value, yaml.SequenceNode) and not value.flow_style and value.value:
            column = value.start_mark.column
            self.insert(_end_line(self.lines, value.value[-1], column), _indent(block, column))
        elif value is not None and _is_empty(value):
            key_node = next(k for k, v in parent.value if v is value)
            line = key_node.start_mark.line
            if value.end_mark.line != line or line in self.replaced:
                return False
            rest = self.lines[line][value.end_mark.column :].strip()
            if rest and not rest.startswith("#"):
                return False
            column = key_node.start_mark.column
            self.replaced[line] = (
                " " * column + f"{key}:" + (" " + rest if rest else "") + "\n" + _indent(block, column)
            )
        elif value is None and isinstance(parent, yaml.MappingNode) and parent.value:
            column = parent.value[0][0].start_mark.column
            self.insert(
                _end_line(self.lines, parent, parent_column), " " * column + f"{key}:\n" + _indent(block, column)
            )
        else:
            return False
        return True

    def apply(self) -> str:
        out: list[str] = []
        pending = sorted(self.inserts)
        for number, line in enumerate([*self.lines, ""]):
            while pending and pending[0][0] == number:
                out.append(pending.pop(0)[2])
            if number < len(self.lines):
                out.append(self.replaced.get(number, line))
        return "".join(out)


def _value_of(node, key: str):
    if not isinstance(node, yaml.MappingNode):
        return None
    return next((value for name, value in node.value if isinstance(name, yaml.ScalarNode) and name.value == key), None)


def _is_empty(node) -> bool:
    if isinstance(node, yaml.SequenceNode):
        return node.flow_style and not node.value
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _end_line(lines: list[str], node, column: int) -> int:
    """The index of the line after the text of `node`, an entry of a block sequence whose dashes are at `column`:
    the entry goes on while lines are blank or indented deeper; trailing blank lines are not part of it."""
    end = node.start_mark.line + 1
    last = end
    while end < len(lines):
        stripped = lines[end].strip()
        if stripped:
            if len(lines[end]) - len(lines[end].lstrip(" ")) <= column:
                break
            last = end + 1
        end += 1
    return last


def _indent(text: str, column: int) -> str:
    pad = " " * column
    return "".join(pad + line if line.strip() else line for line in text.splitlines(keepends=True))


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
            section.check_keys({"title", "items", "more", "stale"})
            sections.append(
                DraftSection(
                    title=section.get("title", str, required=True),
                    items=_items(path, section, "items"),
                    more=_groups(path, section),
                    stale=_items(path, section, "stale"),
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
            {"title", "url", "summary", "source", "author", "published", "site", "image", "image_width", "image_height"}
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
