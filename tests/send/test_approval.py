"""Approval before the schedule sends, end to end with aiosmtpd and a loopback feed: run → review copy →
edit → voided → approve → run sends → run does nothing; and the deadline that sends without the editor."""

from __future__ import annotations

import email
from email import policy

import pytest
import yaml

from digest.issue.draft import draft_path, read_draft, write_draft

from conftest import LAST_WEEK

EDITOR = "editor@example.com"


def require_approval(directory, **more) -> None:
    config = directory / "feeds.yaml"
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["newsletter"].update(approval="required", editors=[EDITOR], **more)
    config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def to_editor(server) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(message.data, policy=policy.default)
        for message in server.messages
        if message.rcpt == EDITOR
    ]


def to_subscribers(server) -> list[str]:
    return [message.rcpt for message in server.messages if message.rcpt != EDITOR]


def edit_title(directory, title: str) -> None:
    path = draft_path(directory / "drafts", LAST_WEEK)
    draft = read_draft(path)
    draft.items[0].title = title
    write_draft(path, draft)


def test_the_schedule_sends_only_what_the_editor_approved(project, server, feed_server, run_cli):
    require_approval(project)
    code, out, err = run_cli("run", "--yes", cwd=project)
    assert code == 0, err
    assert f"{LAST_WEEK}: review copy mailed to {EDITOR}" in out and "waiting for approval" in out
    reviews = to_editor(server)
    assert len(reviews) == 1 and reviews[0]["Subject"].startswith("[Review] ")
    html = reviews[0].get_body(("html",)).get_content()
    assert f"digest approve --week {LAST_WEEK}" in html and "warning: intro: empty" in html
    assert not to_subscribers(server)

    fetched = len(feed_server.requests)
    code, out, _ = run_cli("run", "--yes", cwd=project)
    assert code == 0 and "waiting for approval" in out and "review copy mailed" not in out
    assert len(to_editor(server)) == 1 and len(feed_server.requests) == fetched  # the draft is the editor's now

    edit_title(project, "A better title")
    run_cli("run", "--yes", cwd=project)
    assert len(to_editor(server)) == 2 and not to_subscribers(server)  # the edited draft, reviewed again

    assert run_cli("approve", "--week", LAST_WEEK, cwd=project)[0] == 0
    edit_title(project, "An even better title")
    code, out, _ = run_cli("run", "--yes", cwd=project)
    assert "the draft changed after it was approved: the approval is void" in out
    assert len(to_editor(server)) == 3 and not to_subscribers(server)

    code, out, _ = run_cli("status", "--week", LAST_WEEK, cwd=project)
    assert "  approved:  approval void: the draft changed after it" in out.splitlines()
    code, out, _ = run_cli("approve", "--week", LAST_WEEK, cwd=project)
    assert code == 0 and out.splitlines()[-1].startswith(f"{LAST_WEEK}: approved (draft ")
    code, out, err = run_cli("run", "--yes", cwd=project)
    assert code == 0, err
    assert f"{LAST_WEEK}: approved at " in out and f"send {LAST_WEEK} via smtp: 3 sent" in out
    assert len(to_subscribers(server)) == 3 and len(to_editor(server)) == 3
    code, out, _ = run_cli("status", "--week", LAST_WEEK, cwd=project)
    assert "  sent:      smtp 3 sent" in out.splitlines()

    code, out, _ = run_cli("run", "--yes", cwd=project)
    assert code == 0 and out.startswith(f"{LAST_WEEK}: already sent") and len(to_subscribers(server)) == 3


def test_a_draft_with_errors_cannot_be_approved(project, server, run_cli):
    require_approval(project)
    run_cli("run", "--yes", cwd=project)
    edit_title(project, "TK: find a title")
    code, _, err = run_cli("approve", "--week", LAST_WEEK, cwd=project)
    assert (
        code == 1
        and "a placeholder is left: TK" in err
        and err.rstrip().endswith("or add --force to approve it as it is")
    )


def test_past_the_deadline_a_draft_without_errors_goes_unapproved(project, server, run_cli):
    require_approval(project, approval_deadline="monday 09:00")  # LAST_WEEK is last week: long past
    run_cli("run", "--yes", cwd=project)  # the editors get their chance first, deadline or not
    assert len(to_editor(server)) == 1 and not to_subscribers(server)
    code, out, err = run_cli("run", "--yes", cwd=project)
    assert code == 0, err
    assert "the approval deadline (Mon 09:00) has passed and the checks found no error; sending" in out
    assert len(to_subscribers(server)) == 3 and len(to_editor(server)) == 1


def test_a_false_alarm_is_approved_with_force_and_the_run_sends_it(project, server, run_cli):
    require_approval(project)
    run_cli("run", "--yes", cwd=project)
    edit_title(project, "TODO: a real post's title, which the editor keeps")
    assert run_cli("approve", "--week", LAST_WEEK, cwd=project)[0] == 1
    code, out, _ = run_cli("approve", "--week", LAST_WEEK, "--force", cwd=project)
    assert code == 0 and "error: News #1 " in out
    code, out, err = run_cli("run", "--yes", cwd=project)
    assert code == 0, err
    assert len(to_subscribers(server)) == 3


def test_past_the_deadline_an_issue_that_cannot_go_tells_cron(project, server, run_cli):
    require_approval(project, approval_deadline="monday 09:00")
    run_cli("run", "--yes", cwd=project)  # the deadline has passed, but no review went out yet: review first
    assert len(to_editor(server)) == 1 and not to_subscribers(server)
    edit_title(project, "TK")
    code, _, err = run_cli("run", "--yes", cwd=project)
    assert code == 1 and "the approval deadline (Mon 09:00) has passed, and the issue is neither approved" in err
    assert not to_subscribers(server)


