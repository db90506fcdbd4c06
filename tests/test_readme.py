"""The docs that run: the README's "A week with digest" and the next steps `digest demo` prints, executed as printed.

Each runs line by line in one bash on a pseudo-terminal (tests/helpers/shell.py), in a temporary HOME, with the
placeholders the walk-through names substituted: the `$EDITOR` lines are the test's own edits (feeds on a loopback
server, SMTP on aiosmtpd without TLS, an intro), the draft's week is the one `digest build` printed, and
`digest preview`/`digest serve` run in the background until they answer. The digest they run is the real command,
without freezegun, so the feeds' posts are dated a few seconds ago.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml

from conftest import REPO
from helpers.feeds import FeedServer, Route, rss
from helpers.shell import Shell
from helpers.smtp import SmtpServer

README = REPO / "README.md"
DIGEST = Path(shutil.which("digest") or Path(sys.executable).parent / "digest")  # the one pip installed here
YES = {"[y/N]": "y\n"}  # digest send's question, answered as a person would


def walkthrough() -> list[str]:
    """The lines of the code block under "## A week with digest"."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## A week with digest\n", 1)[1]
    block = section.split("```\n", 2)[1]
    return [line for line in block.splitlines() if line.strip()]


def command(line: str) -> str:
    """The line without its comment (the walk-through's comments start after two spaces and a #)."""
    return re.split(r"\s+#\s", line, maxsplit=1)[0].strip()


