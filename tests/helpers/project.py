"""A newsletter folder to send from: feeds.yaml with SMTP on a loopback server, subscribers.csv, and a draft;
the next week's draft for a second send, and what a send leaves in the folder's database."""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

import yaml

from digest import store
from digest.issue.draft import draft_path, read_draft, write_draft
from digest.models import Draft, DraftItem, DraftSection

WEEK = "2026-W14"
SECRET = "test-unsubscribe-secret"  # the DIGEST_UNSUBSCRIBE_SECRET the sending tests set


def make_project(
    directory: Path,
    port: int,
    subscribers: list[dict] | str,
    *,
    smtp: dict | None = None,
    buttondown: dict | None = None,
    items: int = 3,
    titles: list[str] | None = None,
    feeds: list[dict] | None = None,
    sections: dict | None = None,
    **newsletter,
) -> Path:
    """feeds.yaml (smtp on the loopback server, and `sections` such as serve: and publish:), subscribers.csv
    and, without feeds, WEEK's draft; returns the config's path."""
    settings = {
        "title": "Test Digest",
        "from": "Test Digest <digest@example.com>",
        "reply_to": "editor@example.com",
        "timezone": "Europe/London",
        "unsubscribe_url": "https://digest.example.com/u?token={token}",
    }
    settings.update(newsletter)
    smtp_settings = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "connections": 2,
        "timeout": 5,
        "max_attempts": 3,
        "backoff": 0.01,
    }
    smtp_settings.update(smtp or {})
    config = directory / "feeds.yaml"
    more_sections = sections
    # the items link to blog.example.com, which does not exist: checks.py's own tests fetch links
    sections = {"newsletter": settings, "feeds": feeds or [], "smtp": smtp_settings, "check": {"links": False}}
    if buttondown:
        sections["buttondown"] = buttondown
    sections.update(more_sections or {})
    config.write_text(yaml.safe_dump(sections, sort_keys=False), encoding="utf-8")
    if isinstance(subscribers, str):
        (directory / "subscribers.csv").write_text(subscribers, encoding="utf-8")
    else:
        with (directory / "subscribers.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["email", "name", "status"])
            writer.writeheader()
            writer.writerows(subscribers)
    if feeds:
        return config
    draft = Draft(
        issue=WEEK,
        week_start=date(2026, 3, 30),
        week_end=date(2026, 4, 5),
        subject="Test Digest – Mar 30 to Apr 5, 2026 ✨",
        intro="Hello and welcome.",
        sections=[
            DraftSection(
                title="News",
                items=[
                    DraftItem(
                        title=title,
                        url=f"https://blog.example.com/{n}",
                        summary="A sentence or two about it. " * 4,
                        source="blog.example.com",
                    )
                    for n, title in enumerate(
                        titles or [f"Ünïcode post {n}: {'a long title ' * 6}" for n in range(items)]
                    )
                ],
            )
        ],
    )
    write_draft(draft_path(directory / "drafts", WEEK), draft)
    return config


def make_link_checked_project(directory: Path, port: int, people: list[dict], feed_url: str) -> Path:
    """A folder whose one feed (`Blog`, in News) is at `feed_url` and whose checks fetch every link, loopback too."""
    return make_project(
        directory,
        port,
        people,
        feeds=[{"name": "Blog", "url": feed_url, "section": "News"}],
        sections={"check": {"links": True, "private": True, "deadline": 20}},
    )


def subscribers(count: int, start: int = 0) -> list[dict]:
    return [
        {"email": f"reader{n:05d}@example.com", "name": f"Reader {n}", "status": "active"}
        for n in range(start, start + count)
    ]


def next_week(tmp_path: Path) -> str:
    """The draft of the week after WEEK, for a second send."""
    draft = read_draft(draft_path(tmp_path / "drafts", WEEK))
    draft.issue = "2026-W15"
    for item in draft.items:
        item.url = f"{item.url}/next-week"  # new posts: the same ones would be refused as already sent
    write_draft(draft_path(tmp_path / "drafts", "2026-W15"), draft)
    return "2026-W15"


def ledger(tmp_path: Path) -> dict[str, dict]:
    """The deliveries table of the folder's database, by address."""
    db = store.open_db(tmp_path / "digest.db")
    return {row["email"]: row for row in db.query("SELECT * FROM deliveries")}


def issue_row(tmp_path: Path) -> dict | None:
    """WEEK's row in the folder's issues table, if a send recorded it."""
    return store.get_issue(store.open_db(tmp_path / "digest.db"), WEEK)
