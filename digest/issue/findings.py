"""What a check found: a Finding (error, warning or note, where, what), shared by the checks of the content
(checks.py) and of the links (links.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

ERROR, WARNING, NOTE = "error", "warning", "note"  # a note: about the setup, not the issue; check alone tells it


@dataclass(frozen=True)
class Finding:
    severity: str  # ERROR, WARNING or NOTE
    where: str  # "subject", "intro", "sponsor", "News #2 “A title”"
    message: str
    item: tuple[int, int] | None = field(default=None, compare=False)  # the item's (section, index), if one

    def __str__(self) -> str:
        return f"{self.severity}: {self.where}: {self.message}"


def short_url(url: str) -> str:
    """A link fit for one line of output: a 200 KB link is not printed whole."""
    return url if len(url) <= 160 else url[:150] + f"… ({len(url):,} characters)"
