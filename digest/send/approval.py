"""Approval before the schedule sends (newsletter.approval: required): review copies, `digest approve`, and
what `digest run` decides for an issue that waits for its editor.

    review    the email itself to the editors, a banner on top listing what the checks found and how to approve;
              mailed again only when the draft changed since the last one
    approve   records the approval with a hash of the draft: an edit afterwards voids it
    decide    approved (this very draft) → send; past approval_deadline with no error → send unapproved;
              otherwise wait, mailing a new review copy if the draft changed

A week's run collects and builds only until a review copy went out (or an approval was given): from then on
the draft is the editor's, and new posts wait for the next issue rather than void what they approved.
"""

from __future__ import annotations

import hashlib
import html as html_lib
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import sqlite_utils

from digest import store
from digest.errors import CheckFailed, Failed, SendError
from digest.issue.checks import CheckReport, check_issue
from digest.issue.draft import draft_path, parse_draft
from digest.issue.render import after_body_tag, render_issue
from digest.issue.weeks import parse_week
from digest.models import IssueStatus
from digest.send.base import SendPlan
from digest.send.registry import backend_class
from digest.settings.config import Config
from digest.settings.yamlfile import read_text_file

NO_DRAFT = "no draft for this week (run `digest build` first)"


def draft_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Decision:
    """What a run did about approval: sent (approved or past the deadline) or waiting, and why."""

    outcome: str  # "approved", "deadline", "waiting"
    lines: list[str] = field(default_factory=list)
    check: CheckReport | None = None
    approved_hash: str | None = None  # the draft that may be sent: the send refuses any other
    problem: str | None = None  # what cron must hear: past the deadline, and the issue cannot go out

    @property
    def send(self) -> bool:
        return self.outcome in ("approved", "deadline")


def approval_started(db: sqlite_utils.Database, issue_id: str) -> bool:
    """Whether a review copy went out or an approval was given: the draft is the editor's from then on."""
    issue = store.get_issue(db, issue_id) or {}
    return bool(issue.get("review_hash") or issue.get("approved_hash"))


def deadline(config: Config, issue_id: str) -> datetime | None:
    """approval_deadline within the issue's week, in the newsletter's time zone."""
    if config.newsletter.approval_deadline is None:
        return None
    weekday, moment = config.newsletter.approval_deadline
    day = parse_week(issue_id) + timedelta(days=weekday)
    return datetime.combine(day, moment, config.newsletter.tz)


def decide(config: Config, db: sqlite_utils.Database, issue_id: str, now: datetime) -> Decision:
    """Send the approved draft; past the deadline, an unapproved one without errors; else wait for the editor
    (with a new review copy when the draft changed since the last)."""
    path = draft_path(config.drafts_dir, issue_id)
    text = read_text_file(path, NO_DRAFT)
    current = draft_hash(text)
    issue = store.get_issue(db, issue_id) or {}
    if issue.get("approved_hash") == current:
        lines = [f"{issue_id}: approved at {issue['approved_at']}; sending"]
        return Decision("approved", lines, approved_hash=current)
    check = check_issue(config, db, issue_id, draft=parse_draft(path, text), now=now)
    due = deadline(config, issue_id)
    reviewed = issue.get("review_hash") is not None  # the editors had their chance: a copy went out before
    if due is not None and now >= due and reviewed and not check.errors:
        line = (
            f"{issue_id}: not approved, but the approval deadline ({due:%a %H:%M}) has passed and the checks "
            f"found no error; sending"
        )
        return Decision("deadline", [line], check, approved_hash=current)
    decision = Decision("waiting", check=check)
    if issue.get("approved_hash"):
        decision.lines.append(f"{issue_id}: the draft changed after it was approved: the approval is void")
    if issue.get("review_hash") != current:
        editors = review(config, db, issue_id, text, check, now)
        decision.lines.append(f"{issue_id}: review copy mailed to {', '.join(editors)}")
    decision.lines.append(
        f"{issue_id}: waiting for approval ({len(check.errors)} error(s), {len(check.warnings)} warning(s)): "
        f"digest approve --week {issue_id}"
    )
    if due is not None and now >= due and reviewed:
        decision.problem = (
            f"{issue_id}: the approval deadline ({due:%a %H:%M}) has passed, and the issue is neither approved nor "
            f"free of errors: it will not go out until someone approves it"
        )
    return decision


