"""The issue stage (rank 4): from stored posts to the draft the editor edits, and from the draft to the email.

- selection: which posts belong in an issue, and where (the email, or held back in the draft).
- draft: drafts/<issue>.yaml: read, parsed, written, and built from selected posts.
- draft_yaml: the YAML styles a draft is written in, easy to edit by hand.
- merge: a re-build's new entries spliced as text into the editor's file, every edit kept.
- prose: the editor's Markdown (intro, summaries, sponsor) as HTML and text.
- render: a draft → the finished email (HTML and text).
- checks: `digest check`, what could go wrong with an issue before it is sent.
- weeks: ISO weeks in the newsletter's time zone.

It may import feeds (fetch for link checks, pages), store, settings and core, never send, web or above.
"""
