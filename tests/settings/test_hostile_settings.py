"""Hostile settings and files: what the settings stage reads from a stranger or a slip of the keyboard ends in
one line naming the file, line and field, never in a traceback, minutes of work or gigabytes of memory."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from digest.errors import ConfigError
from digest.settings.subscribers import read_subscriber_export, read_subscribers

GIGABYTE = 1 << 30


def _limited_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (GIGABYTE, GIGABYTE))


def digest_limited(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`digest ARGS` in a process of its own, held to 1 GB of address space: a file read whole fails there."""
    return subprocess.run(
        [sys.executable, "-m", "digest", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_limited_memory,
    )


@pytest.mark.parametrize("device", ["/dev/urandom", "/dev/zero"])
def test_importing_an_endless_binary_file_is_one_line(tmp_path, device):
    result = digest_limited("--db", str(tmp_path / "digest.db"), "subscribers", "import", device, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"error: {device}:1: ")


@pytest.mark.parametrize("reader", [read_subscriber_export, read_subscribers])
def test_a_binary_file_is_refused_at_its_line(tmp_path, reader):
    path = tmp_path / "list.csv"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom\n")  # a video's first bytes
    with pytest.raises(ConfigError) as error:
        reader(path)
    assert (error.value.line, error.value.problem) == (1, "binary data (a NUL byte): not a CSV list")


def test_a_file_that_is_not_utf8_names_its_line_without_reading_it_whole(tmp_path):
    path = tmp_path / "list.csv"
    path.write_bytes(b"email,name\nada@example.com,Ada\n" * 1000 + b"grace@example.com,Gr\xe2ce\n")
    with pytest.raises(ConfigError) as error:
        read_subscriber_export(path)
    assert error.value.line == 2001 and "not UTF-8" in error.value.problem


def test_a_file_larger_than_any_list_is_refused(tmp_path, monkeypatch):
    from digest.settings import subscribers

    monkeypatch.setattr(subscribers, "MAX_FILE", 1000)
    path = tmp_path / "list.csv"
    path.write_text("email\n" + "".join(f"reader{n}@example.com\n" for n in range(100)), encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        read_subscriber_export(path)
    assert "more than 1,000 bytes" in error.value.problem and error.value.line is not None


FEEDS = "feeds:\n  - url: https://a.example/feed\n"


def config_with_subject(tmp_path: Path, subject: str) -> Path:
    path = tmp_path / "feeds.yaml"
    path.write_text(f"newsletter:\n  title: Weekly\n  subject: '{subject}'\n{FEEDS}", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "subject",
    [
        "{title:>100000000}",  # a gigabyte at 10**9, and minutes of work for each build
        "{title:.100000000}",
        "{title:x^100000000}",
        "{number:0100000000d}",
        "{number:,.100000000f}",
        "{issue:201}",
        "{start:%201Y}",
        "{end:%_100000000d}",
        "{start!s:>100000000}",  # a date as text: a width of the string format, not strftime's
        "{start.year:>100000000}",
        "{title:>{number}}",  # a width taken from a value: no bound known when the settings are read
    ],
)
def test_a_subject_format_wider_than_any_subject_is_refused_when_read(tmp_path, subject):
    from digest.settings.config import load_config

    path = config_with_subject(tmp_path, subject)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert (error.value.line, error.value.field) == (3, "newsletter.subject")
    assert "200" in error.value.problem or "nested" in error.value.problem


@pytest.mark.parametrize(
    "subject", ["{title:>200}", "{number:03d}", "{title:0>9}: {start:%b %-d} – {end:%d.%m.%Y}", "№{number:,}"]
)
def test_a_subject_format_of_a_reasonable_width_is_kept(tmp_path, subject):
    from digest.settings.config import load_config

    assert load_config(config_with_subject(tmp_path, subject)).newsletter.subject == subject


# --- what the published folder may hold ---------------------------------------------------------------------

WEB = "newsletter:\n  site_url: https://news.example.com/\n" + FEEDS


def refusal(tmp_path: Path, text: str) -> ConfigError:
    from digest.settings.config import load_config

    path = tmp_path / "feeds.yaml"
    path.write_text(WEB + text, encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    return error.value


@pytest.mark.parametrize(
    "text, line, field, words",
    [
        ("publish:\n  dir: drafts\n", 6, "publish.dir", "the drafts folder"),
        ("publish:\n  dir: site\ndrafts_dir: site/drafts\n", 7, "drafts_dir", "inside the published folder"),
        ("drafts_dir: site/drafts\nserve: {}\n", 5, "drafts_dir", "inside the published folder"),
        ("drafts_dir: site\npublish: {}\n", 5, "drafts_dir", "the published folder itself"),
        ("publish:\n  dir: ./out/../drafts/\n", 6, "publish.dir", "the drafts folder"),
        ("publish:\n  dir: drafts/site\n", 6, "publish.dir", "the drafts folder"),
        ("subscribers: site/people.csv\npublish: {}\n", 5, "subscribers", "inside the published folder"),
        ("publish:\n  dir: subscribers.csv\n", 6, "publish.dir", "subscribers.csv"),
        ("publish:\n  dir: digest.db\n", 6, "publish.dir", "digest.db"),
    ],
)
def test_the_published_folder_shares_nothing_with_drafts_database_or_subscribers(tmp_path, text, line, field, words):
    error = refusal(tmp_path, text)
    assert (error.line, error.field) == (line, field), str(error)
    assert words in error.problem


def test_a_symlink_to_the_drafts_is_no_folder_of_its_own(tmp_path):
    (tmp_path / "drafts").mkdir()
    (tmp_path / "public").symlink_to(tmp_path / "drafts")
    error = refusal(tmp_path, "publish:\n  dir: public\n")
    assert (error.line, error.field) == (6, "publish.dir") and "the drafts folder" in error.problem


def test_folders_of_their_own_are_kept(tmp_path):
    from digest.settings.config import load_config

    path = tmp_path / "feeds.yaml"
    path.write_text(WEB + "publish:\n  dir: public/site\ndrafts_dir: private/drafts\nserve: {}\n", encoding="utf-8")
    config = load_config(path)
    assert config.site_dir == tmp_path / "public/site" and config.drafts_dir == tmp_path / "private/drafts"


def test_a_database_named_elsewhere_inside_the_published_folder_is_refused(tmp_path):
    from digest.errors import SetupError
    from digest.settings.config import load_config
    from digest.settings.folders import check_database_apart

    path = tmp_path / "feeds.yaml"
    path.write_text(WEB + "publish: {}\n", encoding="utf-8")
    config = load_config(path)
    check_database_apart(config, tmp_path / "data" / "digest.db")
    with pytest.raises(SetupError) as error:
        check_database_apart(config, tmp_path / "site" / ".." / "site" / "digest.db")
    assert "--db or DIGEST_DB" in str(error.value) and "inside the published folder" in str(error.value)


def test_a_command_refuses_a_database_that_db_puts_inside_the_published_folder(tmp_path, run_cli):
    (tmp_path / "feeds.yaml").write_text(WEB + "publish: {}\n", encoding="utf-8")
    (tmp_path / "site").mkdir()
    for command in (["publish"], ["status"]):
        code, _, err = run_cli("--db", str(tmp_path / "site" / "digest.db"), *command, cwd=tmp_path)
        assert code == 2 and "--db or DIGEST_DB" in err and "inside the published folder" in err, (command, err)
    assert not (tmp_path / "site" / "digest.db").exists()


@pytest.mark.parametrize("end", ["\r", "\n", "\r\n"])
def test_every_line_ending_of_a_spreadsheet_is_read_and_lines_are_counted(tmp_path, end):
    path = tmp_path / "list.csv"
    rows = ["email,name", "ada@example.com,Ada", 'grace@example.com,"Grace\nHopper"', "bad,Bad"]
    path.write_bytes(end.join(rows).encode() + b"\r" + ("x" * 3000 + end).encode() * 1000)  # 3 MB
    file = read_subscriber_export(path)
    assert [subscriber.email for subscriber in file.subscribers] == ["ada@example.com", "grace@example.com"]
    assert [(problem.line, problem.field) for problem in file.problems][:1] == [(5, "email")]


@pytest.mark.parametrize("name", ["DIGEST_UNSUBSCRIBE_SECRET_FILE", "DIGEST_SMTP_PASSWORD_FILE"])
def test_a_secrets_file_inside_the_published_folder_is_refused(tmp_path, monkeypatch, name):
    from digest.errors import SetupError
    from digest.settings.config import load_config

    path = tmp_path / "feeds.yaml"
    path.write_text(WEB + "publish:\n  dir: pub\n", encoding="utf-8")
    (tmp_path / "pub").mkdir()
    (tmp_path / "pub" / "secret").write_text("a long random secret, served to anyone\n", encoding="utf-8")
    (tmp_path / "secret").write_text("a long random secret, kept apart\n", encoding="utf-8")
    monkeypatch.setenv(name, str(tmp_path / "secret"))
    load_config(path)
    monkeypatch.setenv(name, str(tmp_path / "pub" / ".." / "pub" / "secret"))
    with pytest.raises(SetupError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{name}: the file is inside the published folder")


@pytest.mark.parametrize(
    "url", ['https://news.example.com/a"b/', "https://news.example.com/<b>/", "https://x.example/a b/"]
)
def test_a_url_setting_with_a_character_no_url_may_hold_is_refused_at_its_line(tmp_path, url):
    from digest.settings.config import load_config

    path = tmp_path / "feeds.yaml"
    path.write_text(f"newsletter:\n  site_url: '{url}'\n" + FEEDS, encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert (error.value.line, error.value.field) == (2, "newsletter.site_url")
    assert "percent-encode it" in error.value.problem


def test_a_feeds_own_url_keeps_what_the_world_writes_in_links(tmp_path):
    """The rule above holds the newsletter's own URLs only: a feed's address (and an item's link, a draft's) is
    written as the world writes it, and escaped where digest writes it."""
    from digest.settings.config import load_config

    path = tmp_path / "feeds.yaml"
    path.write_text("feeds:\n  - url: 'https://a.example/feed?tags=a|b&q=\"x\"'\n", encoding="utf-8")
    assert load_config(path).feeds[0].url == 'https://a.example/feed?tags=a|b&q="x"'
