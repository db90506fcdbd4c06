"""An unattended run's hold-back: the items a feed brought that the checks find broken (a dead link, a link
already sent, an item too large for the email) leave the email for their section's `held` list in the draft,
each with its reason, so that one bad entry of a feed never stops the week. An email past Gmail's clip only
because of its many feed items holds back as few of them as it takes to fit (the last of the fullest section
first). What the editor wrote (the intro, the sponsor, an item added by hand, a placeholder) is never held
back: its errors still stop the send."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

import sqlite_utils

from digest import store
from digest.issue.checks import CheckReport, check_issue, email_bytes
from digest.issue.draft import draft_path, read_draft, write_draft
from digest.issue.render import GMAIL_CLIP_BYTES
from digest.models import Draft, DraftItem
from digest.settings.config import Config
from digest.urls import clean_url, url_key

ITEM_BYTES = 10_000  # an item whose own text and links pass this is oversized: most take well under 1 KB
TO_FIT = "past Gmail's clip: held back to fit (the email was {size} KB of HTML with it; Gmail clips past 102 KB)"


@dataclass(frozen=True)
class HeldBack:
    section: str
    title: str
    url: str | None
    reason: str

    def __str__(self) -> str:
        return f"{self.section}: “{self.title}”: {self.reason}"


def hold_back(
    config: Config, db: sqlite_utils.Database, issue_id: str, *, now: datetime
) -> tuple[list[HeldBack], CheckReport]:
    """Check the draft; move the broken items a feed brought to `held` (the draft written again when any moved).
    Returns what was held back and the report of the checks, as they were before."""
    path = draft_path(config.drafts_dir, issue_id)
    draft = read_draft(path)
    report = check_issue(config, db, issue_id, draft=draft, size=False, now=now)
    offered = {post["url_key"] for post in store.offered_posts(db, issue_id) if post["url_key"]}
    reasons: dict[tuple[int, int], str] = {}
    for finding in report.errors:
        if finding.item is not None and _from_feed(draft, finding.item, offered):
            reasons.setdefault(finding.item, finding.message)
    held = _move(draft, reasons)
    held += _hold_oversized(config, draft, offered)
    held += _hold_to_fit(config, draft, offered)
    if held:
        write_draft(path, draft)
    return held, report


def _from_feed(draft: Draft, place: tuple[int, int], offered: set[str]) -> bool:
    """Whether the item is a post a build offered to this draft (not one the editor added by hand)."""
    item = draft.sections[place[0]].items[place[1]]
    return bool(item.url) and url_key(clean_url(item.url) or item.url or "") in offered


def _move(draft: Draft, reasons: dict[tuple[int, int], str]) -> list[HeldBack]:
    """Move the items at these places to the end of their section's `held` list, in the order of the section."""
    moved: dict[int, list[DraftItem]] = {}
    held = []
    for (section_index, index), reason in sorted(reasons.items(), reverse=True):  # from the end: indexes stay
        section = draft.sections[section_index]
        item = section.items.pop(index)
        item.reason = reason
        moved.setdefault(section_index, []).insert(0, item)
        held.append(HeldBack(section.title, item.title, item.url, reason))
    for section_index, items in moved.items():
        draft.sections[section_index].held.extend(items)
    return held[::-1]


def _footprint(item: DraftItem) -> int:
    """What an item adds to the email, about: its link twice (the title's and the source's), its text."""
    return 2 * len(item.url or "") + len(item.title) + len(item.summary) + len(item.image or "")


def _hold_oversized(config: Config, draft: Draft, offered: set[str]) -> list[HeldBack]:
    """While the email passes Gmail's clipping, hold back its largest feed item, if that item alone is
    oversized (an email long because of many items is the editor's to cut: its error stays)."""
    held: list[HeldBack] = []
    size = email_bytes(config, draft)
    while size > GMAIL_CLIP_BYTES:
        places = [
            (_footprint(item), (s, i))
            for s, section in enumerate(draft.sections)
            for i, item in enumerate(section.items)
            if _from_feed(draft, (s, i), offered)
        ]
        footprint, place = max(places, default=(0, (0, 0)))
        if footprint < ITEM_BYTES:
            break
        reason = (
            f"oversized: this item takes about {footprint / 1024:.0f} KB of the email, whose HTML was "
            f"{size / 1024:.0f} KB (Gmail clips it past 102 KB)"
        )
        held += _move(draft, {place: reason})
        size = email_bytes(config, draft)
    return held


def _fit_order(draft: Draft, offered: set[str]) -> list[tuple[int, int]]:
    """The feed items an email too large gives up, first to last: the last feed item of the section with the
    most items in the email (the later section on a tie), again and again; never an item the editor added."""
    counts = [len(section.items) for section in draft.sections]
    feed_places = [
        [i for i in range(len(section.items)) if _from_feed(draft, (s, i), offered)]
        for s, section in enumerate(draft.sections)
    ]
    order: list[tuple[int, int]] = []
    while True:
        candidates = [(counts[s], s) for s in range(len(counts)) if feed_places[s]]
        if not candidates:
            return order
        _, s = max(candidates)
        order.append((s, feed_places[s].pop()))
        counts[s] -= 1


def _without(draft: Draft, places: list[tuple[int, int]]) -> Draft:
    """A copy of the draft whose email leaves out the items at these places (to measure it)."""
    gone = set(places)
    sections = [
        replace(section, items=[item for i, item in enumerate(section.items) if (s, i) not in gone])
        for s, section in enumerate(draft.sections)
    ]
    return replace(draft, sections=sections)


def _hold_to_fit(config: Config, draft: Draft, offered: set[str]) -> list[HeldBack]:
    """An email past Gmail's clip only because of its many feed items (none oversized alone) holds back as
    few of them as it takes to fit, in _fit_order's order; when even without all of them it would not fit,
    the editor's part is too large: nothing is held back, and the size still stops the send."""
    size = email_bytes(config, draft)
    if size <= GMAIL_CLIP_BYTES:
        return []
    order = _fit_order(draft, offered)
    if not order or email_bytes(config, _without(draft, order)) > GMAIL_CLIP_BYTES:
        return []
    low, high = 0, len(order)  # holding back order[:high] fits, order[:low] does not
    while high - low > 1:
        middle = (low + high) // 2
        if email_bytes(config, _without(draft, order[:middle])) <= GMAIL_CLIP_BYTES:
            high = middle
        else:
            low = middle
    reason = TO_FIT.format(size=round(size / 1024))
    return _move(draft, dict.fromkeys(order[:high], reason))
