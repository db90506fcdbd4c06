"""The `digest` command through its real entry point: exit codes, one-line errors, JSON, the demo."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, write_config
from helpers.feeds import Route, rss


def digest_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_init_writes_starter_files_and_never_overwrites(tmp_path, run_cli):
    code, out, _ = run_cli("init", cwd=tmp_path)
    assert code == 0 and "feeds.yaml: written" in out
    config = yaml.safe_load((tmp_path / "feeds.yaml").read_text())
    assert any("djangoproject.com" in feed["url"] for feed in config["feeds"])
    (tmp_path / "subscribers.csv").write_text("email\nmine@example.com\n")
    code, out, _ = run_cli("init", cwd=tmp_path)
    assert code == 0 and "exists, left as it is" in out
    assert (tmp_path / "subscribers.csv").read_text() == "email\nmine@example.com\n"


def test_starter_config_is_valid(tmp_path, run_cli):
    run_cli("init", cwd=tmp_path)
    from digest import load_config

    config = load_config(tmp_path / "feeds.yaml")
    assert len(config.feeds) >= 6 and "News" in config.newsletter.sections


def test_bad_config_is_one_line_exit_2_and_the_database_untouched(tmp_path, run_cli, feed_server):
    feed_server.routes["/a.xml"] = Route(rss([{"title": "t", "link": "https://e.example/1", "guid": "1"}]))
    write_config(tmp_path, [{"url": feed_server.url("/a.xml"), "section": "News"}])
    assert run_cli("collect", cwd=tmp_path)[0] == 0
    before = digest_of(tmp_path / "digest.db")
    (tmp_path / "feeds.yaml").write_text("feeds:\n  - url: https://e.example/feed\n    section: Sports\n")
    for command in (["collect"], ["build", "--week", "2026-W14"], ["feeds"]):
        code, _out, err = run_cli(*command, cwd=tmp_path)
        assert code == 2, command
        assert err.strip().count("\n") == 0 and "Traceback" not in err
        assert "feeds.yaml:3: feeds[0].section: unknown section 'Sports'" in err
    assert digest_of(tmp_path / "digest.db") == before


def test_unknown_week_is_refused(tmp_path, run_cli):
    write_config(tmp_path, [])
    code, _, err = run_cli("build", "--week", "2026-W60", cwd=tmp_path)
    assert code == 2 and err.strip() == "error: --week: '2026-W60': 2026 has no week 60"
    assert not (tmp_path / "digest.db").exists()


@pytest.mark.parametrize("week", ["２０２６-W14", "٢٠٢٦-W14", "2026-W١٤", "2026-W14x", "2026-w14"])
def test_a_week_in_other_digits_is_refused_not_a_second_issue_of_the_same_week(tmp_path, run_cli, week):
    """int("２０２６") is 2026: without the check, "２０２６-W14" would be a draft and an issue of its own."""
    write_config(tmp_path, [])
    code, _, err = run_cli("build", "--week", week, cwd=tmp_path)
    assert code == 2 and "is not an ISO week like 2026-W14" in err
    assert not (tmp_path / "drafts").exists()


@pytest.mark.parametrize("backend", ["memory", "nope"])
def test_the_command_line_offers_only_the_listed_backends(tmp_path, run_cli, backend):
    """The in-memory backend is for tests: from the command line it would mark an issue sent, mailing no one."""
    write_config(tmp_path, [])
    code, _, err = run_cli("send", "--week", "2026-W14", "--backend", backend, cwd=tmp_path)  # no --yes either
    assert code == 2 and err == f"error: --backend: {backend!r} is not one of buttondown, smtp\n"


def test_config_and_db_come_from_options_or_environment(tmp_path, run_cli, monkeypatch, feed_server):
    feed_server.routes["/a.xml"] = Route(rss([{"title": "t", "link": "https://e.example/1", "guid": "1"}]))
    elsewhere = tmp_path / "conf"
    elsewhere.mkdir()
    write_config(elsewhere, [{"url": feed_server.url("/a.xml"), "section": "News"}])
    monkeypatch.setenv("DIGEST_CONFIG", str(elsewhere / "feeds.yaml"))
    monkeypatch.setenv("DIGEST_DB", str(tmp_path / "state.db"))
    assert run_cli("collect", cwd=tmp_path)[0] == 0
    assert (tmp_path / "state.db").exists()
    assert run_cli("--db", str(tmp_path / "other.db"), "collect", cwd=tmp_path)[0] == 0
    assert (tmp_path / "other.db").exists()


def test_without_db_option_the_database_lives_next_to_feeds_yaml(tmp_path, run_cli, monkeypatch, feed_server):
    feed_server.routes["/a.xml"] = Route(rss([{"title": "t", "link": "https://e.example/1", "guid": "1"}]))
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    write_config(project, [{"url": feed_server.url("/a.xml"), "section": "News"}])
    monkeypatch.delenv("DIGEST_DB", raising=False)
    assert run_cli("--config", str(project / "feeds.yaml"), "collect", cwd=elsewhere)[0] == 0
    assert run_cli("--config", str(project / "feeds.yaml"), "unsubscribe", "ada@example.com", cwd=elsewhere)[0] == 0
    assert (project / "digest.db").exists() and not list(elsewhere.iterdir())


@pytest.mark.parametrize(
    "args", [["nosuch"], ["build", "--bogus"], ["build", "--week"], ["preview", "--port", "99999"]]
)
def test_usage_errors_are_one_message_and_exit_2_without_traceback(tmp_path, args):
    result = subprocess.run([sys.executable, "-m", "digest", *args], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "Error:" in result.stderr


def test_a_file_that_cannot_be_written_is_one_line_not_a_traceback(tmp_path, run_cli, feed_server):
    feed_server.routes["/a.xml"] = Route(
        rss([{"title": "Hello", "link": "https://e.example/1", "guid": "1", "date": "Wed, 01 Apr 2026 10:00:00 +0000"}])
    )
    write_config(tmp_path, [{"url": feed_server.url("/a.xml"), "section": "News"}])
    assert run_cli("collect", cwd=tmp_path)[0] == 0
    (tmp_path / "drafts").write_text("a file where the drafts folder should be")
    code, _, err = run_cli("build", "--week", "2026-W14", cwd=tmp_path)
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: ") and "drafts" in err


def test_collect_json_and_plain_lines_when_not_a_terminal(tmp_path, run_cli, feed_server):
    feed_server.routes["/a.xml"] = Route(rss([{"title": "t", "link": "https://e.example/1", "guid": "1"}]))
    write_config(
        tmp_path,
        [
            {"name": "A", "url": feed_server.url("/a.xml"), "section": "News"},
            {"name": "Gone", "url": feed_server.url("/gone.xml"), "section": "News"},
        ],
    )
    code, out, _ = run_cli("collect", "--json", cwd=tmp_path)
    summary = json.loads(out)
    assert code == 0 and summary["new_posts"] == 1 and summary["failed"] == 1
    code, out, _ = run_cli("collect", cwd=tmp_path)
    assert "ok      A: unchanged" in out and "FAILED  Gone: HTTP 404 Not Found" in out
    assert "2 feeds in" in out
    code, out, _ = run_cli("feeds", cwd=tmp_path)
    assert "FAILING x2: HTTP 404 Not Found" in out
    rows = json.loads(run_cli("feeds", "--json", cwd=tmp_path)[1])
    assert {row["name"]: row["posts"] for row in rows} == {"A": 1, "Gone": 0}


def test_build_json_reports_the_files(tmp_path, run_cli, feed_server):
    feed_server.routes["/a.xml"] = Route(
        rss([{"title": "Hello", "link": "https://e.example/1", "guid": "1", "date": "Wed, 01 Apr 2026 10:00:00 +0000"}])
    )
    write_config(tmp_path, [{"url": feed_server.url("/a.xml"), "section": "News"}])
    run_cli("collect", cwd=tmp_path)
    code, out, _ = run_cli("build", "--week", "2026-W14", "--json", cwd=tmp_path)
    report = json.loads(out)
    assert code == 0 and report["outcome"] == "built" and report["items"] == 1
    assert report["draft"].endswith("drafts/2026-W14.yaml")
    code, out, _ = run_cli("build", "--week", "2026-W15", cwd=tmp_path)
    assert code == 0 and "nothing new this week, no draft written" in out


def test_demo_runs_offline_end_to_end(tmp_path):
    """The README's first command, as a user runs it: a real process, no network but loopback."""
    result = subprocess.run(
        [sys.executable, "-m", "digest", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "FAILED" in result.stdout  # the bundled broken feed is reported, the others go on
    draft = yaml.safe_load((tmp_path / "demo" / "drafts" / "2026-W14.yaml").read_text())
    titles = [item["title"] for section in draft["sections"] for item in section.get("items", [])]
    assert len(titles) >= 10 and not any("casino" in title.lower() for title in titles)
    html = (tmp_path / "demo" / "drafts" / "2026-W14.html").read_text()
    assert "<script" not in html.lower() and len(html.encode()) < 100_000
    assert (tmp_path / "demo" / "drafts" / "2026-W14.txt").exists()
    assert "{base}" in (tmp_path / "demo" / "feeds.yaml").read_text()  # the comment that explains it


def test_demo_never_overwrites_a_folder_with_files_in_it(tmp_path, run_cli):
    (tmp_path / "feeds.yaml").write_text("my own settings\n")
    code, _, err = run_cli("demo", "--dir", str(tmp_path))
    assert code == 2 and "is not empty" in err and (tmp_path / "feeds.yaml").read_text() == "my own settings\n"


def test_every_command_and_option_has_help_text():
    import typer.main

    from digest.cli import app

    group = typer.main.get_command(app)
    missing = [f"digest {name}" for name, command in group.commands.items() if not (command.help or "").strip()]
    for name, command in [("digest", group), *((f"digest {n}", c) for n, c in group.commands.items())]:
        missing += [
            f"{name} {param.opts or param.name}"
            for param in command.params
            if not (getattr(param, "help", None) or "").strip()
        ]
    assert missing == []


def test_the_repository_is_a_working_newsletter_folder_and_init_writes_its_feeds_yaml(tmp_path, run_cli):
    from digest import load_config

    assert run_cli("init", cwd=tmp_path)[0] == 0
    assert (tmp_path / "feeds.yaml").read_bytes() == (REPO / "feeds.yaml").read_bytes()
    assert (tmp_path / "subscribers.csv").read_bytes() == (REPO / "subscribers.csv").read_bytes()
    assert len(load_config(REPO / "feeds.yaml").feeds) >= 6
    lines = (REPO / "subscribers.csv").read_text().splitlines()[1:]
    assert lines and all(line.split(",")[0].endswith("@example.com") for line in lines)  # never a real address


def test_init_templates_copies_the_emails_templates_out_to_edit(tmp_path, run_cli):
    code, out, _ = run_cli("init", "--templates", cwd=tmp_path)
    assert code == 0 and "templates/email.mjml.j2: written" in out
    for name in ("email.mjml.j2", "text.txt.j2"):
        assert (tmp_path / "templates" / name).read_bytes() == (REPO / "templates" / name).read_bytes()
    code, out, _ = run_cli("init", "--templates", cwd=tmp_path)
    assert out.count("exists, left as it is") == 4


def test_a_plain_wheel_install_runs_the_demo(tmp_path):
    """`pip install .` (not -e): the wheel carries the email's templates, the preview page and the sample feeds.

    The wheel is installed into a folder of its own, which comes first on the path: the checkout is not seen.
    """
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "feeds.yaml", "subscribers.csv"):  # digest/sample links to the last two
        shutil.copy2(REPO / name, source / name)
    for name in ("digest", "templates"):  # digest/templates is a link to ../templates, as in the repository
        shutil.copytree(REPO / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", tmp_path / "dist", source], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("digest-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", tmp_path / "site", wheel], check=True, timeout=300)
    environment = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    result = subprocess.run(
        [sys.executable, "-c", "import digest.issue.render; print(digest.issue.render.__file__)"],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
    )
    assert result.stdout.startswith(str(tmp_path / "site")), result
    result = subprocess.run(
        [sys.executable, "-m", "digest", "demo", "--dir", "demo"],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    html = (tmp_path / "demo" / "drafts" / "2026-W14.html").read_text()
    assert "<mj-" not in html and "unsubscribe" in html.lower()
