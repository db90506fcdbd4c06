"""The feeds stage (rank 3): `digest collect` fetches every configured feed and stores its new posts.

- collect: the collect run: fetch every feed, parse the changed ones on all cores, store posts and health.
- fetch: HTTP fetching, concurrent and guarded: conditional GET, redirects, deadlines, size cap, retries.
- encoding: a fetched document's character encoding, re-encoded as UTF-8 before feedparser reads it.
- parse: feed bytes → sanitized `Post` records (identity, links, dates, summaries, bylines).
- pages: a post's own page, for its description when its feed gives only a title.

It may import the store, settings and core modules (digest/*.py), never issue, send, web or above.
"""
