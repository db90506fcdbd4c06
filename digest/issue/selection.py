"""Which posts belong in an issue, and where: the email, or held back in the draft for the editor.

The window: a post belongs to the week its date falls in (in the newsletter's time zone). Once an
issue has been sent (or handed over, or begun), the next one also offers every post never sent that
was stored after that issue was last built, or dated after that build, whatever its date: a feed that
was down on Friday catches up the week after, a post that shows up in its feed hours after the send
goes out next time, and so does one that was dated in the future when the issue was built. Posts of
skipped weeks are carried forward. Before any issue is sent, an issue holds only its own week. Posts
dated in the future wait; posts an email held never come back.

Held back, listed in the draft but not in the email, so that nothing is lost without a word:
- stale: dated more than `stale_after_weeks` before the issue's week (a late post from long ago, a
  feed's archive seen for the first time);
- more: a feed's posts beyond its `max_items` in this issue (the newest are kept); the email says
  "and 37 more from Example Blog".
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlite_utils

from digest import store
from digest.issue.weeks import week_span
from digest.models import Placement
from digest.settings.config import Config, FeedConfig


@dataclass(frozen=True)
class SelectedPost:
    section: str
    row: dict  # the posts row
    feed: FeedConfig
    site: str  # the feed's home page
    placement: Placement = Placement.ITEM

    @property
    def id(self) -> str:
        return self.row["id"]


@dataclass
class Selection:
    posts: list[SelectedPost]  # in section order, oldest first within a section
    seen_seq: int  # how far the posts stored when it was made go: later ones are news for the next issue


def select_posts(db: sqlite_utils.Database, config: Config, issue_id: str, now: datetime) -> Selection:
    """Every post the issue may hold; stale ones marked.

    A post goes under the first feed that brought it and wants it (its own include/exclude words), so an
    aggregator that filters a post out does not hide it when the blog it comes from is configured too;
    posts that no configured feed wants are left out.
    """
    tz = config.newsletter.tz
    start, end = week_span(issue_id, tz)
    since = start
    last_sent = store.last_sent_issue(db, before=issue_id)
    if last_sent is not None:
        since = min(start, week_span(last_sent["id"], tz)[1])
    rows, seen_seq = store.candidate_posts(
        db, since=store.iso(since), until=store.iso(end), now=store.iso(now), last=last_sent
    )
    stale_before = store.iso(start - timedelta(weeks=config.newsletter.stale_after_weeks))
    sites = store.feed_sites(db)
    carriers = store.post_sources(db, [row["id"] for row in rows])
    order = {name: index for index, name in enumerate(config.newsletter.sections)}
    selected = []
    for row in rows:
        feeds = [config.feed(url) for url in dict.fromkeys([row["feed_url"], *carriers.get(row["id"], [])])]
        feed = next(
            (feed for feed in feeds if feed is not None and feed.wants(row["title"], row["summary"] or "")), None
        )
        if feed is None:
            continue
        placement = Placement.STALE if row["published_at"] < stale_before else Placement.ITEM
        selected.append(
            SelectedPost(
                section=feed.section,
                row=row,
                feed=feed,
                site=sites.get(feed.url) or _origin(feed.url),
                placement=placement,
            )
        )
    selected.sort(key=lambda post: order[post.section])  # stable: keeps date order inside a section
    return Selection(posts=selected, seen_seq=seen_seq)


def new_for_issue(db: sqlite_utils.Database, config: Config, issue_id: str, now: datetime) -> Selection:
    """The posts of `select_posts` not yet offered to this issue's draft, each placed: stale; an item while
    its feed has fewer than `max_items` items in this issue (counting earlier builds: so a later build's
    posts go to `more` once the feed's items are in), the newest of this build first; else more."""
    offered = store.offered_post_ids(db, issue_id)
    selection = select_posts(db, config, issue_id, now)
    fresh = [post for post in selection.posts if post.id not in offered]
    room = {feed.url: feed.max_items for feed in config.feeds}
    for feed_url, count in store.offered_items_per_feed(db, issue_id).items():
        room[feed_url] = room.get(feed_url, 0) - count
    by_feed: dict[str, list[SelectedPost]] = defaultdict(list)
    for post in fresh:
        if post.placement == Placement.ITEM:
            by_feed[post.feed.url].append(post)
    overflow: set[str] = set()
    for feed_url, posts in by_feed.items():
        newest_first = sorted(posts, key=lambda post: (post.row["published_at"], post.id), reverse=True)
        overflow.update(post.id for post in newest_first[max(0, room.get(feed_url, 0)) :])
    placed = [
        SelectedPost(post.section, post.row, post.feed, post.site, Placement.MORE) if post.id in overflow else post
        for post in fresh
    ]
    return Selection(posts=placed, seen_seq=selection.seen_seq)


def _origin(url: str) -> str:
    """Where a feed without a channel link lives: the home page of its host."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}/"