def shell_env(home: Path) -> dict[str, str]:
    """A person's environment: this venv's digest on PATH, a HOME of its own, no DIGEST_ setting or secret."""
    home.mkdir()
    return {
        "PATH": os.pathsep.join([str(DIGEST.parent), str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
        "HOME": str(home),
        "BROWSER": "true",  # digest preview --open opens no browser
        "TERM": "dumb",
        "LANG": "C.UTF-8",
        "COLUMNS": "100",
    }


def serve_in_background(shell: Shell, line: str) -> str:
    """Starts a server the walk-through leaves running, and polls its address until it answers; its address."""
    status, printed = shell.run(f"{command(line)} &")
    assert status == 0, f"{line}\n{printed}"
    address = shell.wait_for(r"(?:previewing \S+ at|serving \S+ on) (\S+)").group(1)
    url = address if address.startswith("http") else f"http://{address}"
    answer = poll(url, lambda response: response.status_code < 500)
    assert answer.status_code == 200, f"{line}: {url} answered {answer.status_code}"
    return url


def poll(url: str, done, timeout: float = 30) -> httpx.Response:
    """GETs url until done(response) or the timeout; the last answer."""
    deadline = time.monotonic() + timeout
    while True:  # each try is one short request to a server on this machine
        try:
            response = httpx.get(url, timeout=5)
            if done(response) or time.monotonic() > deadline:
                return response
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise


@pytest.fixture
def feeds():
    """Two feeds on loopback with posts from a few seconds ago (this week), linking to pages that answer 200."""
    server = FeedServer().start()
    now = datetime.now(UTC)
    for feed, section in (("weblog", "News"), ("blog", "Articles")):
        items = []
        for n in range(3):
            path = f"/{feed}/post-{n}/"
            server.routes[path] = Route(b"<html><title>post</title></html>", headers={"Content-Type": "text/html"})
            items.append(
                {
                    "title": f"{section} post {n} from the {feed}",
                    "link": server.url(path),
                    "guid": server.url(path),
                    "description": f"What post {n} of the {feed} says, in a sentence.",
                    "date": format_datetime(now - timedelta(seconds=10 + n)),
                }
            )
        server.routes[f"/{feed}.xml"] = Route(rss(items, title=feed, link=server.url("/")))
    yield server
    server.stop()


@pytest.fixture
def smtp():
    server = SmtpServer().start()
    yield server
    server.stop()


def edit_feeds(folder: Path, feeds: FeedServer, smtp: SmtpServer) -> None:
    """The `$EDITOR feeds.yaml` step: a title and sender, the loopback feeds, the loopback SMTP server."""
    path = folder / "feeds.yaml"
    settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    settings["newsletter"].update({"title": "README Weekly", "from": "README Weekly <editor@example.org>"})
    settings["feeds"] = [
        {"name": "Weblog", "url": feeds.url("/weblog.xml"), "section": "News", "private": True},
        {"name": "Blog", "url": feeds.url("/blog.xml"), "section": "Articles", "private": True},
    ]
    settings["smtp"].update({"host": "127.0.0.1", "port": smtp.port, "security": "none"})
    settings["check"] = {"private": True}  # the items link to the loopback server: check them there
    path.write_text(yaml.safe_dump(settings, sort_keys=False, allow_unicode=True), encoding="utf-8")


INTRO = "Hello from the README's own test."


def edit_draft(path: Path) -> None:
    """The `$EDITOR drafts/<week>.yaml` step: the intro written."""
    text = path.read_text(encoding="utf-8")
    assert "\nintro: ''\n" in text, text
    path.write_text(text.replace("\nintro: ''\n", f"\nintro: {INTRO}\n"), encoding="utf-8")


def test_a_week_with_digest_runs_as_printed(tmp_path, feeds, smtp):
    shell = Shell(tmp_path, shell_env(tmp_path / "home"))
    week = preview = None
    try:
        for line in walkthrough():
            if line.startswith("$EDITOR feeds.yaml"):
                edit_feeds(shell.cwd(), feeds, smtp)
            elif line.startswith("$EDITOR drafts/"):
                assert week, "digest build printed no week before the draft is edited"
                edit_draft(shell.cwd() / "drafts" / f"{week}.yaml")
                assert preview, "the draft is edited before digest preview runs"
                shown = poll(f"{preview}email.html", lambda response: INTRO in response.text)
                assert INTRO in shown.text, "the preview did not show the edited draft"
            elif command(line).startswith("digest preview"):
                preview = serve_in_background(shell, line)
            else:
                status, printed = shell.run(line, answers=YES)
                assert status == 0, f"{line}\n{printed}"
                if command(line) == "digest send":
                    assert "[y/N]" in printed, f"digest send sent without asking:\n{printed}"
                if command(line) == "digest build":
                    built = re.search(r"drafts/(\d{4}-W\d{2})\.yaml", printed)
                    assert built, f"digest build printed no week:\n{printed}"
                    week = built.group(1)

        assert [message.rcpt for message in smtp.messages[:1]] == ["you@example.com"]
        assert sorted(message.rcpt for message in smtp.messages[1:]) == ["ada@example.com", "grace@example.com"]
        sent = email.message_from_bytes(smtp.messages[-1].data)
        assert "README Weekly" in sent["Subject"]
        unsubscribe = re.search(r"<(https://[^>]+)>", sent["List-Unsubscribe"]).group(1)
        token = parse_qs(urlsplit(unsubscribe).query)["token"][0]
        status, printed = shell.run(f"digest unsubscribe '{token}'")
        assert status == 0, printed
        assert f"{smtp.messages[-1].rcpt}: unsubscribed" in printed
    finally:
        shell.close()


def test_the_demos_next_steps_run_as_printed(tmp_path):
    shell = Shell(tmp_path, shell_env(tmp_path / "home"))
    try:
        status, printed = shell.run(f"digest demo --dir {tmp_path / 'demo'}")
        assert status == 0, printed
        steps = [line[4:] for line in printed.splitlines() if line.startswith("  $ ")]
        assert steps, f"the demo printed no `  $ ` lines to run next:\n{printed}"
        for step in steps:
            if re.match(r"digest (preview|serve)\b", command(step)):
                serve_in_background(shell, step)
                status, printed = shell.run("kill $! && wait $!; true")
            else:
                status, printed = shell.run(step, answers=YES)
            assert status == 0, f"{step}\n{printed}"
    finally:
        shell.close()


def test_the_readme_is_short_and_its_links_lead_somewhere():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [target.split("#")[0] for target in targets if not re.match(r"[a-z]+:|#", target)]
    assert "docs/images/email.png" in local and "docs/images/preview.png" in local
    missing = [target for target in local if not (README.parent / target).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
    for target in targets:
        page, _, anchor = target.partition("#")
        if anchor and page.endswith(".md"):
            headings = re.findall(r"^#+ (.+)$", (README.parent / page).read_text(encoding="utf-8"), re.MULTILINE)
            slugs = {re.sub(r"[^\w-]", "", heading.strip().lower().replace(" ", "-")) for heading in headings}
            assert anchor in slugs, f"README.md links to {target}, a heading {page} does not have"
