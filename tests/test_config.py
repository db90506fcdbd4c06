from __future__ import annotations

import pytest

from digest.config import ConfigError, load_config, read_subscribers

GOOD = """\
newsletter:
  title: Django Digest
  timezone: Europe/London
  sections: [News, Articles]
feeds:
  - name: Weblog
    url: https://www.djangoproject.com/rss/weblog/
    section: News
  - url: https://adamj.eu/tech/atom.xml
    section: Articles
    exclude: [sponsored]
    include: django
"""


def write(tmp_path, text, name="feeds.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value


def test_reads_settings_and_feeds(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.newsletter.title == "Django Digest"
    assert config.newsletter.sections == ("News", "Articles")
    assert [feed.section for feed in config.feeds] == ["News", "Articles"]
    assert config.feeds[1].name == "adamj.eu"  # a feed without a name is named by its host
    assert config.feeds[1].include == ("django",) and config.feeds[1].exclude == ("sponsored",)
    assert config.drafts_dir == tmp_path / "drafts"


def test_keyword_filters_match_title_and_summary_case_insensitively(tmp_path):
    feed = load_config(write(tmp_path, GOOD)).feeds[1]
    assert feed.wants("New in Django 6", "")
    assert feed.wants("A post", "about DJANGO forms")
    assert not feed.wants("A post about Flask", "nothing here")
    assert not feed.wants("Django tips (Sponsored)", "")


@pytest.mark.parametrize("text, line, field, words", [
    ("feeds:\n  - url: [a\n  - b: c\n", 3, None, "not valid YAML"),
    ("newsletter:\n  titel: X\nfeeds: []\n", 2, "newsletter.titel", "unknown key"),
    ("feeds:\n  - name: A\n    section: News\n", 2, "feeds[0].url", "is required"),
    ("feeds:\n  - url: https://a.example/feed\n    section: Sports\n", 3, "feeds[0].section", "unknown section"),
    ("feeds:\n  - url: file:///etc/passwd\n", 2, "feeds[0].url", "http(s) URL"),
    ("newsletter:\n  timezone: Mars/Olympus\nfeeds: []\n", 2, "newsletter.timezone", "unknown time zone"),
    ("feeds:\n  - url: https://a.example/f\n  - url: https://a.example/f\n", 3, "feeds[1].url", "listed twice"),
    ("newsletter:\n  subject: '{nope}'\nfeeds: []\n", 2, "newsletter.subject", "bad pattern"),
    ("", 1, "feeds", "empty"),
])
def test_bad_config_names_file_line_and_field(tmp_path, text, line, field, words):
    path = write(tmp_path, text)
    error = error_of(path)
    assert error.line == line
    assert error.field == field
    assert words in str(error)
    assert str(error).startswith(f"{path}:{line}") and "\n" not in str(error)


def test_missing_config_says_how_to_make_one(tmp_path):
    assert "digest init" in str(error_of(tmp_path / "nope.yaml"))


def test_subscribers_merge_duplicates_and_report_bad_rows(tmp_path):
    path = write(tmp_path, "email,name,status\nada@example.com,Ada,active\nnot-an-address,Bob,active\n"
                           "ADA@example.com,Ada again,active\ngrace@example.com,Grace,unsubscribed\n"
                           "grace@example.com,Grace,active\n", "subscribers.csv")
    subscribers, problems = read_subscribers(path)
    assert [s.email.lower() for s in subscribers] == ["ada@example.com", "grace@example.com"]
    assert {s.email.lower(): s.status for s in subscribers}["grace@example.com"] == "unsubscribed"
    assert len(problems) == 1
    assert str(problems[0]) == f"{path}:3: email: not a valid address: 'not-an-address'"
    with pytest.raises(ConfigError):
        read_subscribers(path, strict=True)
