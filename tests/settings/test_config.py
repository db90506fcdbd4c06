from __future__ import annotations

import pytest

from digest import load_config
from digest.errors import ConfigError
from digest.settings.subscribers import read_subscribers

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


@pytest.mark.parametrize(
    "text, line, field, words",
    [
        ("feeds:\n  - url: [a\n  - b: c\n", 3, None, "not valid YAML"),
        ("newsletter:\n  titel: X\nfeeds: []\n", 2, "newsletter.titel", "unknown key"),
        ("feeds:\n  - name: A\n    section: News\n", 2, "feeds[0].url", "is required"),
        ("feeds:\n  - url: https://a.example/feed\n    section: Sports\n", 3, "feeds[0].section", "unknown section"),
        ("feeds:\n  - url: file:///etc/passwd\n", 2, "feeds[0].url", "http(s) URL"),
        ("newsletter:\n  timezone: Mars/Olympus\nfeeds: []\n", 2, "newsletter.timezone", "unknown time zone"),
        ("feeds:\n  - url: https://a.example/f\n  - url: https://a.example/f\n", 3, "feeds[1].url", "listed twice"),
        ("newsletter:\n  subject: '{nope}'\nfeeds: []\n", 2, "newsletter.subject", "bad pattern"),
        ("", 1, "feeds", "empty"),
    ],
)
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
    path = write(
        tmp_path,
        "email,name,status\nada@example.com,Ada,active\nnot-an-address,Bob,active\n"
        "ADA@example.com,Ada again,active\ngrace@example.com,Grace,unsubscribed\n"
        "grace@example.com,Grace,active\n",
        "subscribers.csv",
    )
    subscribers, problems = read_subscribers(path)
    assert [s.email.lower() for s in subscribers] == ["ada@example.com", "grace@example.com"]
    assert {s.email.lower(): s.status for s in subscribers}["grace@example.com"] == "unsubscribed"
    assert len(problems) == 1
    assert str(problems[0]) == f"{path}:3: email: not a valid address: 'not-an-address'"
    with pytest.raises(ConfigError):
        read_subscribers(path, strict=True)


def test_subscribers_with_a_column_named_twice_are_refused(tmp_path):
    path = write(tmp_path, "email,name,email\nada@example.com,Ada,grace@example.com\n", "subscribers.csv")
    with pytest.raises(ConfigError, match="header row has more than one 'email' column") as raised:
        read_subscribers(path)
    assert str(raised.value).startswith(f"{path}:1: email: ")


# --- review fixes: header injection, read errors, YAML features, ranges, the Buttondown URL -----------------

FEED = "feeds:\n  - url: https://a.example/feed\n"


@pytest.mark.parametrize(
    "key, value",
    [
        ("title", '"Digest\\nBcc: everyone@example.com"'),
        ("from", '"Digest <d@example.com>\\r\\nBcc: everyone@example.com"'),
        ("reply_to", '"editor@example.com\\rBcc: everyone@example.com"'),
        ("subject", '"{title}\\nBcc: x@example.com"'),
        ("subject", '"{title} {start:%n}"'),  # strftime's %n is a line break too
    ],
)
def test_a_line_break_in_a_header_field_is_refused(tmp_path, key, value):
    path = write(tmp_path, f"newsletter:\n  language: en\n  {key}: {value}\n{FEED}")
    error = error_of(path)
    assert (error.line, error.field) == (3, f"newsletter.{key}")
    assert "line break" in error.problem and "\n" not in str(error)


@pytest.mark.parametrize("subject", ["{start.foo}", "{title[x]}", "{title[99]}", "{0}", "{title:d}"])
def test_a_subject_pattern_that_cannot_be_filled_in_is_bad_input(tmp_path, subject):
    error = error_of(write(tmp_path, f"newsletter:\n  subject: '{subject}'\n{FEED}"))
    assert (error.line, error.field) == (2, "newsletter.subject") and "bad pattern" in error.problem


