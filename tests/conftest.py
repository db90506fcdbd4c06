from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, time, timedelta
from email.utils import format_datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from digest.issue.weeks import parse_week, week_id

from helpers.buttondown import KEY, FakeButtondown
from helpers.feeds import FeedServer, Route, rss
from helpers.project import make_project, subscribers
from helpers.smtp import SmtpServer

REPO = Path(__file__).resolve().parents[1]  # the checkout: tests/ is one folder below it
FIXTURES = REPO / "tests" / "fixtures"  # files the tests read, kept in the repository


def _shared_dir() -> Path:
    """The team's shared material (feed corpus, reference files): $DIGEST_SHARED_DIR, else ../shared beside
    the checkout, else beside the repository this one was cloned from (CI runs from a fresh clone)."""
    candidates = [Path(os.environ["DIGEST_SHARED_DIR"])] if os.environ.get("DIGEST_SHARED_DIR") else []
    candidates.append(REPO.parent / "shared")
    origin = subprocess.run(
        ["git", "-C", str(REPO), "config", "--get", "remote.origin.url"], capture_output=True, text=True
    ).stdout.strip()
    if origin and "://" not in origin and ":" not in origin.split("/")[0]:  # a local path, not a URL
        candidates.append((REPO / origin).resolve().parent / "shared")
    return next((path for path in candidates if path.is_dir()), REPO.parent / "shared")


SHARED = _shared_dir()
CORPUS = SHARED / "feeds-corpus"


@pytest.fixture
def feed_server():
    server = FeedServer().start()
    yield server
    server.stop()


@pytest.fixture
def server():
    """An SMTP server (aiosmtpd) on loopback that records what it receives."""
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def site(tmp_path, server, monkeypatch):
    """A newsletter folder with serve: and publish:, served by uvicorn on loopback (helpers/web.py); ada is in
    its subscribers.csv."""
    from helpers.web import SECRET, Site

    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", SECRET)
    made = Site(tmp_path, server.port, [{"email": "ada@example.com", "name": "Ada", "status": "active"}])
    yield made
    made.stop()


@pytest.fixture
def api(monkeypatch):
    """A fake of Buttondown's API on loopback, and the key digest reads from the environment."""
    monkeypatch.setenv("BUTTONDOWN_API_KEY", KEY)
    monkeypatch.delenv("BUTTONDOWN_API_URL", raising=False)
    fake = FakeButtondown().start()
    yield fake
    fake.stop()


def write_config(directory: Path, feeds: list[dict], **newsletter) -> Path:
    settings = {
        "title": "Test Digest",
        "timezone": "Europe/London",
        "sections": ["News", "Articles", "Videos", "Projects", "Jobs"],
    }
    settings.update(newsletter)
    path = directory / "feeds.yaml"
    path.write_text(yaml.safe_dump({"newsletter": settings, "feeds": feeds}, sort_keys=False), encoding="utf-8")
    return path


LONDON = ZoneInfo("Europe/London")
LAST_WEEK = week_id((datetime.now(UTC) - timedelta(days=7)).astimezone(LONDON).date())  # wholly in the past
POSTED = datetime.combine(parse_week(LAST_WEEK) + timedelta(days=2), time(12), LONDON)  # its Wednesday noon


@pytest.fixture
def project(tmp_path, feed_server, server, monkeypatch):
    """Two posts of LAST_WEEK's issue on a loopback feed; `digest run` sees LAST_WEEK as the current week (the
    weekly job's tests, and approval's and redaction's that run it)."""
    from digest import jobs

    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", "a secret of the tests, long enough")
    monkeypatch.setattr(jobs, "current_week", lambda now, tz: LAST_WEEK)
    feed_server.routes["/feed.xml"] = Route(
        rss(
            [
                {
                    "title": f"Post {n}",
                    "link": f"https://blog.example.com/{n}/",
                    "guid": f"p{n}",
                    "description": "What happened in Django this week.",
                    "date": format_datetime(POSTED - timedelta(hours=n)),
                }
                for n in range(2)
            ]
        )
    )
    make_project(
        tmp_path,
        server.port,
        subscribers(3),
        feeds=[{"name": "Blog", "url": feed_server.url("/feed.xml"), "section": "News"}],
    )
    return tmp_path


@pytest.fixture
def run_cli(monkeypatch):
    """Run `digest ARGS` in this process with Typer's CliRunner; returns (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    from digest.cli import app

    def run(*args: str, cwd: Path | None = None, input: str | None = None) -> tuple[int, str, str]:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        result = CliRunner().invoke(app, list(args), input=input, catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return run
