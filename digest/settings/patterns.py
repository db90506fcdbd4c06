"""The patterns of feeds.yaml filled in later: the subject (`{title}: {start:%b %-d}`) and the URLs with
placeholders (`unsubscribe_url`'s `{token}`), checked when the settings are read, so that a build or a send
never meets a pattern it cannot fill in, nor one that would make a gigabyte of one field."""

from __future__ import annotations

import re
import string
from datetime import date

from digest.settings.yamlfile import MappingReader

MAX_FORMAT_WIDTH = 200  # characters: a subject's field padded or cut wider than a whole subject line is a typo
_DATE_FIELDS = ("start", "end")  # their format is strftime's: %10Y pads the year to 10
_STRFTIME_WIDTH = re.compile(r"%[-_0^#]*(\d+)")
_DIGITS = re.compile(r"\d+")


def check_subject(reader: MappingReader, subject: str, title: str) -> None:
    """The subject pattern: its fields known, their widths bounded, one line once filled in, {lead} alone."""
    _check_subject_widths(reader, subject)
    try:
        sample = subject.format(
            title=title,
            issue="2026-W01",
            start=date(2026, 1, 5),
            end=date(2026, 1, 11),
            lead="The lead story",
            number=1,
        )
    except (KeyError, IndexError, ValueError, AttributeError, TypeError, OverflowError, MemoryError) as exc:
        problem = (
            f"bad pattern ({exc or type(exc).__name__}); use {{title}}, {{issue}}, {{start}}, {{end}}, {{lead}}, "
            f"{{number}}"
        )
        raise reader.error("subject", problem) from None
    if "\r" in sample or "\n" in sample:
        raise reader.error("subject", "must give one line (no line breaks)")
    for _, name, spec, conversion in string.Formatter().parse(subject):
        if name == "lead" and (spec or conversion):  # {lead} is filled in later, whole: no format of its own
            raise reader.error("subject", "write {lead} alone, without a format or conversion")


def _check_subject_widths(reader: MappingReader, subject: str) -> None:
    """Every width and precision in the subject's formats at most MAX_FORMAT_WIDTH: `{title:>1000000000}` would
    make each build write a gigabyte. A width taken from another field (`{title:>{number}}`) is refused: its
    size is not known until the issue is built. A pattern that does not parse is left to the sample's check."""
    try:
        fields = [(name, spec or "", conversion) for _, name, spec, conversion in string.Formatter().parse(subject)]
    except ValueError:
        return
    for name, spec, conversion in fields:
        if name is None:
            continue
        shown = f"{{{name}:{spec}}}"
        if "{" in spec:
            raise reader.error("subject", f"{shown}: a format cannot hold a nested field; write the width itself")
        pattern = _STRFTIME_WIDTH if name in _DATE_FIELDS and not conversion else _DIGITS  # {start!s:>9}: a string
        widths = [int(found) for found in pattern.findall(spec)]
        if widths and max(widths) > MAX_FORMAT_WIDTH:
            raise reader.error(
                "subject", f"{shown}: a width or precision of {max(widths):,} is more than {MAX_FORMAT_WIDTH}"
            )


def check_placeholders(
    reader: MappingReader, key: str, value: str | None, *, allowed: set[str], required: set[str]
) -> None:
    """A URL pattern may hold only the named placeholders, and must hold the required ones: without {token},
    every subscriber would get the same unsigned unsubscribe link."""
    if value is None:
        return
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(value)]
    except ValueError as exc:
        raise reader.error(key, f"bad pattern ({exc}); write a literal brace as {{{{ or }}}}") from None
    names = {name for name, _, _ in fields if name is not None}
    wanted = ", ".join("{" + name + "}" for name in sorted(allowed))
    for name, spec, conversion in fields:
        # {token:>9999999999} would be a MemoryError at send time, {email!r} would add quotes
        if name is not None and (spec or conversion):
            shown = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise reader.error(key, f"{{{shown}}}: write the placeholder alone, as {wanted}")
    unknown = names - allowed
    if unknown:
        raise reader.error(key, f"unknown placeholder {{{sorted(unknown)[0]}}}: use {wanted}")
    missing = required - names
    if missing:
        raise reader.error(key, f"must hold {{{sorted(missing)[0]}}}: each subscriber's link is signed for them")