def review(
    config: Config, db: sqlite_utils.Database, issue_id: str, text: str, check: CheckReport, now: datetime
) -> list[str]:
    """Mail the editors the email, a banner on top with the findings, through the SMTP settings; remember for
    which draft. Returns the editors."""
    draft = parse_draft(draft_path(config.drafts_dir, issue_id), text)
    rendered = render_issue(draft, config.newsletter, config.folder)
    findings = [str(finding) for finding in check.findings] or ["the checks found nothing to fix"]
    approve = f"digest approve --week {issue_id}"
    banner = (
        '<div role="note" style="background:#fff4d6;color:#3d2e00;border:2px solid #8a6d00;padding:12px 16px;'
        'font:15px/1.45 Arial,Helvetica,sans-serif;margin:0 auto 12px;max-width:600px">'
        f'<p style="margin:0 0 8px"><strong>Review copy of {html_lib.escape(issue_id)}</strong>: not sent to '
        f"subscribers. Approve it with <code>{html_lib.escape(approve)}</code>; editing the draft afterwards voids "
        'the approval.</p><ul style="margin:0;padding-left:20px">'
        + "".join(f"<li>{html_lib.escape(line)}</li>" for line in findings)
        + "</ul></div>"
    )
    text_banner = (
        f"REVIEW COPY of {issue_id}: not sent to subscribers. Approve it with: {approve}\n"
        + "".join(f"- {line}\n" for line in findings)
        + "\n"
    )
    copy = replace(
        rendered,
        subject=f"[Review] {rendered.subject}",
        html=after_body_tag(rendered.html, banner),
        text=text_banner + rendered.text,
    )
    smtp = backend_class("smtp")(config)
    plan = SendPlan(issue=issue_id, backend=smtp.name, draft=draft, rendered=copy)
    mailed, refused = [], []
    for editor in config.newsletter.editors:
        try:
            smtp.send_test(plan, editor)
            mailed.append(editor)
        except SendError as exc:  # one editor's address refused: the others still get their copy
            refused.append(str(exc))
    if not mailed:
        raise SendError(f"no review copy could be mailed: {'; '.join(refused)}")
    store.ensure_issue(db, issue_id, draft.subject, now)
    db.execute(
        "UPDATE issues SET review_hash = ?, reviewed_at = ? WHERE id = ?", [draft_hash(text), store.iso(now), issue_id]
    )
    return mailed + [f"(not {problem})" for problem in refused]


def approve(
    config: Config, db: sqlite_utils.Database, issue_id: str, *, now: datetime, force: bool = False
) -> tuple[str, CheckReport]:
    """Record the editor's approval of the draft as it is now (its hash). A draft the checks find errors in is
    refused unless `force`: then the editor accepts them (a false alarm: "TODO apps", a site that refuses
    robots), and the run sends it as approved. An issue sent, or being sent, is refused: there is nothing left
    to approve. Returns the hash and the checks' report."""
    issue = store.get_issue(db, issue_id) or {}
    if issue.get("status") == IssueStatus.SENT:
        raise Failed(f"{issue_id} was already sent ({issue.get('sent_at')}): nothing to approve")
    if issue.get("status") == IssueStatus.SENDING or issue.get("remote_id"):
        raise Failed(f"{issue_id} is being sent already: approval no longer applies; digest send resumes it")
    path = draft_path(config.drafts_dir, issue_id)
    text = read_text_file(path, NO_DRAFT)
    draft = parse_draft(path, text)
    check = check_issue(config, db, issue_id, draft=draft, now=now)
    if check.errors and not force:
        raise CheckFailed(check.refusal(path).replace("to send it as it is", "to approve it as it is"))
    store.ensure_issue(db, issue_id, draft.subject, now)
    digest = draft_hash(text)
    db.execute("UPDATE issues SET approved_hash = ?, approved_at = ? WHERE id = ?", [digest, store.iso(now), issue_id])
    return digest, check
