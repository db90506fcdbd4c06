"""YAML files a person writes (feeds.yaml, drafts), read with the line of every value, and refused in one line.

`load_yaml_with_lines` gives a tree of `YamlNode`s (a value and the line it starts on); `MappingReader` reads
typed values from a mapping of them and raises ConfigError naming the file, the line and the field. Anchors,
aliases and nesting deeper than MAX_DEPTH are refused where the parser meets them, before any of them is built.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from digest.errors import ConfigError
from digest.urls import is_http_url


class YamlNode:
    """A YAML value with the line it starts on (1-based)."""

    __slots__ = ("line", "value")

    def __init__(self, value: Any, line: int):
        self.value, self.line = value, line


# libyaml's parser when PyYAML has it (its wheels do): 10x faster than the pure-Python one on big drafts.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_DEPTH = 32  # these files nest 6 levels at most: deeper is no file a person wrote, and costs the readers


def _scalar(event: yaml.ScalarEvent, path: Path, scalars: yaml.SafeLoader, where: str, line: int) -> Any:
    """A scalar's value, its tag resolved as PyYAML's safe loader would (`yes` a bool, `2026-04-03` a date)."""
    tag = event.tag
    if tag is None or tag == "!":
        tag = scalars.resolve(yaml.ScalarNode, event.value, event.implicit)
    try:
        return scalars.construct_object(yaml.ScalarNode(tag, event.value, style=event.style), deep=True)
    except yaml.constructor.ConstructorError as exc:
        raise ConfigError(path, line, where or None, exc.problem or "unsupported value") from None
    except (ValueError, TypeError, AttributeError, OverflowError, KeyError, IndexError):  # 2026-13-45, !!int x, !!bool
        shown = event.value if len(event.value) <= 40 else event.value[:39] + "…"
        raise ConfigError(path, line, where or None, f"cannot read {shown!r} as {tag.rpartition(':')[2]}") from None


class _Collection:
    """A mapping or list being read from the events: its node, field name, and the key waiting for its value."""

    __slots__ = ("index", "key", "key_line", "node", "where")

    def __init__(self, node: YamlNode, where: str):
        self.node, self.where = node, where
        self.key: str | None = None
        self.key_line = self.index = 0

    def add(self, path: Path, value: YamlNode) -> None:
        if isinstance(self.node.value, list):
            self.node.value.append(value)
            self.index += 1
            return
        assert self.key is not None
        if self.key in self.node.value:
            raise ConfigError(path, self.key_line, self.field(), "duplicate key")
        value.line = self.key_line
        self.node.value[self.key] = value
        self.key = None

    def field(self) -> str:
        """The field name of what comes next in this collection."""
        if isinstance(self.node.value, list):
            return f"{self.where}[{self.index}]"
        return f"{self.where}.{self.key}" if self.where else str(self.key)

    def wants_key(self) -> bool:
        return isinstance(self.node.value, dict) and self.key is None


def _build(path: Path, events, scalars: yaml.SafeLoader) -> YamlNode | None:
    """The tree of one YAML document, read from its events in one pass (a composed node tree took 30 MB and most
    of a second for a 10,000-feed file). Anchors, aliases (a cycle, a billion laughs), nesting deeper than
    MAX_DEPTH and keys that are not plain text are refused where they occur."""
    open_: list[_Collection] = []
    root: YamlNode | None = None
    documents = 0
    for event in events:
        line = event.start_mark.line + 1 if event.start_mark else 0
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise ConfigError(path, line, None, "not valid YAML: expected a single document in the stream")
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            value = open_.pop().node
        elif isinstance(event, yaml.NodeEvent):
            if isinstance(event, yaml.AliasEvent):
                raise ConfigError(path, line, None, f"aliases (*{event.anchor}) are not supported: write the value out")
            if event.anchor is not None:
                raise ConfigError(path, line, None, f"anchors (&{event.anchor}) are not supported: write the value out")
            parent = open_[-1] if open_ else None
            if parent is not None and parent.wants_key():
                if not isinstance(event, yaml.ScalarEvent):
                    raise ConfigError(
                        path, line, parent.where or None, "a key must be plain text, not a list or mapping"
                    )
                parent.key, parent.key_line = event.value, line
                continue
            where = parent.field() if parent else ""
            if not isinstance(event, yaml.ScalarEvent):
                if len(open_) >= MAX_DEPTH:
                    raise ConfigError(path, line, None, f"nested more than {MAX_DEPTH} levels deep")
                open_.append(
                    _Collection(YamlNode({} if isinstance(event, yaml.MappingStartEvent) else [], line), where)
                )
                continue
            value = YamlNode(_scalar(event, path, scalars, where, line), line)
        else:
            continue
        if open_:
            open_[-1].add(path, value)
        else:
            root = value
    return root


def load_yaml_with_lines(path: Path, text: str) -> YamlNode | None:
    scalars = yaml.SafeLoader("")
    try:
        return _build(path, yaml.parse(text, Loader=YAML_LOADER), scalars)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        if "maximum nesting depth" in str(exc.problem):  # libyaml (PyYAML 6.0.2+) has a limit of its own
            raise ConfigError(path, line, None, f"nested more than {MAX_DEPTH} levels deep") from None
        raise ConfigError(path, line, None, f"not valid YAML: {exc.problem or exc}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, at a position in the text
        line = text.count("\n", 0, exc.position) + 1
        character = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise ConfigError(path, line, None, f"not valid YAML: character {character}: {exc.reason}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, None, None, f"not valid YAML: {' '.join(str(exc).split())}") from None
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

    def get(self, key: str, kind: type[Any], default: Any = None, required: bool = False) -> Any:
        if key not in self.mapping or self.mapping[key].value is None:
            if required:
                raise self.error(key, "is required")
            return default
        value: Any = self.mapping[key].value
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

    def number(
        self,
        key: str,
        kind: type,
        default: Any,
        *,
        minimum: float | None = None,
        above: float | None = None,
        maximum: float | None = None,
    ) -> Any:
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


def check_url(reader: MappingReader, key: str, url: str | None, *, site: bool = False) -> None:
    """An http(s) URL setting, or an error naming its file, line and field. `site`: one of the newsletter's own
    URLs, which every page and email is made from, held to RFC 3986's characters (a feed's or an item's link is
    the world's, and escaped where it is written)."""
    if url is None:
        return
    if not is_http_url(url):
        raise reader.error(key, f"must be an http(s) URL, got {url!r}")
    if site and (unsafe := sorted(set(_NOT_IN_A_URL.findall(_PLACEHOLDER.sub("", url))))):  # {token:>9}: later
        # RFC 3986 has no place for them unencoded; written into a page's attributes they end one ("), open a
        # tag (<) or run together (a space): the archive, the feeds and every email are made from these URLs
        shown = " ".join(repr(character) for character in unsafe)
        raise reader.error(key, f"{shown} cannot stand in a URL; percent-encode it (a quote is %22), got {url!r}")


_PLACEHOLDER = re.compile(r"\{[^{}]*\}")
_NOT_IN_A_URL = re.compile(r'[\s"<>\\^`|]')


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
