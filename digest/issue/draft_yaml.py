"""How a draft's parts are written as YAML: styles an editor can edit by hand (prose as blocks, double quotes
around apostrophes), and libyaml for the thousands of held-back posts. Apart from draft.py so that merge.py
writes the entries it adds exactly as a whole draft writes them.
"""

from __future__ import annotations

from dataclasses import asdict

import yaml

from digest.models import DraftItem, DraftSection, MoreGroup


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


def draft_yaml(data) -> str:
    return yaml.dump(data, Dumper=_DraftDumper, sort_keys=False, allow_unicode=True, width=100)


# Held-back posts can number thousands (a feed's archive, a flood): libyaml writes them 10x faster than
# the pure-Python emitter, in its own styles, which matter less for text the editor only moves.
_HELD_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def held_yaml(data) -> str:
    return yaml.dump(data, Dumper=_HELD_DUMPER, sort_keys=False, allow_unicode=True, width=100)


def as_prose(value):
    return _Prose(value) if isinstance(value, str) and value else value


def with_prose(fields: dict) -> dict:
    return {key: as_prose(value) if key in _PROSE_KEYS else value for key, value in fields.items()}


def item_data(item: DraftItem) -> dict:
    return {key: value for key, value in asdict(item).items() if value not in (None, "")}


def group_data(group: MoreGroup) -> dict:
    data = {"feed": group.feed, "site": group.site, "items": [item_data(item) for item in group.items]}
    return {key: value for key, value in data.items() if value is not None}


def items_yaml(items: list[DraftItem]) -> str:
    return draft_yaml([with_prose(item_data(item)) for item in items])


def section_yaml(section: DraftSection) -> str:
    """One entry of `sections`: its items as the editor writes them, then what is held back (libyaml)."""
    text = draft_yaml([{"title": section.title, "items": [with_prose(item_data(item)) for item in section.items]}])
    held: dict = {}
    if section.more:
        held["more"] = [group_data(group) for group in section.more]
    if section.stale:
        held["stale"] = [item_data(item) for item in section.stale]
    if section.held:
        held["held"] = [item_data(item) for item in section.held]
    return text + (indent(held_yaml(held), 2) if held else "")


def indent(text: str, column: int) -> str:
    pad = " " * column
    return "".join(pad + line if line.strip() else line for line in text.splitlines(keepends=True))
