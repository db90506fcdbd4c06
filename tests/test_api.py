"""The library's public surface: `digest.__all__` is pinned, and every name in it resolves (as httpx pins its own)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC

import digest

EXPORTED = [
    "__version__",
    "load_config",
    "Config",
    "open_db",
    "collect",
    "build",
    "run_week",
    "unsubscribe",
    "feed_health",
    "CollectReport",
    "BuildReport",
    "WeekReport",
    "send_issue",
    "dry_run_issue",
    "send_test_copy",
    "parse_feed",
    "render_issue",
    "PreviewServer",
    "Backend",
    "SendPlan",
    "SendReport",
    "registry",
    "DigestError",
    "BadInput",
    "Failed",
    "TryLater",
    "ConfigError",
    "SetupError",
    "SendError",
]


def test_the_exported_names_are_pinned():
    assert digest.__all__ == EXPORTED


def test_every_exported_name_resolves_to_its_module():
    for name in EXPORTED:
        value = getattr(digest, name)
        assert value is not None
        if name != "__version__":
            assert value.__module__.startswith("digest."), name


def test_importing_digest_imports_none_of_the_stages():
    code = "import digest, sys; print(sorted(name for name in sys.modules if name.startswith('digest')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['digest']"


def test_a_whole_week_through_the_library_and_the_memory_backend(tmp_path, monkeypatch):
    """run_week with the in-memory backend: collect, build and send without a server, through the public API."""
    from datetime import datetime

    import digest.store
    from digest.send.memory import MemoryBackend

    from conftest import write_config
    from helpers.feeds import FeedServer, Route, rss

    server = FeedServer().start()
    try:
        server.routes["/feed.xml"] = Route(
            rss(
                [
                    {
                        "title": "A post",
                        "link": "https://blog.example.com/a/",
                        "guid": "a",
                        "description": "x",
                        "date": "Wed, 01 Apr 2026 10:00:00 +0000",
                    }
                ]
            )
        )
        config_path = write_config(tmp_path, [{"name": "Blog", "url": server.url("/feed.xml"), "section": "News"}])
        with config_path.open("a", encoding="utf-8") as config:
            config.write("check:\n  links: false\n")  # its posts link to blog.example.com, which does not exist
        (tmp_path / "subscribers.csv").write_text("email\nada@example.com\ngrace@example.com\n")
        config, db = digest.load_config(config_path), digest.open_db(tmp_path / "digest.db")
        MemoryBackend.outbox.clear()
        questions = []
        report = digest.run_week(
            config,
            db,
            now=datetime(2026, 4, 3, 12, tzinfo=UTC),
            backend="memory",
            confirm=lambda question: questions.append(question) or True,
        )
    finally:
        server.stop()
    assert report.exit_code == 0 and report.sent.complete and report.built.items == 1
    assert questions == ["Send 2026-W14 “Test Digest: Mar 30 – Apr 5, 2026” to 2 subscribers?"]
    assert sorted(delivered.email for delivered in MemoryBackend.outbox) == ["ada@example.com", "grace@example.com"]
    assert digest.store.get_issue(db, "2026-W14")["backend"] == "memory"  # recorded as the backend it was
    again = digest.run_week(config, db, now=datetime(2026, 4, 3, 13, tzinfo=UTC), backend="memory")
    assert again.exit_code == 0 and "already sent (memory" in again.done and len(MemoryBackend.outbox) == 2
