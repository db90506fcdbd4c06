"""Settings sections of feeds.yaml (`collect:`, each backend's) described once, as dataclass fields, and read
by one helper that checks every value's type and range and names the file, line and field of what is wrong.

    @dataclass(frozen=True)
    class SmtpSettings:
        port: int = setting(587, minimum=1, maximum=65535)

Nothing is silently clamped. A renamed key is still read, with a deprecation warning that says what to write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

from digest.settings.yamlfile import MappingReader

T = TypeVar("T")
_KINDS: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool, "str | None": str}


# The longest wait a setting may ask for: a larger number is a typo, and past about 1e9 s the clocks' and
# sockets' own limits turn it into an OverflowError in the middle of a run.
HOUR, DAY = 3600.0, 86400.0


def setting(
    default: Any,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] = (),
) -> Any:
    """A field of a settings dataclass, with the range its value must be in."""
    return field(default=default, metadata={"minimum": minimum, "above": above, "maximum": maximum, "choices": choices})


@dataclass(frozen=True)
class Renamed:
    """An old key still read (an int at least `minimum`): its value becomes `new` through `convert`, and a
    warning says what to write instead."""

    new: str
    convert: Callable[[int], Any]
    minimum: int = 0
    hint: str = ""


def read_section(
    reader: MappingReader | None, kind: type[T], warnings: list[str], renamed: dict[str, Renamed] | None = None
) -> T:
    """The settings of one section (defaults where the section or a key is absent)."""
    if reader is None:
        return kind()
    renamed = renamed or {}
    known = {item.name: item for item in fields(kind)}  # type: ignore[arg-type]
    reader.check_keys(set(known) | set(renamed))
    values: dict[str, Any] = {}
    for name, item in known.items():
        if name in reader.mapping and reader.mapping[name].value is not None:
            values[name] = _value(reader, name, item)
    for old, rename in renamed.items():
        if old in reader.mapping and rename.new not in reader.mapping:
            values[rename.new] = rename.convert(reader.number(old, int, 0, minimum=rename.minimum))
            warnings.append(
                f"{reader.path}:{reader.line(old)}: {reader.field_name(old)} is deprecated: write "
                f"{rename.new}: {values[rename.new]!r} instead{rename.hint}"
            )
    settings = kind(**values)
    check = getattr(settings, "check", None)
    if check is not None:
        check(reader)
    return settings


def _value(reader: MappingReader, key: str, item) -> Any:
    meta = item.metadata
    kind = _KINDS[item.type if isinstance(item.type, str) else item.type.__name__]
    default = None if item.default is MISSING else item.default
    if kind in (int, float):
        value = reader.number(
            key, kind, default, minimum=meta.get("minimum"), above=meta.get("above"), maximum=meta.get("maximum")
        )
    else:
        value = reader.get(key, kind, default)
    if kind is str and value is not None:
        value = value.strip()
        if meta.get("choices") and value not in meta["choices"]:
            raise reader.error(key, f"must be {', '.join(meta['choices'][:-1])} or {meta['choices'][-1]}")
    return value
