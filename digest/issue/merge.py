"""A re-build's new entries spliced as text into the editor's draft file, so that every byte the editor wrote
(comments, layout, commented-out items, line ends) stays. Apart from draft.py because it works on YAML nodes
and lines, not on the draft's fields.
"""

from __future__ import annotations

from dataclasses import replace

import yaml

from digest.issue.draft_yaml import draft_yaml, group_data, held_yaml, indent, item_data, items_yaml, section_yaml
from digest.models import Draft, DraftItem, DraftSection
from digest.settings.yamlfile import YAML_LOADER


def splice(text: str, old: Draft, new: Draft) -> str | None:
    """`text` (a draft file whose draft is `old`) with what `new` adds to `old` (items, held-back posts, sections)
    inserted as text, or None when that is not possible. `new` must be `old` with entries appended (as
    `add_posts` does); the caller checks that the result reads back as `new`."""
    sections_node, lines = _sections_and_lines(text)
    if sections_node is None or sections_node.flow_style or not sections_node.value:
        return None
    nodes: dict[str, yaml.MappingNode] = {}
    for node in sections_node.value:
        title = _value_of(node, "title")
        if not isinstance(title, yaml.ScalarNode) or title.value in nodes:
            return None
        nodes[title.value] = node
    edits = _TextEdits(lines)
    old_sections = {section.title: section for section in old.sections}
    section_column = sections_node.start_mark.column
    for index, section in enumerate(new.sections):
        node = nodes.get(section.title)
        if node is None:
            later = [nodes[s.title] for s in new.sections[index + 1 :] if s.title in nodes]
            line = later[0].start_mark.line if later else _end_line(lines, sections_node.value[-1], section_column)
            edits.insert(line, indent(section_yaml(section), section_column))
        elif not _merge_section(edits, node, section_column, old_sections[section.title], section):
            return None
    return _finished(edits, text)


def splice_held(text: str, old: Draft, new: Draft) -> str | None:
    """`text` (a draft file whose draft is `old`) with the items `new` holds back moved as text: each held item's
    entry (its lines, from its dash to the next entry or the list's end) cut from its section's `items` and
    appended, with a `reason:` line, to the section's `held` list (written when it lacks one); every other byte
    stays. None when `new` is not `old` with items so moved, or the file's layout does not allow it; the caller
    checks that the result reads back as `new`."""
    if replace(old, sections=[]) != replace(new, sections=[]) or len(old.sections) != len(new.sections):
        return None
    sections_node, lines = _sections_and_lines(text)
    if sections_node is None or len(sections_node.value) != len(old.sections):
        return None
    edits = _TextEdits(lines)
    for node, before, after in zip(sections_node.value, old.sections, new.sections, strict=True):
        moved = _moved(before, after)
        if moved is None:
            return None
        if moved and not _move_entries(edits, node, sections_node.start_mark.column, moved):
            return None
    return _finished(edits, text)


def _sections_and_lines(text: str) -> tuple[yaml.SequenceNode | None, list[str]]:
    """The draft file's `sections` list as a YAML node (None when it has none to splice into), and its lines,
    the last one ended."""
    try:
        root = yaml.compose(text, Loader=YAML_LOADER)  # the caller parsed it: its depth, anchors and aliases are safe
    except yaml.YAMLError:
        return None, []
    sections_node = _value_of(root, "sections")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return (sections_node if isinstance(sections_node, yaml.SequenceNode) else None), lines


def _finished(edits: _TextEdits, text: str) -> str | None:
    """The edited file with the editor's line ends (in what was added too), or None when nothing changed."""
    if not edits.changed:
        return None
    result = edits.apply()
    if "\r\n" in text:
        result = result.replace("\r\n", "\n").replace("\n", "\r\n")
    return result


