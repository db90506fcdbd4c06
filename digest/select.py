"""Which posts belong in an issue: the week, not yet sent, the feeds' filters, sections and order."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlite_utils

from . import store
from .config import Config
from .weeks import week_span


@dataclass(frozen=True)
class SelectedPost:
    section: str
    row: dict  # the posts row

    @property
    def id(self) -> str:
        return self.row["id"]


def select_posts(db: sqlite_utils.Database, config: Config, issue_id: str, now: datetime) -> list[SelectedPost]:
    """The posts of an issue, in section order, oldest first within a section.

    A post belongs to the week its published_at falls in (in the newsletter's time
    zone). Posts from weeks after the last sent issue that were never sent are
    carried forward, so a skipped week loses nothing; with no issue sent yet an
    issue holds only its own week. Posts dated after `now` wait. Posts of feeds no
    longer in the config, or that the feed's include/exclude words reject, are left out.
    """
    tz = config.newsletter.tz
    start, end = week_span(issue_id, tz)
    since = start
    last_sent = store.last_sent_issue(db, before=issue_id)
    if last_sent is not None:
        since = min(start, week_span(last_sent["id"], tz)[1])
    rows = store.candidate_posts(db, since=store.iso(since), until=store.iso(end), now=store.iso(now))
    order = {name: index for index, name in enumerate(config.newsletter.sections)}
    selected = []
    for row in rows:
        feed = config.feed(row["feed_url"])
        if feed is None or not feed.wants(row["title"], row["summary"] or ""):
            continue
        selected.append(SelectedPost(section=feed.section, row=row))
    selected.sort(key=lambda post: order[post.section])  # stable: keeps date order inside a section
    return selected
