"""Bundled sample data: the starter files of `digest init` and the offline `digest demo`."""

from __future__ import annotations

import functools
import os
import secrets
import shlex
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path

from digest.errors import BadInput

SAMPLE_WEEK = "2026-W14"
_HERE = files(__name__)


def starter_files(config_path: Path, *, templates: bool = False) -> dict[Path, bool]:
    """Write what `digest init` writes, never over an existing file: a feeds.yaml of real Django community feeds
    (the repository's own feeds.yaml) and a subscribers.csv, and with `templates`, a copy of the email's
    templates in templates/ beside them, to edit. Returns each file and whether it was written."""
    from digest.issue.render import BUILT_IN_TEMPLATES, OVERRIDES

    folder = config_path.parent
    wanted = {
        config_path: (_HERE / "starter-feeds.yaml").read_text(encoding="utf-8"),
        folder / "subscribers.csv": (_HERE / "starter-subscribers.csv").read_text(encoding="utf-8"),
    }
    if templates:
        wanted.update(
            {
                folder / OVERRIDES / path.name: path.read_text(encoding="utf-8")
                for path in sorted(BUILT_IN_TEMPLATES.glob("*.j2"))
            }
        )
    written = {}
    private = folder / "subscribers.csv"  # it will hold the real list: its owner's alone from the start
    for path, text in wanted.items():
        written[path] = not path.exists()
        if written[path]:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(
                os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if path == private else 0o666),
                "w",
                encoding="utf-8",
            ) as stream:
                stream.write(text)
    return written


class _QuietHandler(SimpleHTTPRequestHandler):
    extensions_map = {  # noqa: RUF012 - http.server's own attribute, overridden as its documentation says
        ".xml": "application/rss+xml",
        ".atom": "application/atom+xml",
        "": "application/octet-stream",
    }

    def log_message(self, format: str, *args) -> None:
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
    """Collect the sample feeds from a loopback server, build the sample week's issue, and say what to try next.

    What it prints is the same every run but for the folder: no port, no timing, the feeds in their order."""
    from digest import jobs, store
    from digest.feeds import collect as collecting
    from digest.jobs import load_config

    directory = Path(directory or tempfile.mkdtemp(prefix="digest-demo-"))
    if directory.exists() and any(directory.iterdir()):
        raise BadInput(
            f"--dir: {directory} is not empty; the demo writes feeds.yaml, subscribers.csv and "
            "digest.db there, so give it a new or empty folder"
        )
    directory.mkdir(parents=True, exist_ok=True)
    feeds_dir = Path(str(_HERE / "feeds"))
    with serve_directory(feeds_dir) as base:
        config_text = (_HERE / "feeds.yaml").read_text(encoding="utf-8").replace('"{base}/', f'"{base}/')
        config_path = directory / "feeds.yaml"
        config_path.write_text(config_text, encoding="utf-8")
        (directory / "subscribers.csv").write_text(
            (_HERE / "starter-subscribers.csv").read_text(encoding="utf-8"), encoding="utf-8"
        )
        config = load_config(config_path)
        db = store.open_db(directory / "digest.db")
        say(f"demo: collecting the {len(config.feeds)} sample feeds from a loopback server, working in {directory}")
        # One feed at a time: a post that two sample feeds carry (an aggregator and the blog) is the news of
        # whichever stores it first, which must not change from run to run (its count, its source in the draft).
        report = collecting.collect(config, db, settings=replace(config.collect, concurrency=1))
    for feed in report.feeds:
        say(f"  {feed.name}: " + (f"FAILED ({feed.error})" if feed.outcome == "failed" else f"{feed.new_posts} new"))
    say(f"collect: {report.new_posts} new posts from {len(report.feeds)} feeds, {len(report.failed)} failed")
    built = jobs.build(config, db, SAMPLE_WEEK, now=datetime.now(UTC))
    say(f"build {SAMPLE_WEEK}: {built.items} items")
    say(f"  draft (edit me): {built.draft}")
    say(f"  html:            {built.html} ({built.html_bytes:,} bytes)")
    say(f"  text:            {built.text}")
    for line in demo_next_steps(directory, _write_secret(directory)):
        say(line)
    return directory


def _write_secret(directory: Path) -> Path:
    """A random secret of the demo's own, readable by its owner only, for the commands that sign unsubscribe
    links (a dry run does): never printed."""
    path = directory / "unsubscribe-secret"
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as stream:
        stream.write(secrets.token_urlsafe(32) + "\n")
    return path


def demo_next_steps(directory: Path, secret: Path) -> list[str]:
    """The commands to try on the demo's folder: each `  $ ` line runs as printed, in order, in one shell."""
    week = SAMPLE_WEEK
    return [
        "",
        "next steps: run each $ line as it is, in order",
        f"  $ cd {shlex.quote(str(directory))}",
        f"  $ export DIGEST_UNSUBSCRIBE_SECRET_FILE={shlex.quote(str(secret))}",
        "      (a random secret the demo wrote: it signs the unsubscribe links)",
        "  $ digest feeds",
        "      (how each feed did: the broken sample feed is reported, the others went on)",
        f"  $ digest preview --week {week} --open",
        f"      (the email in your browser, refreshed as you edit drafts/{week}.yaml; Ctrl-C to stop)",
        f"  $ digest check --week {week}",
        "      (dead links, placeholders, size: what digest send would refuse)",
        f"  $ digest send --week {week} --dry-run",
        f"      (the emails as .eml files in drafts/{week}.dry-run/: nothing is sent)",
        "then your own newsletter: digest init in a new folder (README.md, “A week with digest”);",
        "the web side (digest publish, digest serve) shows issues once they are sent: see docs/web.md",
    ]


SECRET_COMMAND = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > ~/.digest-secret"


def init_next_steps(config_path: Path) -> list[str]:
    """What `digest init` prints last: the first steps of the README's walk-through, "A week with digest"."""
    return [
        "",
        "next steps:",
        f"  1. edit {config_path}: your title, sender and feeds; smtp.host and smtp.port: your mail server",
        "     (a login: smtp.username, and export DIGEST_SMTP_PASSWORD=...)",
        f"     and put your readers in {config_path.with_name('subscribers.csv')}: the starter's two are at",
        "     example.com, where no mail arrives (digest check notes them, and a sender left there)",
        "  2. a secret that signs the unsubscribe links (keep it, and keep it private):",
        f"       {SECRET_COMMAND}",
        "       export DIGEST_UNSUBSCRIBE_SECRET_FILE=~/.digest-secret",
        "  3. digest collect, then digest build, then digest preview --open to see the email",
        "  4. digest check, digest send --to you@example.com for a test copy, then digest send",
    ]
