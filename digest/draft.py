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

from .config import ConfigError, MappingReader, check_url, load_yaml_with_lines, read_text_file
from .models import Draft, DraftItem, DraftSection, Sponsor
from .select import SelectedPost
from .store import from_iso
from .weeks import BadWeek, week_dates

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
    "no sponsor": ("# A sponsored block: replace `null` with three indented lines, e.g.\n"
                   "#   title: Acme Hosting\n#   url: https://acme.example.com/?ref=digest\n"
                   "#   text: One or two sentences.\n"),
    "sections": "# In the order of the email. An item needs a title and an http(s) url; the other keys may go.\n",
}

DraftError = ConfigError  # same shape: file, line, field, problem

# PyYAML's words for the slips an editor makes, and what to do about them.
_YAML_HINTS = (
    ("mapping values are not allowed", "text holding ': ' needs quotes around it, or `>-` and the text "
                                       "indented on the next lines"),
    ("cannot start any token", "indent with spaces, not tabs; text starting with @ or ` needs quotes"),
)


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


class _Prose(str):
    """Free text an editor rewrites: written as a block (`>-` or `|`) when long or when it would need quotes."""


class _DraftDumper(yaml.SafeDumper):
    """Styles that are easy to edit by hand: prose as blocks, and double quotes over single ones when the
    text holds an apostrophe (inside single quotes an editor would have to double it)."""

    PROSE_STYLE = "~"  # a marker on the event, never written
    PLAIN_PROSE_CHARS = 72

    def choose_scalar_style(self) -> str:
        event = self.event
        prose = event.style == self.PROSE_STYLE
        if prose:
            event.style = None
        try:
            style = super().choose_scalar_style()
        finally:
            if prose:
                event.style = self.PROSE_STYLE
        value = event.value
        if prose and self.analysis.allow_block and not self.simple_key_context and _blockable(value) and (
                style != "" or len(value) > self.PLAIN_PROSE_CHARS or "\n" in value):
            return "|" if "\n" in value else ">"
        if style == "'" and "'" in value and '"' not in value and "\\" not in value:
            return '"'
        return style


def _blockable(value: str) -> bool:
    """Whether PyYAML writes `value` as a block that reads back the same: it folds "more indented" lines
    wrongly, so no line may start with white space, and line breaks other than \\n stay quoted."""
    return not any(char in value for char in "\t\r\x85\u2028\u2029") and not any(
        line[:1].isspace() for line in value.split("\n"))


_DraftDumper.add_representer(
    _Prose, lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", str(value),
                                                          style=_DraftDumper.PROSE_STYLE))
_PROSE_KEYS = {"summary", "text", "intro", "preheader"}


def _yaml(data) -> str:
    return yaml.dump(data, Dumper=_DraftDumper, sort_keys=False, allow_unicode=True, width=100)


def _prose(value):
    return _Prose(value) if isinstance(value, str) and value else value


def _with_prose(fields: dict) -> dict:
    return {key: _prose(value) if key in _PROSE_KEYS else value for key, value in fields.items()}


def _item_data(item: DraftItem) -> dict:
    return _with_prose({key: value for key, value in asdict(item).items() if value not in (None, "")})


def _section_data(section: DraftSection) -> dict:
    return {"title": section.title, "items": [_item_data(item) for item in section.items]}


def dump_draft(draft: Draft) -> str:
    sponsor = _with_prose(asdict(draft.sponsor)) if draft.sponsor else None
    data = {
        "issue": draft.issue,
        "subject": draft.subject,
        "preheader": _prose(draft.preheader),
        "intro": _prose(draft.intro),
        "sponsor": sponsor,
        "sections": [_section_data(section) for section in draft.sections],
    }
    lines = _yaml(data).splitlines(keepends=True)
    start = 0
    for key in data:  # each top-level key under its comment: the first line from there starting with `key:`
        comment = _COMMENTS.get("no sponsor" if key == "sponsor" and sponsor is None else key)
        start = next(n for n in range(start, len(lines)) if lines[n].startswith(f"{key}:"))
        if comment:
            lines.insert(start, comment)
            start += 1
    return HEADER.format(issue=draft.issue, start=draft.week_start, end=draft.week_end) + "".join(lines)


def write_draft(path: Path, draft: Draft) -> None:
    """Write the draft; over an existing file, only insert what is new, so the editor's comments,
    layout and commented-out items stay (the whole file is re-written only when that is not possible)."""
    text = merged_text(path, draft) if path.exists() else None
    write_atomically(path, text if text is not None else dump_draft(draft))


# --- re-build: new items spliced into the editor's text ---------------------------------


def merged_text(path: Path, draft: Draft) -> str | None:
    """The existing file with the items (and sections) of `draft` that it lacks inserted as text, or None
    when that is not possible or would not read back as exactly `draft`."""
    try:
        text = path.read_text(encoding="utf-8")
        old = parse_draft(path, text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
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
    old_urls = {item.url for item in old.items}
    inserts: list[tuple[int, int, str]] = []  # (before line index, order, text)
    replaced: dict[int, str] = {}  # line index -> new text of that line
    section_column = sections_node.start_mark.column
    for index, section in enumerate(draft.sections):
        new_items = [item for item in section.items if item.url not in old_urls]
        node = nodes.get(section.title)
        if node is None:
            later = [nodes[s.title] for s in draft.sections[index + 1:] if s.title in nodes]
            line = later[0].start_mark.line if later else _end_line(lines, sections_node.value[-1], section_column)
            inserts.append((line, index, _indent(_yaml([_section_data(section)]), section_column)))
            continue
        if not new_items:
            continue
        items_node = _value_of(node, "items")
        if isinstance(items_node, yaml.SequenceNode) and not items_node.flow_style and items_node.value:
            column = items_node.start_mark.column
            line = _end_line(lines, items_node.value[-1], column)
            inserts.append((line, index, _indent(_yaml([_item_data(item) for item in new_items]), column)))
        elif _is_empty(items_node):
            key = next(k for k, v in node.value if v is items_node)
            line = key.start_mark.line
            if items_node.end_mark.line != line or line in replaced:
                return None
            rest = lines[line][items_node.end_mark.column:].strip()
            if rest and not rest.startswith("#"):
                return None
            column = key.start_mark.column
            replaced[line] = (" " * column + "items:" + (" " + rest if rest else "") + "\n"
                              + _indent(_yaml([_item_data(item) for item in new_items]), column))
        else:
            return None
    if not inserts and not replaced:
        return None
    out: list[str] = []
    pending = sorted(inserts)
    for number, line in enumerate(lines + [""]):
        while pending and pending[0][0] == number:
            out.append(pending.pop(0)[2])
        if number < len(lines):
            out.append(replaced.get(number, line))
    merged = "".join(out)
    try:
        if parse_draft(path, merged) != draft:
            return None
    except ConfigError:
        return None
    return merged


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


def write_atomically(path: Path, text: str) -> None:
    """Replace the file in one step, so a reader (or a kill) never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as stream:
            stream.write(text)
        os.chmod(temporary, _mode_for(path))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
    subject = top.get("subject", str, required=True)
    top.one_line("subject", subject)  # a line break would start a mail header of its own
    return Draft(issue=issue_id, week_start=start, week_end=end,
                 subject=subject, preheader=top.get("preheader", str, ""),
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
    check_url(reader, key, url)
    return url