def _moved(old: DraftSection, new: DraftSection) -> list[tuple[int, str]] | None:
    """The (index in `old.items`, reason) of each item `new` moved to the end of its held list, in that list's
    order; None when `new` differs from `old` otherwise."""
    if (old.title, old.more, old.stale) != (new.title, new.more, new.stale):
        return None
    tail = _tail(old.held, new.held)
    if tail is None:
        return None
    kept = iter(new.items)
    expected = next(kept, None)
    removed: list[int] = []
    for index, item in enumerate(old.items):
        if expected is not None and item == expected:
            expected = next(kept, None)
        else:
            removed.append(index)
    if expected is not None or len(removed) != len(tail):
        return None
    moved: list[tuple[int, str]] = []
    for item in tail:
        match = next((i for i in removed if _held_as(old.items[i], item)), None)
        if match is None or item.reason is None:
            return None
        removed.remove(match)
        moved.append((match, item.reason))
    return moved


def _held_as(item: DraftItem, held: DraftItem) -> bool:
    return item.reason is None and replace(item, reason=held.reason) == held


def _move_entries(edits: _TextEdits, node, column: int, moved: list[tuple[int, str]]) -> bool:
    """Queue the cut of each moved entry of the section at `node` from its `items`, and their text (with
    their reasons) appended to its `held`."""
    items_node = _value_of(node, "items")
    if not isinstance(items_node, yaml.SequenceNode) or items_node.flow_style:
        return False
    dash = items_node.start_mark.column
    blocks = []
    for index, reason in moved:
        entry = items_node.value[index]
        first = entry.start_mark.line
        line = edits.lines[first]
        if line[dash : dash + 1] != "-" or line[:dash].strip() or not isinstance(entry, yaml.MappingNode):
            return False
        end = _end_line(edits.lines, entry, dash)
        if any(number in edits.replaced for number in range(first, end)):
            return False
        keys = entry.value[0][0].start_mark.column - dash if entry.value else 2
        if entry.flow_style or keys <= 0:
            return False
        block = [text[dash:] if text.strip() else text for text in edits.lines[first:end]]
        if any(text.strip() and text[:dash].strip() for text in edits.lines[first:end]):
            return False
        blocks.append("".join(block) + indent(draft_yaml({"reason": reason}), keys))
        for number in range(first, end):
            edits.replaced[number] = ""
    return edits.append(node, column, "held", "".join(blocks))


def _merge_section(edits: _TextEdits, node, column: int, old: DraftSection, new: DraftSection) -> bool:
    """Queue the text of what `new` adds to `old` (the same section as it is in the file at `node`)."""
    new_items = _tail(old.items, new.items)
    new_stale = _tail(old.stale, new.stale)
    if new_items is None or new_stale is None:
        return False
    if new_items and not edits.append(node, column, "items", items_yaml(new_items)):
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
            group_node, more_node.start_mark.column, "items", held_yaml([item_data(item) for item in tail])
        ):
            return False
    return (not new_groups or edits.append(node, column, "more", held_yaml([group_data(g) for g in new_groups]))) and (
        not new_stale or edits.append(node, column, "stale", held_yaml([item_data(i) for i in new_stale]))
    )


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
            self.insert(_end_line(self.lines, value.value[-1], column), indent(block, column))
        elif value is not None and _is_empty(value):
            key_node = next(k for k, v in parent.value if v is value)
            line = key_node.start_mark.line
            if value.end_mark.line != line or line in self.replaced:
                return False
            rest = self.lines[line][value.end_mark.column :].strip()
            if rest and not rest.startswith("#"):
                return False
            column = key_node.start_mark.column
            self.replaced[line] = " " * column + f"{key}:" + (" " + rest if rest else "") + "\n" + indent(block, column)
        elif value is None and isinstance(parent, yaml.MappingNode) and parent.value:
            column = parent.value[0][0].start_mark.column
            self.insert(
                _end_line(self.lines, parent, parent_column), " " * column + f"{key}:\n" + indent(block, column)
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
