"""Every post reaches the draft exactly once: feeds served over loopback, collected, built, counted exactly.

Each test reproduces one way the pipeline used to lose, merge, double or mangle posts without a word.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import yaml

from digest import jobs, load_config, store
from digest.feeds import collect as collecting
from digest.issue.draft import draft_path, read_draft
from digest.issue.render import GMAIL_CLIP_BYTES, render_issue
from digest.settings.config import CollectSettings

from conftest import write_config
from helpers.feeds import Route, rss

NOW = datetime(2026, 4, 3, 12, 0, tzinfo=UTC)  # Friday of 2026-W14
WEEK = "2026-W14"
FAST = CollectSettings(timeout=5.0, max_attempts=1)


def when(days_before_now: float) -> str:
    return format_datetime(NOW - timedelta(days=days_before_now))


class Newsletter:
    """A newsletter folder whose feeds are routes of the loopback feed server."""

    def __init__(self, directory, server, feeds: dict[str, dict], **settings):
        self.directory, self.server = directory, server
        self.feeds = [
            {"name": name, "url": server.url(f"/{name}.xml"), "section": "Articles", **extra}
            for name, extra in feeds.items()
        ]
        self.config = load_config(write_config(directory, self.feeds, **settings))
        self.db = store.open_db(directory / "digest.db")

    def serve(self, name: str, body: bytes | None = None, **route) -> None:
        self.server.routes[f"/{name}.xml"] = Route(body, **route) if body is not None else Route(**route)

    def collect(self, now: datetime = NOW) -> collecting.CollectReport:
        report = collecting.collect(self.config, self.db, now=now, settings=FAST)
        assert not report.failed, [(feed.name, feed.error) for feed in report.failed]
        return report

    def build(self, week: str = WEEK, now: datetime = NOW) -> jobs.BuildReport:
        return jobs.build(self.config, self.db, week, now=now)

    def draft(self, week: str = WEEK):
        return read_draft(draft_path(self.config.drafts_dir, week))

    def posts(self) -> list[dict]:
        return list(self.db.query("SELECT * FROM posts ORDER BY first_seen_at, id"))

    def mark_sent(self, week: str, at: datetime) -> None:
        """As a send does: the email holds the posts placed among its items."""
        in_email = [
            row[0]
            for row in self.db.execute(
                "SELECT post_id FROM issue_posts WHERE issue_id = ? AND placement = 'item'", [week]
            )
        ]
        store.begin_send(self.db, week, "the draft as sent", in_email, "test.example.com")
        self.db.execute("UPDATE issues SET status = 'sent', sent_at = ? WHERE id = ?", [store.iso(at), week])


@pytest.fixture
def newsletter(tmp_path, feed_server):
    def make(feeds: dict[str, dict] | list[str], **settings) -> Newsletter:
        feeds = {name: {} for name in feeds} if isinstance(feeds, list) else feeds
        return Newsletter(tmp_path, feed_server, feeds, **settings)

    return make


def titles_of(draft) -> list[str]:
    return [item.title for item in draft.items]


# --- identity ------------------------------------------------------------------------


def test_microblog_entries_on_one_page_are_told_apart_by_fragment_and_guid(newsletter):
    site = newsletter(["scripting"])
    page = "http://scripting.example.com/2026/04/01.html"
    entries = [
        {
            "link": f"{page}#a{n}",
            "guid": f"{page}#a{n}",
            "description": f"Thought number {n} of the day.",
            "date": when(1 + n / 24),
        }
        for n in range(6)
    ]
    entries.append(dict(entries[2]))  # the same guid twice in one document: one post
    site.serve("scripting", rss(entries))
    report = site.collect()
    assert report.new_posts == 6 and len(site.posts()) == 6
    built = site.build()
    assert built.items == 6 and len(site.draft().items) == 6
    assert sorted(item.url for item in site.draft().items) == [f"{page}#a{n}" for n in range(6)]
    assert site.collect().new_posts == 0


def test_link_less_posts_all_reach_the_draft_and_the_email_unlinked(newsletter):
    site = newsletter(["status"])
    site.serve(
        "status",
        rss(
            [
                {
                    "title": f"Support System - {'Up' if n % 2 else 'Down'}",
                    "guid": f"S-{n}",
                    "description": f"Incident {n} resolved at 10:0{n}.",
                    "date": when(1 + n / 24),
                }
                for n in range(10)
            ],
            link="https://status.example.com/",
        ),
    )
    site.collect()
    assert len(site.posts()) == 10
    built = site.build()
    assert built.items == 10
    draft = site.draft()
    assert len(draft.items) == 10
    assert all(item.url is None and item.site == "https://status.example.com/" for item in draft.items)
    assert all(item.source == "status.example.com" for item in draft.items)
    html, text = built.html.read_text(), built.text.read_text()
    assert len(re.findall(r"<h3[^>]*>Support System - ", html)) == 10  # not wrapped in a link
    assert text.count("Support System - ") == 10 and "https://status.example.com/" not in text.split("--")[0]
    # The editor links one to its feed's site: only that one is linked.
    path = draft_path(site.config.drafts_dir, WEEK)
    path.write_text(
        path.read_text().replace(
            "  - title: Support System - Down\n",
            "  - title: Support System - Down\n    url: https://status.example.com/\n",
            1,
        )
    )
    rendered = render_issue(site.draft(), site.config.newsletter)
    assert len(re.findall(r'<a href="https://status.example.com/"[^>]*>Support System - Down</a>', rendered.html)) == 1


def test_a_link_less_entry_whose_guid_changes_on_every_fetch_is_stored_once(newsletter):
    site = newsletter(["podcast"])
    for fetch in range(3):
        site.serve(
            "podcast",
            rss(
                [
                    {
                        "title": "Episode 12: Forms",
                        "guid": f"urn:uuid:{fetch}-{fetch * 7}",
                        "description": "We talk about forms.",
                        "date": when(1),
                    }
                ]
            ),
        )
        site.collect()
    assert len(site.posts()) == 1


def test_two_entries_of_one_feed_sharing_a_link_but_not_a_guid_are_two_posts(newsletter):
    site = newsletter(["fireball"])
    site.serve(
        "fireball",
        rss(
            [
                {
                    "title": "Mnml, a Mac client",
                    "link": "http://mnml.example.com/",
                    "guid": "tag:df,2026:linked/1",
                    "description": "A writing app.",
                    "date": when(1),
                },
                {
                    "title": "[Sponsor] Mnml",
                    "link": "http://mnml.example.com/",
                    "guid": "tag:df,2026:sponsors/1",
                    "description": "Thanks to Mnml for sponsoring.",
                    "date": when(2),
                },
            ]
        ),
    )
    site.collect()
    site.collect()
    assert len(site.posts()) == 2
    assert site.build().items == 2


def test_variants_of_one_article_from_two_feeds_are_one_post_kept_in_https(newsletter):
    site = newsletter(["blog", "aggregator", "planet"])
    site.serve(
        "blog",
        rss(
            [
                {
                    "title": "Tips",
                    "link": "http://www.example.com:80/tips/?ref=rss",
                    "guid": "b1",
                    "description": "Ten tips.",
                    "date": when(2),
                }
            ]
        ),
    )
    site.serve(
        "aggregator",
        rss(
            [
                {
                    "title": "Tips",
                    "link": "https://example.com/tips/?source=rss----5517fd7b58a6---4",
                    "guid": "a1",
                    "description": "Ten tips.",
                    "date": when(2),
                }
            ]
        ),
    )
    site.serve(
        "planet",
        rss(
            [
                {
                    "title": "Tips again",
                    "link": "https://example.com:443/tips/?utm_source=agg",
                    "guid": "p1",
                    "description": "Ten tips.",
                    "date": when(2),
                }
            ]
        ),
    )
    site.collect()
    assert [row["canonical_url"] for row in site.posts()] == ["https://example.com/tips/"]
    assert site.build().items == 1


def test_the_article_link_replaces_tracking_redirectors(newsletter):
    site = newsletter(["burner", "press", "proxy", "medium", "facebook"])
    feedburner = (
        '<?xml version="1.0"?><rss version="2.0" xmlns:feedburner="http://rssnamespace.org/feedburner/ext/1.0">'
        "<channel><title>B</title><link>https://burner.example.com/</link><item><title>Orig</title>"
        '<link>http://feedproxy.google.com/~r/burner/~3/xyz/</link><guid isPermaLink="false">b1</guid>'
        "<feedburner:origLink>https://burner.example.com/2026/04/orig/</feedburner:origLink>"
        f"<pubDate>{when(1)}</pubDate></item></channel></rss>"
    ).encode()
    site.serve("burner", feedburner)
    site.serve(
        "press",
        rss(
            [
                {
                    "title": "Pressed",
                    "link": "http://tracking.feedpress.it/link/980/4243452",
                    "guid": "50c628b3e4b07b56:57bcbe83",
                    "description": "x",
                    "date": when(1),
                }
            ],
            link="https://katie.example.com/",
        ),
    )
    site.serve(
        "proxy",
        rss(
            [
                {
                    "title": "Proxied",
                    "link": "http://feedproxy.google.com/~r/p/~3/abc/",
                    "guid": "https://proxy.example.com/?p=79",
                    "description": "x",
                    "date": when(1),
                }
            ]
        ),
    )
    site.serve(
        "medium",
        rss(
            [
                {
                    "title": "On Medium",
                    "link": "https://medium.com/@ada/on-medium-1a2b3c?source=rss----5517fd7b58a6---4",
                    "guid": "https://medium.com/p/1a2b3c",
                    "description": "x",
                    "date": when(1),
                }
            ]
        ),
    )
    site.serve(
        "facebook",
        rss(
            [
                {
                    "title": "Shared",
                    "link": "https://l.facebook.com/l.php?u=https%3A%2F%2Fshared.example.org%2Fa%2F&amp;h=AT0",
                    "guid": "f1",
                    "description": "x",
                    "date": when(1),
                }
            ]
        ),
    )
    site.collect()
    site.build()
    found = {item.title: (item.url, item.source) for item in site.draft().items}
    assert found["Orig"] == ("https://burner.example.com/2026/04/orig/", "burner.example.com")
    assert found["Pressed"] == ("http://tracking.feedpress.it/link/980/4243452", "katie.example.com")
    assert found["Proxied"] == ("https://proxy.example.com/?p=79", "proxy.example.com")
    assert found["On Medium"] == ("https://medium.com/@ada/on-medium-1a2b3c", "medium.com")
    assert found["Shared"] == ("https://shared.example.org/a/", "shared.example.org")


# --- the email -----------------------------------------------------------------------


def test_sections_without_items_leave_no_heading_in_the_html_or_the_text(newsletter):
    site = newsletter({"blog": {"section": "Articles"}})
    site.serve(
        "blog",
        rss(
            [
                {
                    "title": "Only article",
                    "link": "https://blog.example.com/1/",
                    "guid": "1",
                    "description": "x",
                    "date": when(1),
                }
            ]
        ),
    )
    site.collect()
    built = site.build()
    html, text = built.html.read_text(), built.text.read_text()
    assert ">Articles</h2>" in html and "\nArticles\n========\n" in text
    for empty in ("News", "Videos", "Projects", "Jobs"):
        assert f">{empty}</h2>" not in html and f"\n{empty}\n" not in text
    assert [section.title for section in site.draft().sections if section.items] == ["Articles"]


def test_invisible_controls_leave_titles_summaries_authors_and_the_subject(newsletter):
    site = newsletter(["sneaky"])
    site.serve(
        "sneaky",
        (
            '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>S</title>'
            "<item><title>Invoice \u202egnp.exe\u200b and \u2066isolated\u2069 text\u0085</title>"
            "<link>https://sneaky.example.com/1/</link><guid>s1</guid>"
            "<author>ada@example.com (Ada\u202d Lovelace)</author>"
            f"<description>Pay \u200bnow\u2068.\u2069 Coders: 👩\u200d💻, Persian: می\u200cخواهم.</description>"
            f"<pubDate>{when(1)}</pubDate></item></channel></rss>"
        ).encode(),
    )
    site.collect()
    site.build()
    item = site.draft().items[0]
    assert item.title == "Invoice gnp.exe and isolated text"
    assert item.summary == "Pay now. Coders: 👩\u200d💻, Persian: می\u200cخواهم."  # joiners inside words stay
    assert item.author == "Ada Lovelace"
    path = draft_path(site.config.drafts_dir, WEEK)
    data = yaml.safe_load(path.read_text())
    data["subject"] = "\u202eReversed\u200b " + data["subject"]
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    rendered = render_issue(site.draft(), site.config.newsletter)
    assert "\u202e" not in rendered.html and "\u200b" not in rendered.html and "Reversed" in rendered.html


def test_one_huge_title_is_cut_at_a_word_and_cannot_clip_the_email(newsletter):
    site = newsletter(["huge"])
    site.serve(
        "huge",
        rss(
            [
                {
                    "title": "word " * 20_000,
                    "link": "https://huge.example.com/1/",
                    "guid": "h",
                    "description": "sentence without end " * 5_000,
                    "date": when(1),
                }
            ]
        ),
    )
    site.collect()
    row = site.posts()[0]
    assert len(row["title"]) <= 200 and row["title"].endswith("word…")
    assert len(row["summary"]) <= 300
    assert site.build().html_bytes < 30_000


# --- the size budget -------------------------------------------------------------------


def flood(site: Newsletter, feed: str, count: int, *, now: datetime = NOW, prefix: str = "") -> None:
    """`count` posts of `feed` in the week, stored directly (the pipeline from bytes is tested above)."""
    from digest.models import Post
    from digest.urls import url_key

    start = NOW - timedelta(days=4)
    posts = [
        Post(
            id=f"{feed}-{prefix}{n}",
            feed_url=site.server.url(f"/{feed}.xml"),
            canonical_url=f"https://{feed}.example.com/{prefix}{n}/",
            url_key=url_key(f"https://{feed}.example.com/{prefix}{n}/"),
            title=f"{feed} post {prefix}{n}: " + "a title as long as they come " * 6,
            author="Ada",
            summary="One sentence of summary that runs on for a while. " * 5,
            content_html="",
            published_at=start + timedelta(seconds=n),
        )
        for n in range(count)
    ]
    store.record_fetch(
        site.db,
        url=site.server.url(f"/{feed}.xml"),
        name=feed,
        section="Articles",
        outcome=store.FetchOutcome(status=200, site_url=f"https://{feed}.example.com/"),
        posts=posts,
        now=now,
        configured={f["url"] for f in site.feeds},
    )


def test_a_flood_of_5000_posts_from_one_feed_builds_an_email_under_the_clip_and_lists_the_rest(newsletter):
    site = newsletter({"flood": {}, "calm": {}})
    flood(site, "flood", 5000)
    flood(site, "calm", 3)
    built = site.build()
    assert built.items == 28 and built.held_more == 4975 and built.size_warning is None
    assert built.html_bytes < GMAIL_CLIP_BYTES
    html, text = built.html.read_text(), built.text.read_text()
    assert re.search(r'<a href="https://flood.example.com/"[^>]*>and 4975 more from flood</a>', html)
    assert "And 4975 more from flood: https://flood.example.com/" in text
    draft = site.draft()
    kept = [item.title for item in draft.items if item.title.startswith("flood")]
    assert kept[-1].startswith("flood post 4999:") and kept[0].startswith("flood post 4975:")  # the newest 25
    assert sum(len(group.items) for section in draft.sections for group in section.more) == 4975
    # The next build keeps the cap: a new post of the flooding feed is held back too.
    flood(site, "flood", 1, prefix="late-", now=NOW + timedelta(hours=1))
    again = site.build(now=NOW + timedelta(hours=1))
    assert again.items == 28 and again.held_more == 4976 and again.new_items == 0


def test_max_items_is_a_feed_setting_and_the_editor_pulls_posts_back(newsletter):
    site = newsletter({"busy": {"max_items": 2}})
    flood(site, "busy", 5)
    site.build()
    path = draft_path(site.config.drafts_dir, WEEK)
    text = path.read_text()
    assert "more:\n  - feed: busy\n    site: https://busy.example.com/\n    items:\n" in text
    data = yaml.safe_load(text)
    section = data["sections"][1]
    assert [item["title"][:11] for item in section["items"]] == ["busy post 3", "busy post 4"]  # the newest
    pulled = section["more"][0]["items"].pop(0)  # the editor moves one up
    section["items"].append({**pulled, "title": "PULLED " + pulled["title"]})
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    rendered = render_issue(site.draft(), site.config.newsletter)
    assert "PULLED busy post 0" in rendered.html and re.search(r">and 2 more from busy</a>", rendered.html)


def test_a_flood_across_many_feeds_is_refused_by_send_and_run_unless_allowed(
    tmp_path, feed_server, run_cli, monkeypatch
):
    from helpers.project import make_project, subscribers
    from helpers.smtp import SmtpServer

    smtp = SmtpServer().start()
    try:
        feeds = [{"name": f"feed{n}", "url": feed_server.url(f"/feed{n}.xml"), "section": "News"} for n in range(150)]
        make_project(tmp_path, smtp.port, subscribers(1), feeds=feeds)
        monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", "a-secret-of-sixteen-characters")
        site = Newsletter.__new__(Newsletter)
        site.server, site.feeds = feed_server, feeds
        site.config = load_config(tmp_path / "feeds.yaml")
        site.db = store.open_db(tmp_path / "digest.db")
        for n in range(150):
            flood(site, f"feed{n}", 1)
        code, out, err = run_cli("build", "--week", WEEK, cwd=tmp_path)
        assert code == 0 and "150 items" in out
        assert err.startswith("warning: 2026-W14.html is ") and "Gmail clips it past 102 KB" in err
        assert "Removing about " in err and "would bring it under" in err
        code, out, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
        assert code == 1 and smtp.messages == []
        assert (
            err.startswith("error: 2026-W14: the email is ") and "--allow-clipped" in err and len(err.splitlines()) == 1
        )
        assert store.get_issue(store.open_db(tmp_path / "digest.db"), WEEK)["status"] == "draft"
        code, out, err = run_cli("send", "--week", WEEK, "--yes", "--allow-clipped", cwd=tmp_path)
        assert code == 0 and len(smtp.messages) == 1
    finally:
        smtp.stop()


# --- timing ------------------------------------------------------------------------------


def test_a_post_that_appears_after_the_send_goes_out_next_week_whatever_its_date(newsletter):
    site = newsletter(["blog"])
    on_time = {
        "title": "On time",
        "link": "https://blog.example.com/1/",
        "guid": "1",
        "description": "x",
        "date": when(2),
    }
    site.serve("blog", rss([on_time]))
    site.collect()
    site.build()
    between = NOW + timedelta(hours=2)  # collected after the build, before the send
    late_in_week = {
        "title": "Seen between build and send",
        "link": "https://blog.example.com/2/",
        "guid": "2",
        "description": "x",
        "date": when(1),
    }
    site.serve("blog", rss([on_time, late_in_week]))
    site.collect(now=between)
    site.mark_sent(WEEK, NOW + timedelta(hours=4))
    after = NOW + timedelta(days=1)  # Saturday: a post dated Wednesday shows up in its feed (feeds lag)
    lagging = {
        "title": "Lagging",
        "link": "https://blog.example.com/3/",
        "guid": "3",
        "description": "x",
        "date": when(2),
    }
    ancient = {
        "title": "From the archive",
        "link": "https://blog.example.com/old/",
        "guid": "old",
        "description": "x",
        "date": when(60),
    }
    site.serve("blog", rss([on_time, late_in_week, lagging, ancient]))
    site.collect(now=after)
    next_week = NOW + timedelta(days=7)
    built = site.build("2026-W15", now=next_week)
    draft = site.draft("2026-W15")
    assert titles_of(draft) == ["Lagging", "Seen between build and send"]  # oldest first
    assert [item.title for section in draft.sections for item in section.stale] == ["From the archive"]
    assert built.items == 2 and built.held_stale == 1
    assert "From the archive" not in built.html.read_text()


def test_a_feed_down_on_friday_catches_up_the_week_after(newsletter):
    site = newsletter(["blog", "flaky"])
    site.serve(
        "blog",
        rss([{"title": "A", "link": "https://blog.example.com/a/", "guid": "a", "description": "x", "date": when(2)}]),
    )
    site.serve("flaky", status=503, body=b"down")
    report = collecting.collect(site.config, site.db, now=NOW, settings=FAST)
    assert [feed.name for feed in report.failed] == ["flaky"]
    site.build()
    site.mark_sent(WEEK, NOW + timedelta(hours=1))
    site.serve(
        "flaky",
        rss(
            [
                {
                    "title": f"Friday {n}",
                    "link": f"https://flaky.example.com/{n}/",
                    "guid": f"f{n}",
                    "description": "x",
                    "date": when(2 + n),
                }
                for n in range(3)
            ]
        ),
    )
    site.collect(now=NOW + timedelta(days=3))
    site.build("2026-W15", now=NOW + timedelta(days=7))
    assert sorted(titles_of(site.draft("2026-W15"))) == ["Friday 0", "Friday 1", "Friday 2"]


def test_stale_posts_restored_by_the_editor_are_sent(newsletter):
    site = newsletter(["blog"], stale_after_weeks=2)
    site.serve(
        "blog",
        rss(
            [
                {
                    "title": "Now",
                    "link": "https://blog.example.com/now/",
                    "guid": "n",
                    "description": "x",
                    "date": when(1),
                }
            ]
        ),
    )
    site.collect()
    site.build()
    site.mark_sent(WEEK, NOW + timedelta(hours=1))
    site.serve(
        "blog",
        rss(
            [
                {
                    "title": "Three weeks old",
                    "link": "https://blog.example.com/old/",
                    "guid": "o",
                    "description": "x",
                    "date": when(21),
                },
                {
                    "title": "Fresh",
                    "link": "https://blog.example.com/fresh/",
                    "guid": "f",
                    "description": "x",
                    "date": when(-2),
                },
            ]
        ),
    )
    later = NOW + timedelta(days=5)
    site.collect(now=later)
    site.build("2026-W15", now=later)
    path = draft_path(site.config.drafts_dir, "2026-W15")
    data = yaml.safe_load(path.read_text())
    section = next(s for s in data["sections"] if s.get("stale"))
    assert [item["title"] for item in section["stale"]] == ["Three weeks old"]
    section["items"].append(section.pop("stale")[0])
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert titles_of(site.draft("2026-W15")) == ["Fresh", "Three weeks old"]


def test_rebuilds_add_held_back_posts_as_text_and_keep_the_editors_comments(newsletter):
    site = newsletter({"busy": {"max_items": 1}})
    flood(site, "busy", 2)
    site.build()
    path = draft_path(site.config.drafts_dir, WEEK)
    path.write_text(path.read_text().replace("sections:\n", "# my note\nsections:\n", 1))
    flood(site, "busy", 1, prefix="more-", now=NOW + timedelta(minutes=5))
    site.build(now=NOW + timedelta(minutes=5))
    text = path.read_text()
    assert "# my note\n" in text
    assert [item.title.split(":")[0] for group in site.draft().sections[1].more for item in group.items] == [
        "busy post 0",
        "busy post more-0",
    ]


def test_build_counts_what_the_draft_holds(newsletter):
    site = newsletter(["blog"])
    entries = [
        {
            "title": f"Post {n}",
            "link": f"https://blog.example.com/{n}/",
            "guid": str(n),
            "description": "x",
            "date": when(1),
        }
        for n in range(4)
    ]
    entries += [{"title": "Linkless", "guid": "l", "description": "x", "date": when(1)}]
    site.serve("blog", rss(entries))
    site.collect()
    built = site.build()
    assert built.items == len(site.draft().items) == 5


@pytest.mark.parametrize("count", [0, 1, 3])
def test_ids_of_posts_never_collide_across_kinds_of_identity(count):
    """guid, link and text identities of one feed are hashed with the feed URL: distinct entries, distinct ids."""
    from digest.feeds.parse import parse_feed

    entries = [
        {"title": f"T{n}", "link": f"https://x.example.com/{n}/", "description": "d", "date": when(1)}
        for n in range(count)
    ]
    entries += [{"title": f"G{n}", "guid": f"g{n}", "description": "d", "date": when(1)} for n in range(count)]
    entries += [{"title": f"C{n}", "description": f"d{n}", "date": when(1)} for n in range(count)]
    posts = parse_feed(rss(entries), "https://x.example.com/feed").posts
    assert len({post.id for post in posts}) == len(posts) == 3 * count


# --- what a hostile review found ------------------------------------------------------------


def test_doubled_joiners_in_a_title_are_collected_and_built(newsletter):
    site = newsletter(["persian"])
    site.serve(
        "persian",
        rss(
            [
                {
                    "title": "می\u200c\u200cخواهم and a\u200d\u200db",
                    "link": "https://fa.example.com/1/",
                    "guid": "1",
                    "description": "x",
                    "date": when(1),
                }
            ]
        ),
    )
    site.collect()
    assert site.build().items == 1
    assert site.draft().items[0].title == "می\u200cخواهم and a\u200db"


def test_entries_of_one_feed_linking_to_one_page_stay_distinct_across_weeks(newsletter):
    site = newsletter(["jobs"])
    job = {"link": "https://jobs.example.com/", "description": "Apply on the board."}
    site.serve("jobs", rss([{**job, "title": "Job A: Django dev", "guid": "job-a", "date": when(2)}]))
    site.collect()
    site.build()
    site.mark_sent(WEEK, NOW + timedelta(hours=1))
    later = NOW + timedelta(days=5)
    site.serve("jobs", rss([{**job, "title": "Job B: Wagtail dev", "guid": "job-b", "date": when(-4)}]))
    assert site.collect(now=later).new_posts == 1
    site.build("2026-W15", now=later)
    assert titles_of(site.draft("2026-W15")) == ["Job B: Wagtail dev"]
    assert {row["title"] for row in site.posts()} == {"Job A: Django dev", "Job B: Wagtail dev"}


def test_a_rebuild_adds_a_new_post_sharing_a_link_with_one_already_in_the_draft(newsletter):
    site = newsletter(["podcast"])
    episode = {"link": "https://podcast.example.com/", "date": when(2)}
    site.serve("podcast", rss([{**episode, "title": "Episode 1", "guid": "e1", "description": "One."}]))
    site.collect()
    site.build()
    site.serve(
        "podcast",
        rss(
            [
                {**episode, "title": "Episode 1", "guid": "e1", "description": "One."},
                {**episode, "title": "Episode 2", "guid": "e2", "description": "Two."},
            ]
        ),
    )
    later = NOW + timedelta(hours=1)
    site.collect(now=later)
    built = site.build(now=later)
    assert titles_of(site.draft()) == ["Episode 1", "Episode 2"] and built.items == 2 and built.already == 0


def test_a_post_the_editor_added_by_hand_is_not_added_again(newsletter):
    site = newsletter(["blog"])
    site.serve(
        "blog",
        rss(
            [
                {
                    "title": "First",
                    "link": "https://blog.example.com/1/",
                    "guid": "1",
                    "description": "x",
                    "date": when(2),
                }
            ]
        ),
    )
    site.collect()
    site.build()
    path = draft_path(site.config.drafts_dir, WEEK)
    data = yaml.safe_load(path.read_text())
    articles = next(section for section in data["sections"] if section["title"] == "Articles")
    articles["items"].append({"title": "My own words on it", "url": "https://blog.example.com/2/?utm_source=me"})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    site.serve(
        "blog",
        rss(
            [
                {
                    "title": "First",
                    "link": "https://blog.example.com/1/",
                    "guid": "1",
                    "description": "x",
                    "date": when(2),
                },
                {
                    "title": "Second",
                    "link": "https://blog.example.com/2/",
                    "guid": "2",
                    "description": "x",
                    "date": when(1),
                },
            ]
        ),
    )
    later = NOW + timedelta(hours=1)
    site.collect(now=later)
    built = site.build(now=later)
    assert titles_of(site.draft()) == ["First", "My own words on it"] and built.already == 1


def test_a_post_an_aggregator_filters_out_goes_out_under_the_blog_that_has_it_too(newsletter):
    site = newsletter({"aggregator": {"include": ["django"], "section": "News"}, "blog": {"section": "Articles"}})
    tips = {"title": "Flask tips", "link": "https://blog.example.com/flask/", "description": "x", "date": when(1)}
    site.serve("aggregator", rss([{**tips, "guid": "agg-1"}]))
    site.serve("blog", status=503, body=b"down")
    collecting.collect(site.config, site.db, now=NOW, settings=FAST)  # the blog is down: the aggregator stores it first
    site.serve("blog", rss([{**tips, "guid": "blog-1"}]))
    later = NOW + timedelta(hours=1)
    site.collect(now=later)
    site.build(now=later)
    draft = site.draft()
    assert [(section.title, [item.title for item in section.items]) for section in draft.sections if section.items] == [
        ("Articles", ["Flask tips"])
    ]


def test_a_post_dated_after_the_build_of_its_week_goes_out_the_week_after(newsletter):
    site = newsletter(["blog"])
    now_post = {
        "title": "Now",
        "link": "https://blog.example.com/now/",
        "guid": "n",
        "description": "x",
        "date": when(1),
    }
    scheduled = {
        "title": "Scheduled for 17:00",
        "link": "https://blog.example.com/later/",
        "guid": "s",
        "description": "x",
        "date": format_datetime(NOW + timedelta(hours=5)),
    }
    site.serve("blog", rss([now_post, scheduled]))
    site.collect()
    site.build()
    assert titles_of(site.draft()) == ["Now"]  # 17:00 is still in the future at noon
    site.mark_sent(WEEK, NOW + timedelta(hours=4))
    next_week = NOW + timedelta(days=7)
    site.build("2026-W15", now=next_week)
    assert titles_of(site.draft("2026-W15")) == ["Scheduled for 17:00"]


def test_posts_a_slow_collect_stores_during_a_build_are_offered_to_the_next_issue(newsletter):
    """The collect began before the build and stored its posts after it: their first-seen time is earlier than
    the build's, so only the order posts were stored in (seen_seq) tells that the build never saw them."""
    site = newsletter(["blog"])
    site.serve(
        "blog",
        rss(
            [
                {
                    "title": "On time",
                    "link": "https://blog.example.com/1/",
                    "guid": "1",
                    "description": "x",
                    "date": when(2),
                }
            ]
        ),
    )
    site.collect()
    site.build(now=NOW + timedelta(minutes=10))
    site.serve(
        "blog",
        rss(
            [
                {
                    "title": "Stored after the build",
                    "link": "https://blog.example.com/2/",
                    "guid": "2",
                    "description": "x",
                    "date": when(2),
                }
            ]
        ),
    )
    site.collect(now=NOW + timedelta(minutes=5))  # began before the build; stores after it
    site.mark_sent(WEEK, NOW + timedelta(hours=1))
    site.build("2026-W15", now=NOW + timedelta(days=7))
    assert titles_of(site.draft("2026-W15")) == ["Stored after the build"]


