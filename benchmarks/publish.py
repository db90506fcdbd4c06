"""Benchmark `digest publish`: an archive of N sent issues of 20 items each, written first, then again unchanged,
then after one more issue was sent. Each publish is the real command in a fresh process.

    python benchmarks/publish.py          # 200 issues
    python benchmarks/publish.py 50
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from digest import store
from digest.issue.draft import dump_draft
from digest.issue.weeks import week_id
from digest.models import Draft, DraftItem, DraftSection

from helpers.project import make_project


def sent_issue(db, monday: date) -> None:
    """An issue as a send leaves it: status sent, the draft it was sent with."""
    issue = week_id(monday)
    draft = Draft(
        issue=issue,
        week_start=monday,
        week_end=monday + timedelta(days=6),
        subject=f"Weekly Digest {issue}",
        intro="What happened this week.",
        sections=[
            DraftSection(
                title="News",
                items=[
                    DraftItem(
                        title=f"Post {n} of {issue}",
                        url=f"https://blog.example.com/{issue}/{n}",
                        summary="A sentence or two about it. " * 5,
                        source="blog.example.com",
                    )
                    for n in range(20)
                ],
            )
        ],
    )
    sent_at = datetime.combine(monday + timedelta(days=4), datetime.min.time(), UTC)
    db.execute(
        "INSERT INTO issues (id, subject, status, backend, created_at, sent_at, sent_draft) "
        "VALUES (?, ?, 'sent', 'smtp', ?, ?, ?)",
        [issue, draft.subject, store.iso(sent_at), store.iso(sent_at), dump_draft(draft)],
    )


def publish(directory: Path) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "digest", "publish"], cwd=directory, capture_output=True, text=True, check=True
    )
    return time.perf_counter() - started, done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("issues", type=int, nargs="?", default=200)
    count = parser.parse_args().issues
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        make_project(directory, 25, [], site_url="https://news.example.com/", sections={"publish": {}})
        db = store.open_db(directory / "digest.db")
        first_monday = date(2022, 1, 3)
        for week in range(count):
            sent_issue(db, first_monday + timedelta(weeks=week))
        for label in ("first publish", "again, unchanged"):
            seconds, line = publish(directory)
            print(f"{label}: {seconds:.2f} s ({line})")
        sent_issue(db, first_monday + timedelta(weeks=count))
        seconds, line = publish(directory)
        print(f"after one more issue: {seconds:.2f} s ({line})")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "digest", "--help"], capture_output=True, check=True)
        print(f"(digest --help, the start-up every command pays: {time.perf_counter() - started:.2f} s)")


if __name__ == "__main__":
    main()