def test_only_the_approved_draft_is_sent(project, server, run_cli):
    from digest import load_config
    from digest.errors import Failed
    from digest.send import backend_class, sending
    from digest.store import open_db

    require_approval(project)
    run_cli("run", "--yes", cwd=project)
    approved = run_cli("approve", "--week", LAST_WEEK, cwd=project)[1].splitlines()[-1]
    config = load_config(project / "feeds.yaml")
    db = open_db(project / "digest.db")
    digest = db.execute("SELECT approved_hash FROM issues WHERE id = ?", [LAST_WEEK]).fetchone()[0]
    assert approved.startswith(f"{LAST_WEEK}: approved (draft {digest[:12]})")
    edit_title(project, "Saved between the decision and the send")
    with pytest.raises(Failed, match="changed after it was approved: nothing sent"):
        sending.plan_send(config, db, LAST_WEEK, backend_class("smtp")(config), approved_hash=digest)


def test_the_deadline_is_a_moment_in_the_newsletters_time_zone(project, server, run_cli):
    """The clock is passed in (run_week's `now`): a minute before Friday 17:00 London, the issue waits;
    a minute after, it goes."""
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    from digest import jobs, load_config
    from digest.issue.weeks import parse_week
    from digest.store import open_db

    require_approval(project, approval_deadline="friday 17:00")
    friday = datetime.combine(parse_week(LAST_WEEK) + timedelta(days=4), datetime.min.time(), ZoneInfo("Europe/London"))
    config, db = load_config(project / "feeds.yaml"), open_db(project / "digest.db")
    first = jobs.run_week(config, db, now=friday.replace(hour=9))
    assert first.approval is not None and not first.approval.send and len(to_editor(server)) == 1
    before = jobs.run_week(config, db, now=friday.replace(hour=16, minute=59))
    assert before.approval is not None and before.approval.outcome == "waiting" and not to_subscribers(server)
    after = jobs.run_week(config, db, now=friday.replace(hour=17, minute=1))
    assert after.approval is not None and after.approval.outcome == "deadline"
    assert after.sent is not None and after.sent.complete and len(to_subscribers(server)) == 3


def test_the_review_copy_names_a_long_title_cut_at_a_word_with_an_ellipsis(project, server, run_cli):
    require_approval(project)
    run_cli("run", "--yes", cwd=project)
    title = "Composite primary keys arrive in Django, after nineteen years of waiting: TK"
    edit_title(project, title)
    run_cli("run", "--yes", cwd=project)
    banner = to_editor(server)[-1].get_body(("plain",)).get_content().split("\n\n")[0]
    finding = next(line for line in banner.splitlines() if "placeholder" in line)
    assert "“Composite primary keys arrive in Django, after nineteen…”" in finding


def test_with_approval_required_nothing_is_held_back_the_review_copy_lists_the_findings(project, server, run_cli):
    from digest import store
    from digest.issue.draft import dump_draft, new_draft
    from digest.models import DraftItem

    earlier = new_draft("2020-W10", "Earlier", ["News"])
    earlier.sections[0].items.append(DraftItem(title="Post 0", url="https://blog.example.com/0/", summary="s"))
    db = store.open_db(project / "digest.db")
    db["issues"].insert({"id": "2020-W10", "status": "sent", "created_at": "2020-03-02T00:00:00+00:00"})
    db.execute("UPDATE issues SET sent_draft = ? WHERE id = '2020-W10'", [dump_draft(earlier)])
    db.conn.commit()
    require_approval(project)
    code, out, err = run_cli("run", "--yes", cwd=project)
    assert code == 0, err
    assert "held back" not in out and not to_subscribers(server)
    html = to_editor(server)[0].get_body(("html",)).get_content()
    assert "already sent in 2020-W10: https://blog.example.com/0/" in html
    draft = read_draft(draft_path(project / "drafts", LAST_WEEK))
    assert len(draft.items) == 2 and not draft.held_checks  # the editor decides


def test_approving_an_issue_sent_or_being_sent_says_so_and_never_that_the_next_run_sends_it(project, server, run_cli):
    from digest import store

    require_approval(project)
    run_cli("run", "--yes", cwd=project)
    assert run_cli("approve", "--week", LAST_WEEK, cwd=project)[0] == 0
    code, _, err = run_cli("run", "--yes", cwd=project)
    assert code == 0 and len(to_subscribers(server)) == 3, err

    code, out, err = run_cli("approve", "--week", LAST_WEEK, cwd=project)
    assert code == 1 and "the next digest run sends it" not in out + err
    sent_at = store.get_issue(store.open_db(project / "digest.db"), LAST_WEEK)["sent_at"]
    assert f"{LAST_WEEK} was already sent ({sent_at}): nothing to approve" in err

    db = store.open_db(project / "digest.db")
    db.execute("UPDATE issues SET status = 'sending' WHERE id = ?", [LAST_WEEK])
    db.conn.commit()
    code, out, err = run_cli("approve", "--week", LAST_WEEK, cwd=project)
    assert code == 1 and "the next digest run sends it" not in out + err
    assert f"{LAST_WEEK} is being sent already: approval no longer applies; digest send resumes it" in err

    db.execute("UPDATE issues SET status = 'draft', remote_id = 'em_1' WHERE id = ?", [LAST_WEEK])
    db.conn.commit()
    code, out, err = run_cli("approve", "--week", LAST_WEEK, cwd=project)
    assert code == 1 and "is being sent already" in err and len(to_subscribers(server)) == 3