def test_an_issue_handed_to_buttondown_as_a_draft_counts_as_sent_for_late_posts(newsletter):
    site = newsletter(["blog"])
    site.serve(
        "blog",
        rss(
            [
                {
                    "title": "Week 14",
                    "link": "https://blog.example.com/1/",
                    "guid": "1",
                    "description": "x",
                    "date": when(2),
                }
            ]
        ),
    )
    site.collect()
    site.build()
    store.begin_send(site.db, WEEK, "the draft as sent", store.offered_post_ids(site.db, WEEK), "test.example.com")
    store.begin_remote(site.db, WEEK, "buttondown", "digest-2026-W14-key")
    store.record_remote(site.db, WEEK, "buttondown", "em_1", sent=False, now=NOW)  # a draft there: stays `sending`
    site.serve(
        "blog",
        rss(
            [
                {
                    "title": "Saturday's",
                    "link": "https://blog.example.com/2/",
                    "guid": "2",
                    "description": "x",
                    "date": format_datetime(NOW + timedelta(days=1)),
                }
            ]
        ),
    )
    site.collect(now=NOW + timedelta(days=2))
    site.build("2026-W15", now=NOW + timedelta(days=7))
    assert titles_of(site.draft("2026-W15")) == ["Saturday's"]


def test_entries_sharing_a_guid_but_not_a_link_or_text_are_all_kept(newsletter):
    site = newsletter(["status"])
    feed_url = site.feeds[0]["url"]
    site.serve(
        "status",
        rss(
            [
                {"title": f"Incident {n}", "guid": feed_url, "description": f"Resolved {n}.", "date": when(1 + n / 24)}
                for n in range(3)
            ]
            + [
                {
                    "title": "Linked",
                    "guid": feed_url,
                    "link": "https://status.example.com/4/",
                    "description": "x",
                    "date": when(1),
                }
            ]
        ),
    )
    site.collect()
    assert len(site.posts()) == 4


