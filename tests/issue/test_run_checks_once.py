"""`digest run` checks the issue's links once: the hold-back's check and the send's share what was fetched, so a
link whose answer is not kept (a 403, a 429, no answer) is not asked twice, and a silent host does not cost the
run two check.deadline under the send lock; a draft changed between them is still checked again."""

from __future__ import annotations

import pytest

from digest import jobs, store
from digest.issue.draft import draft_path, read_draft, write_draft
from digest.models import DraftItem

from conftest import LAST_WEEK, POSTED
from helpers.feeds import Route, linking_feed
from helpers.project import make_link_checked_project, subscribers


@pytest.fixture
def week(tmp_path, feed_server, server, monkeypatch):
    """A feed whose week holds a good link, a 403, a 429 and a 404; link checks on, approval none."""
    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", "a secret of the tests, long enough")
    monkeypatch.setattr(jobs, "current_week", lambda now, tz: LAST_WEEK)
    page = {"Content-Type": "text/html"}
    feed_server.routes["/ok"] = Route(b"fine", headers=page)
    feed_server.routes["/wall"] = Route(b"no robots", status=403, headers=page)
    feed_server.routes["/busy"] = Route(b"slow down", status=429, headers=page)
    links = {name: feed_server.url(f"/{name}") for name in ("ok", "wall", "busy", "gone")}
    feed_server.routes["/feed.xml"] = Route(linking_feed(links, POSTED))
    make_link_checked_project(tmp_path, server.port, subscribers(3), feed_server.url("/feed.xml"))
    return tmp_path, links


def test_a_run_fetches_each_link_once_and_still_holds_back_the_dead_one(week, feed_server, server, run_cli):
    folder, links = week
    code, out, err = run_cli("run", "--yes", cwd=folder)
    assert code == 0, (out + err)[-3000:]
    assert sorted(server.per_recipient().values()) == [1, 1, 1]
    for path in ("/wall", "/busy", "/gone", "/ok"):  # a 403 and a 429 are not kept: asked twice before
        assert len(feed_server.hits(path)) == 1, (path, [p for p, _ in feed_server.requests])
    draft = read_draft(draft_path(folder / "drafts", LAST_WEEK))
    held = {item.url: item.reason for section in draft.sections for item in section.held}
    assert set(held) == {links["gone"]} and "answers 404" in held[links["gone"]]


def test_a_draft_changed_after_the_hold_back_is_checked_again_and_refused(week, feed_server, server, monkeypatch):
    folder, _ = week
    hold_back = jobs.hold_back

    def then_the_editor_adds(config, db, issue_id, *, now):  # between the run's check and its send
        held = hold_back(config, db, issue_id, now=now)
        path = draft_path(config.drafts_dir, issue_id)
        draft = read_draft(path)
        draft.sections[0].items.append(
            DraftItem(title="By hand", url=feed_server.url("/missing"), summary="The editor's own.")
        )
        write_draft(path, draft)
        return held

    monkeypatch.setattr(jobs, "hold_back", then_the_editor_adds)
    config = jobs.load_config(folder / "feeds.yaml")
    db = store.open_db(folder / "digest.db")
    with pytest.raises(Exception, match="answers 404") as refused:
        jobs.run_week(config, db, confirm=lambda question: True)
    assert type(refused.value).__name__ == "CheckFailed"
    assert not server.messages
    assert len(feed_server.hits("/missing")) == 1  # the send's check fetched the new link
    assert len(feed_server.hits("/wall")) == 1 and len(feed_server.hits("/busy")) == 1