@pytest.mark.parametrize(
    "text, line, field, words",
    [
        ("{[a]: 1}\n", 1, None, "key must be plain text"),
        ("feeds:\n  ? {a: 1}\n  : 2\n", 2, "feeds", "key must be plain text"),
        ("feeds: &a [*a]\n", 1, None, "anchors (&a) are not supported"),
        (
            "newsletter: {title: T}\nfeeds:\n  - url: https://a.example/f\n    name: *x\n",
            4,
            None,
            "aliases (*x) are not supported",
        ),
        (FEED + "collect:\n  timeout: 2026-13-45\n", 4, "collect.timeout", "cannot read '2026-13-45'"),
        (FEED + "collect:\n  max_attempts: !!int many\n", 4, "collect.max_attempts", "cannot read 'many' as int"),
        (FEED + "collect:\n  max_attempts: !!python/name:os.system x\n", 4, "collect.max_attempts", "constructor"),
        ("feeds:\n  - url: 'http://[x/feed'\n", 2, "feeds[0].url", "http(s) URL"),
        ("feeds:\n  - url: 'http://a.example:99999/feed'\n", 2, "feeds[0].url", "http(s) URL"),
        (FEED + "collect:\n  timeout: .inf\n", 4, "collect.timeout", "finite"),
        ("feeds:\n  - url: https://a.example/f\n    name: !!bool\n", 3, "feeds[0].name", "cannot read '' as bool"),
        (FEED + "collect:\n  timeout: !!int\n", 4, "collect.timeout", "cannot read '' as int"),
        ("feeds:\n  - url: https://a.example/f\n    name: a\x07b\n", 3, None, "character #x0007"),
    ],
)
def test_yaml_the_loader_refuses_is_one_line_not_a_traceback(tmp_path, text, line, field, words):
    path = write(tmp_path, text)
    error = error_of(path)
    assert (error.line, error.field) == (line, field)
    assert words in error.problem and str(error).startswith(f"{path}:{line}: ") and "\n" not in str(error)


@pytest.mark.parametrize(
    "section, key, value, words",
    [
        ("collect", "timeout", 0, "more than 0"),
        ("collect", "timeout", -1.5, "more than 0"),
        ("collect", "max_megabytes", 0, "more than 0"),
        ("collect", "retries", -1, "at least 0"),
        ("collect", "max_attempts", 0, "at least 1"),
        ("collect", "backoff", -1, "at least 0"),
        ("smtp", "security", "tls", "must be starttls, ssl or none"),
        ("smtp", "host", "''", "must not be empty"),
        ("collect", "concurrency", 0, "at least 1"),
        ("smtp", "port", 0, "at least 1"),
        ("smtp", "port", 65536, "at most 65535"),
        ("smtp", "timeout", 0, "more than 0"),
        ("smtp", "connections", 0, "at least 1"),
        ("smtp", "max_attempts", 0, "at least 1"),
        ("smtp", "backoff", -1, "at least 0"),
        ("buttondown", "timeout", -3, "more than 0"),
        ("buttondown", "max_attempts", 0, "at least 1"),
        # a typo's hours or years: past about 1e9 s, sleeping or timing out raises OverflowError mid-run
        ("collect", "timeout", "1.0e+300", "at most 3600"),
        ("collect", "deadline", "1.0e+12", "at most 86400"),
        ("collect", "backoff", 86400, "at most 3600"),
        ("smtp", "timeout", "1.0e+300", "at most 3600"),
        ("smtp", "backoff", "1.0e+300", "at most 3600"),
        ("buttondown", "backoff", "1.0e+300", "at most 3600"),
        ("buttondown", "timeout", 7200, "at most 3600"),
        ("smtp", "max_attempts", 10**9, "at most 100"),
        ("check", "deadline", 0, "more than 0"),
        ("check", "deadline", "1.0e+12", "at most 86400"),
    ],
)
def test_settings_out_of_range_are_refused_not_clamped(tmp_path, section, key, value, words):
    error = error_of(write(tmp_path, f"{FEED}{section}:\n  {key}: {value}\n"))
    assert (error.line, error.field) == (4, f"{section}.{key}") and words in error.problem


def test_settings_in_range_are_kept(tmp_path):
    config = load_config(
        write(
            tmp_path,
            f"{FEED}collect:\n  max_attempts: 1\n  concurrency: 1\n  timeout: 0.5\n"
            f"  backoff: 0\nsmtp:\n  port: 65535\n  backoff: 0\n",
        )
    )
    assert (config.collect.max_attempts, config.collect.concurrency, config.collect.timeout) == (1, 1, 0.5)
    assert config.collect.backoff == 0 and config.warnings == ()
    assert (config.backends["smtp"].port, config.backends["smtp"].backoff) == (65535, 0)


def test_the_link_check_has_one_deadline(tmp_path):
    assert load_config(write(tmp_path, FEED)).check.deadline == 60.0
    assert load_config(write(tmp_path, f"{FEED}check:\n  deadline: 2.5\n")).check.deadline == 2.5


def test_the_retries_of_earlier_releases_are_read_with_a_deprecation_line(tmp_path):
    path = write(tmp_path, f"{FEED}collect:\n  retries: 0\n")
    config = load_config(path)
    assert config.collect.max_attempts == 1
    assert config.warnings == (
        f"{path}:4: collect.retries is deprecated: write max_attempts: 1 instead (one attempt more than retries)",
    )