def test_a_rebuild_keeps_the_editors_crlf_line_ends(newsletter):
    site = newsletter(["blog"])
    site.serve(
        "blog",
        rss(
            [{"title": "One", "link": "https://blog.example.com/1/", "guid": "1", "description": "x", "date": when(2)}]
        ),
    )
    site.collect()
    site.build()
    path = draft_path(site.config.drafts_dir, WEEK)
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n").replace(b"sections:", b"# mine\r\nsections:"))
    site.serve(
        "blog",
        rss(
            [{"title": "Two", "link": "https://blog.example.com/2/", "guid": "2", "description": "x", "date": when(1)}]
        ),
    )
    later = NOW + timedelta(hours=1)
    site.collect(now=later)
    site.build(now=later)
    data = path.read_bytes()
    assert b"# mine\r\n" in data and data.count(b"\n") == data.count(b"\r\n") and b"Two" in data


def test_the_size_advice_for_an_email_whose_intro_alone_is_too_long(newsletter):
    site = newsletter(["blog"])
    site.serve(
        "blog",
        rss(
            [{"title": "One", "link": "https://blog.example.com/1/", "guid": "1", "description": "x", "date": when(2)}]
        ),
    )
    site.collect()
    site.build()
    path = draft_path(site.config.drafts_dir, WEEK)
    data = yaml.safe_load(path.read_text())
    data["intro"] = "\n\n".join("A paragraph of welcome that goes on and on. " * 20 for _ in range(120))
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    built = site.build(now=NOW + timedelta(minutes=1))
    assert "Even without its 1 items it is" in built.size_warning and "shorten the intro" in built.size_warning
