"""The one SQLite file: the feeds and their posts, the issues and what went into them, the deliveries of each send,
and the subscribers. One module per table family (posts, issues, subscribers) over db (the connection, transactions
and times) and migrations (the schema, brought up to date when the file is opened).

Its rules: the file is in WAL mode and readable by its owner only; its schema changes only through migrations.py,
so that an old database opens unchanged but for the new; a write is one transaction (`transaction`); an
unsubscribe, bounce or complaint recorded here always wins over a subscriber CSV. The store may import the
settings and core only. Every stage calls it as `store.x(...)`, so this package re-exports its modules' public
names; its own modules import each other directly (`from digest.store.db import transaction`).
"""

from __future__ import annotations

from digest.store.db import (
    database_path,
    from_iso,
    iso,
    open_db,
    transaction,
)
from digest.store.issues import (
    add_offered,
    begin_remote,
    begin_send,
    delivery_counts,
    delivery_keys,
    ensure_issue,
    finish_deliveries,
    forget_remote,
    get_issue,
    issue_row,
    last_sent_issue,
    list_ids,
    mark_delivery,
    mark_sending,
    offered_items_per_feed,
    offered_post_ids,
    offered_posts,
    record_remote,
    return_to_draft_if_undelivered,
    start_deliveries,
)
from digest.store.posts import (
    FetchOutcome,
    candidate_posts,
    feed_health,
    feed_sites,
    feed_states,
    post_sources,
    posts_without_text,
    record_fetch,
    record_page_summaries,
)
from digest.store.subscribers import (
    SubscriberChanges,
    kept_over_lists,
    record_subscribers,
    subscriber_list,
    subscriber_rows,
    suppress,
    suppressions,
)

__all__ = [
    "FetchOutcome",
    "SubscriberChanges",
    "add_offered",
    "begin_remote",
    "begin_send",
    "candidate_posts",
    "database_path",
    "delivery_counts",
    "delivery_keys",
    "ensure_issue",
    "feed_health",
    "feed_sites",
    "feed_states",
    "finish_deliveries",
    "forget_remote",
    "from_iso",
    "get_issue",
    "iso",
    "issue_row",
    "kept_over_lists",
    "last_sent_issue",
    "list_ids",
    "mark_delivery",
    "mark_sending",
    "offered_items_per_feed",
    "offered_post_ids",
    "offered_posts",
    "open_db",
    "post_sources",
    "posts_without_text",
    "record_fetch",
    "record_page_summaries",
    "record_remote",
    "record_subscribers",
    "return_to_draft_if_undelivered",
    "start_deliveries",
    "subscriber_list",
    "subscriber_rows",
    "suppress",
    "suppressions",
    "transaction",
]