@pytest.mark.parametrize(
    "url, ok",
    [
        ("https://api.buttondown.com/v1", True),
        ("http://127.0.0.1:8025/v1", True),
        ("http://[::1]:8025/v1", True),
        ("http://localhost/v1", True),
        ("http://api.buttondown.com/v1", False),
        ("http://127.0.0.1.example.com/v1", False),
        ("ftp://127.0.0.1/v1", False),
    ],
)
def test_the_buttondown_key_only_travels_over_https_or_loopback(tmp_path, monkeypatch, url, ok):
    monkeypatch.delenv("BUTTONDOWN_API_URL", raising=False)
    path = write(tmp_path, f"{FEED}buttondown:\n  api_url: '{url}'\n")
    if ok:
        assert load_config(path).backends["buttondown"].api_url == url
    else:
        error = error_of(path)
        assert (error.line, error.field) == (4, "buttondown.api_url") and "https" in error.problem
    monkeypatch.setenv("BUTTONDOWN_API_URL", url)
    path = write(tmp_path, FEED)
    if ok:
        assert load_config(path).backends["buttondown"].api_url == url
    else:
        assert str(error_of(path)).startswith("BUTTONDOWN_API_URL: must be an https URL")


def test_unreadable_config_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "folder.yaml").mkdir()
    assert str(error_of(tmp_path / "folder.yaml")) == f"{tmp_path / 'folder.yaml'}: cannot read: Is a directory"
    path = write(tmp_path, "")
    path.write_bytes(b"feeds:\n  - url: https://a.example/f\n    name: caf\xe9\n")
    error = error_of(path)
    assert error.line == 3 and "not UTF-8 text" in str(error) and "\n" not in str(error)

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(path), "open", refuse)
    assert str(error_of(path)) == f"{path}: cannot read: Permission denied"


def subscribers_error(path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        read_subscribers(path)
    return caught.value


def test_unreadable_subscribers_file_is_one_line(tmp_path, monkeypatch):
    folder = tmp_path / "subscribers.csv"
    folder.mkdir()
    assert str(subscribers_error(folder)) == f"{folder}: cannot read: Is a directory"
    path = tmp_path / "people.csv"
    path.write_bytes(b"email,name\xff\nada@example.com,Ada\n")
    error = subscribers_error(path)
    assert error.line == 1 and "not UTF-8 text" in str(error)
    path.write_bytes(b"\xef\xbb\xbfemail,name\nada@example.com,Ada\ngrace@example.com,Gr\xe2ce\n")
    error = subscribers_error(path)
    assert error.line == 3 and "not UTF-8 text" in str(error) and "\n" not in str(error)

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(path), "open", refuse)
    assert str(subscribers_error(path)) == f"{path}: cannot read: Permission denied"


def test_subscriber_names_lose_control_characters_and_addresses_with_them_are_refused(tmp_path):
    path = write(
        tmp_path,
        'email,name\nada@example.com,"Ada\r\nBcc: all@example.com"\n'
        "grace@example.com,Gr\x00ace\u202e \x7fHopper\u200b\n"
        "nul\x00@example.com,Nul\n",
        "subscribers.csv",
    )
    subscribers, problems = read_subscribers(path)
    assert [(s.email, s.name) for s in subscribers] == [
        ("ada@example.com", "Ada Bcc: all@example.com"),
        ("grace@example.com", "Gr ace Hopper"),
    ]
    assert [(p.line, p.field) for p in problems] == [(5, "email")]


def test_an_smtp_password_never_goes_unencrypted_to_another_machine(tmp_path):
    error = error_of(write(tmp_path, f"{FEED}smtp:\n  host: mail.example.com\n  security: none\n  username: ada\n"))
    assert error.field == "smtp.security" and "unencrypted" in error.problem
    local = load_config(write(tmp_path, f"{FEED}smtp:\n  host: 127.0.0.1\n  security: none\n  username: ada\n"))
    assert local.backends["smtp"].username == "ada"  # a relay on this machine


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("unsubscribe_url", "https://x.example/u", "must hold {token}"),
        ("unsubscribe_url", "https://x.example/u?t={0}&token={token}", "unknown placeholder {0}"),
        ("unsubscribe_url", "https://x.example/u?t={token", "bad pattern"),
        ("archive_url", "https://x.example/{week}/", "unknown placeholder {week}"),
        ("unsubscribe_url", "https://x.example/u?token={token:>9999999999}", "{token:>9999999999}: write the"),
        ("unsubscribe_url", "https://x.example/u?token={token}&e={email!r}", "{email!r}: write the placeholder"),
        ("archive_url", "https://x.example/{issue:.3}/", "{issue:.3}: write the placeholder alone, as {issue}"),
        ("subject", "{title:>99999999999999999999}", "is more than 200"),
        ("from", "not an address", "must be an email address"),
        ("reply_to", "editor at example.com", "must be an email address"),
        ("from", "Ünï <ü@example.com>", "ASCII local part"),
    ],
)
def test_settings_that_would_break_a_later_command_are_refused_when_read(tmp_path, key, value, words):
    text = GOOD.replace("  title: Django Digest\n", f"  title: Django Digest\n  {key}: '{value}'\n")
    error = error_of(write(tmp_path, text))
    assert error.line == 3 and error.field == f"newsletter.{key}" and words in error.problem


