"""The web stage: the newsletter on the web, and the editor's preview.

- publish: the static archive of sent issues and its Atom and JSON feeds (`digest publish`).
- app: `digest serve` (Starlette under uvicorn): the archive, signup, confirmation, one-click unsubscribe.
- signup: double opt-in: confirmation tokens, the confirmation mail, the subscriber's state changes.
- confirmations: the queue of confirmation mails in the database, sent after the answer and across restarts.
- limits: signups per client (IPv4 /32, IPv6 /64) and per hour, a client's share of the global cap.
- serve_log: uvicorn's log, a malformed request in one line.
- preview: `digest preview`, the live preview of a draft on 127.0.0.1 (with preview.html, its page).

It may import send (tokens, the SMTP transport for confirmation mails), issue, feeds, store, settings and core;
only jobs, the sample and the CLI import it.
"""
