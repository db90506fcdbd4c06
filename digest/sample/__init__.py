"""Bundled sample data: the starter files of `digest init` and the offline `digest demo`."""

from __future__ import annotations

import functools
import tempfile
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from typing import Callable, Iterator

SAMPLE_WEEK = "2026-W14"


class DemoError(Exception):
    """The demo cannot run where it was asked to: one line for the user."""
_HERE = files(__name__)


def starter_files(config_path: Path) -> dict[Path, str]:
    """What `digest init` writes: a feeds.yaml of real Django community feeds and a subscribers.csv."""
    return {
        config_path: (_HERE / "starter-feeds.yaml").read_text(encoding="utf-8"),
        config_path.parent / "subscribers.csv": (_HERE / "starter-subscribers.csv").read_text(encoding="utf-8"),
    }


class _QuietHandler(SimpleHTTPRequestHandler):
    extensions_map = {".xml": "application/rss+xml", ".atom": "application/atom+xml", "": "application/octet-stream"}

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass


@contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve a folder on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run_demo(directory: Path | None, say: Callable[[str], None]) -> Path:
    """Collect the sample feeds from a loopback server and build the sample week's issue."""
    from .. import jobs, store
    from ..config import load_config

    directory = Path(directory or tempfile.mkdtemp(prefix="digest-demo-"))
    if directory.exists() and any(directory.iterdir()):
        raise DemoError(f"--dir: {directory} is not empty; the demo writes feeds.yaml, subscribers.csv and "
                        "digest.db there, so give it a new or empty folder")
    directory.mkdir(parents=True, exist_ok=True)
    feeds_dir = Path(str(_HERE / "feeds"))
    with serve_directory(feeds_dir) as base:
        config_text = (_HERE / "feeds.yaml").read_text(encoding="utf-8").replace('"{base}/', f'"{base}/')
        config_path = directory / "feeds.yaml"
        config_path.write_text(config_text, encoding="utf-8")
        (directory / "subscribers.csv").write_text(
            (_HERE / "starter-subscribers.csv").read_text(encoding="utf-8"), encoding="utf-8")
        config = load_config(config_path)
        db = store.open_db(directory / "digest.db")
        say(f"demo: serving {len(config.feeds)} sample feeds on {base}, working in {directory}")
        report = jobs.collect(config, db, on_feed=lambda feed: say(f"  {feed.name}: " + (
            f"FAILED ({feed.error})" if feed.outcome == "failed" else f"{feed.new_posts} new posts")))
        say(f"collect: {report.new_posts} new posts from {len(report.feeds)} feeds in {report.seconds:.2f} s, "
            f"{len(report.failed)} failed")
    built = jobs.build(config, db, SAMPLE_WEEK, now=datetime.now(timezone.utc))
    say(f"build {SAMPLE_WEEK}: {built.items} items")
    say(f"  draft (edit me): {built.draft}")
    say(f"  html:            {built.html} ({built.html_bytes:,} bytes)")
    say(f"  text:            {built.text}")
    say(f"next: cd {directory} && digest feeds   (or open the html in a browser)")
    return directory