@pytest.mark.parametrize(
    "value, header",
    [
        ("Digest <redaktion@bücher.example>", "Digest <redaktion@xn--bcher-kva.example>"),  # IDNA, as mail needs
        ("Dj\u202eango \u2066Digest <d@example.com>", "Django Digest <d@example.com>"),  # no bidi controls
        ('"Zoë, \\"the\\" editor" <z@example.com>', '"Zoë, \\"the\\" editor" <z@example.com>'),  # quoted as needed
    ],
)
def test_the_sender_is_kept_in_a_form_a_mail_header_carries(tmp_path, value, header):
    text = GOOD.replace("  title: Django Digest\n", f"  title: Django Digest\n  from: '{value}'\n")
    assert load_config(write(tmp_path, text)).newsletter.from_address == header


@pytest.mark.parametrize("week", ["9999-W52", "0001-W01", "1969-W52"])
def test_weeks_far_from_now_are_refused_in_one_line(tmp_path, run_cli, week):
    write(tmp_path, GOOD)
    code, _, err = run_cli("build", "--week", week, cwd=tmp_path)
    assert code == 2 and err.startswith("error: --week: ") and "between 1970 and 2999" in err


@pytest.mark.parametrize("folder", [".", "..", "./"])
def test_a_publish_folder_that_holds_the_newsletter_itself_is_refused(tmp_path, folder):
    path = tmp_path / "feeds.yaml"
    path.write_text(
        "newsletter:\n  site_url: https://news.example.com/\n"
        f'feeds:\n  - url: https://a.example/feed\npublish:\n  dir: "{folder}"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}:6: publish.dir: must be a folder of its own")


def test_the_web_side_needs_site_url_and_gives_the_links_their_defaults(tmp_path):
    path = tmp_path / "feeds.yaml"
    path.write_text("feeds:\n  - url: https://a.example/feed\nserve: {}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "serve: needs newsletter.site_url" in str(error.value)
    path.write_text(
        "newsletter:\n  site_url: https://news.example.com/letters\nfeeds:\n  - url: https://a.example/feed\n"
        "serve: {}\n",
        encoding="utf-8",
    )
    newsletter = load_config(path).newsletter
    assert newsletter.site_url == "https://news.example.com/letters/"
    assert newsletter.archive_url == "https://news.example.com/letters/issues/{issue}/"
    assert newsletter.unsubscribe_url == "https://news.example.com/letters/unsubscribe?token={token}"


@pytest.mark.parametrize(
    ("settings", "field", "words"),
    [
        ("  approval: maybe\n", "newsletter.approval", "must be none or required"),
        ("  approval: required\n", "newsletter.approval", "list the editors"),
        ("  approval: required\n  editors: [not-an-address]\n", "newsletter.editors", "not an address"),
        ("  approval_deadline: someday 17:00\n", "newsletter.approval_deadline", "a weekday and a time"),
        ("  approval_deadline: friday 25:00\n", "newsletter.approval_deadline", "a weekday and a time"),
    ],
)
def test_approval_settings_are_checked(tmp_path, settings, field, words):
    text = "newsletter:\n" + settings + "feeds:\n  - url: https://a.example/feed\n"
    error = error_of(write(tmp_path, text))
    assert f" {field}: " in str(error) and words in str(error)


def test_approval_settings_are_read(tmp_path):
    text = (
        "newsletter:\n  approval: required\n  editors: [ed@example.com, jo@example.com]\n"
        "  approval_deadline: Friday 17:30\nfeeds:\n  - url: https://a.example/feed\n"
    )
    newsletter = load_config(write(tmp_path, text)).newsletter
    assert newsletter.editors == ("ed@example.com", "jo@example.com")
    assert newsletter.approval_deadline is not None and newsletter.approval_deadline[0] == 4
    assert str(newsletter.approval_deadline[1]) == "17:30:00"


def test_the_settings_alone_read_no_backend_section(tmp_path):
    """digest.settings knows no backend: without the registry a backend's section (and any key outside digest's
    own sections) is left unread; digest.load_config passes the registry, and refuses a bad or unknown one."""
    from digest.settings import config as settings_config

    bad_port, unknown = f"{FEED}smtp:\n  port: 0\nbuttondown: {{}}\n", f"{FEED}zz_unknown: 1\n"
    for text in (bad_port, unknown):
        config = settings_config.load_config(write(tmp_path, text))
        assert config.backends == {} and config.feeds[0].url == "https://a.example/feed"
    assert error_of(write(tmp_path, bad_port)).field == "smtp.port"
    assert error_of(write(tmp_path, unknown)).field == "zz_unknown"
