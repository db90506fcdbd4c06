"""Secrets taken out of output without mangling it, and one minimum length for the secret that signs links."""

from __future__ import annotations

import pytest

from digest import credentials, load_config
from digest.credentials import env_secret, redact, redact_printed, remember_secret
from digest.errors import SetupError
from digest.send.unsubscribe import UnsubscribeLinks

from helpers.project import SECRET, WEEK, issue_row, ledger, make_project, subscribers
from helpers.smtp import Behaviour, SmtpServer

MAKE_ONE = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


@pytest.fixture(autouse=True)
def forget_secrets(monkeypatch):
    """Each test starts with no secret remembered, and leaves none behind for the tests after it."""
    monkeypatch.setattr(credentials, "_SECRETS", {})
    for name in ("DIGEST_SMTP_PASSWORD", "DIGEST_SMTP_PASSWORD_FILE", "DIGEST_UNSUBSCRIBE_SECRET_FILE", "R1_SECRET"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    "text",
    [
        "wrote 3 files to /tmp/digest-demo-x1y2/drafts",
        "mailed demo@example.com",
        "C:\\Users\\demo\\digest",
        "the demonstration went well",
        "feeds/demo.yaml: 3 feeds",
    ],
)
def test_a_short_secret_is_not_taken_out_of_paths_words_and_addresses(text):
    remember_secret("demo")
    assert redact(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "535 authentication failed for user digest with password demo",
        "535 auth failed for b'demo'",
        '{"detail": "bad credentials demo"}',
        "login refused: demo.",
        "GET /x?p=demo&q=1",
    ],
)
def test_a_short_secret_standing_alone_in_an_echo_is_taken_out(text):
    remember_secret("demo")
    assert "demo" not in redact(text) and "[redacted]" in redact(text)


def test_a_secret_of_a_real_secrets_length_is_taken_out_wherever_it_is():
    secret = "Zq9x-long-random-secret-42"
    remember_secret(secret)
    text = f"GET /unsubscribe/{secret}/confirm and /tmp/x{secret}y"
    assert secret not in redact(text) and redact(text).count("[redacted]") == 2


def test_a_short_smtp_password_echoed_by_the_server_is_taken_out_but_not_out_of_paths(monkeypatch):
    from digest.send.smtp_transport import SmtpSettings, smtp_password

    monkeypatch.setenv("DIGEST_SMTP_PASSWORD", "short")
    assert smtp_password(SmtpSettings(username="ada")) == "short"
    assert redact("535 5.7.8 auth failed: user=ada pass=short") == "535 5.7.8 auth failed: user=ada pass=[redacted]"
    assert redact("error: smtp.port is too short-lived, see /srv/short-term/x") == (
        "error: smtp.port is too short-lived, see /srv/short-term/x"
    )


@pytest.mark.parametrize("secret", ["demo", "short", "s" * 15])
def test_a_too_short_unsubscribe_secret_is_refused_and_never_remembered(tmp_path, monkeypatch, secret):
    config = load_config(make_project(tmp_path, 2525, subscribers(1)))
    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", secret)
    with pytest.raises(SetupError) as refused:
        UnsubscribeLinks.for_newsletter(config.newsletter)
    message = str(refused.value)
    assert message.startswith(f"DIGEST_UNSUBSCRIBE_SECRET is too short (16 characters needed, it has {len(secret)})")
    assert MAKE_ONE in message and "\n" not in message
    assert redact(f"is too short, /tmp/digest-{secret}-x") == f"is too short, /tmp/digest-{secret}-x"


def test_a_secret_of_16_characters_signs(tmp_path, monkeypatch):
    config = load_config(make_project(tmp_path, 2525, subscribers(1)))
    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", "abcdefgh-1234567")
    assert UnsubscribeLinks.for_newsletter(config.newsletter).secret == "abcdefgh-1234567"


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        (" " * 16, "a space or a line break at its start or end"),
        ("a" * 16, "8 different characters needed, it has 1"),
        ("abababababababab12", "8 different characters needed, it has 4"),
        (" abcdefgh-12345678", "a space or a line break at its start or end"),
        ("abcdefgh-12345678\t", "a space or a line break at its start or end"),
    ],
)
def test_a_signing_secret_of_one_repeated_character_or_with_spaces_around_is_refused(
    tmp_path, monkeypatch, secret, why
):
    config = load_config(make_project(tmp_path, 2525, subscribers(1)))
    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", secret)
    with pytest.raises(SetupError) as refused:
        UnsubscribeLinks.for_newsletter(config.newsletter)
    message = str(refused.value)
    assert message.startswith("DIGEST_UNSUBSCRIBE_SECRET is too simple (") and why in message
    assert MAKE_ONE in message and "\n" not in message and (secret.strip() or "\n") not in message


def test_a_secret_and_its_file_both_set_are_refused_in_one_line(tmp_path, run_cli, monkeypatch):
    make_project(tmp_path, 2525, subscribers(1))
    secret_file = tmp_path / "secret"
    secret_file.write_text("a-long-random-secret-from-the-file\n")
    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", "demo")
    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET_FILE", str(secret_file))
    code, out, err = run_cli("unsubscribe", "2.c29tZXRva2Vu.abc", cwd=tmp_path)
    assert (code, out) == (2, "")
    assert err == "error: set DIGEST_UNSUBSCRIBE_SECRET or DIGEST_UNSUBSCRIBE_SECRET_FILE, not both\n"


# --- a short password: taken out where outside text enters, never out of digest's own lines -----------------


def test_a_short_secret_is_taken_out_of_echoes_but_not_out_of_what_digest_prints(monkeypatch):
    monkeypatch.setenv("R1_SECRET", "feeds")
    assert env_secret("R1_SECRET") == "feeds"
    assert redact("535 no user ada with password feeds") == "535 no user ada with password [redacted]"
    assert redact_printed("1 feeds in 0.1 s: 1 ok") == "1 feeds in 0.1 s: 1 ok"
    assert redact_printed("https://ada:feeds@example.com/ Authorization: Token x") == (
        "https://[redacted]@example.com/ Authorization: [redacted]"
    )


def test_a_long_secret_is_taken_out_of_what_digest_prints_too(monkeypatch):
    monkeypatch.setenv("R1_SECRET", "Zq9x-long-random-secret-42")
    env_secret("R1_SECRET")
    assert redact_printed("wrote /tmp/Zq9x-long-random-secret-42/x") == "wrote /tmp/[redacted]/x"


@pytest.mark.parametrize("secret", ["a", "pw", "x7!"])
def test_a_secret_of_one_to_three_characters_is_taken_out_of_an_echo_as_a_whole_token(monkeypatch, secret):
    monkeypatch.setenv("R1_SECRET", secret)
    env_secret("R1_SECRET")
    assert redact(f"535 5.7.8 no user ada with password {secret}") == "535 5.7.8 no user ada with password [redacted]"
    assert redact(f"535 auth failed for b'{secret}'") == "535 auth failed for b'[redacted]'"
    untouched = f"see /tmp/{secret}x/y, {secret}bc, x{secret}, {secret}-1 and {secret}.txt"
    assert redact(untouched) == untouched


@pytest.mark.usefixtures("project")
def test_a_password_that_is_a_word_leaves_the_run_report_alone(tmp_path, server, run_cli, monkeypatch):
    monkeypatch.setenv("DIGEST_SMTP_PASSWORD", "feeds")
    code, out, err = run_cli("run", "--yes", cwd=tmp_path)
    assert code == 0 and "[redacted]" not in out + err and " feeds in " in out


def test_a_password_that_is_a_word_leaves_the_unreachable_server_line_alone(tmp_path, run_cli, monkeypatch):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    make_project(tmp_path, port, subscribers(1), smtp={"max_attempts": 1, "backoff": 0})
    monkeypatch.setenv("DIGEST_SMTP_PASSWORD", "nothing")
    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", SECRET)
    code, out, err = run_cli("send", "--week", WEEK, "--to", "you@example.com", cwd=tmp_path)
    assert code != 0 and "[redacted]" not in out + err
    assert f"smtp.port {port} on 127.0.0.1: nothing listens" in err


@pytest.mark.parametrize("password", ["pw", "hunter"])
def test_a_short_password_echoed_by_the_server_is_still_taken_out(tmp_path, run_cli, monkeypatch, password):
    server = SmtpServer(Behaviour(refuse_login=True, echo_login=True)).start()
    try:
        make_project(tmp_path, server.port, subscribers(2), smtp={"username": "digest-user"})
        monkeypatch.setenv("DIGEST_SMTP_PASSWORD", password)
        monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", SECRET)
        code, out, err = run_cli("send", "--week", WEEK, "--to", "you@example.com", cwd=tmp_path)
    finally:
        server.stop()
    assert code == 1 and f"password {password}" not in out + err and "password [redacted]" in err


def test_send_refuses_a_secret_serve_would_refuse_before_sending_anything(tmp_path, server, run_cli, monkeypatch):
    make_project(tmp_path, server.port, subscribers(2))
    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", "demo")
    for command in (["send", "--week", WEEK, "--yes"], ["send", "--week", WEEK, "--to", "you@example.com"]):
        code, out, err = run_cli(*command, cwd=tmp_path)
        assert code == 2 and not out and err.count("\n") == 1
        assert err.startswith("error: DIGEST_UNSUBSCRIBE_SECRET is too short (16 characters needed, it has 4)")
        assert MAKE_ONE in err
    assert not server.messages and not ledger(tmp_path) and issue_row(tmp_path) is None


def test_serve_says_the_secret_is_too_short_in_plain_words(tmp_path, server, run_cli, monkeypatch):
    make_project(
        tmp_path, server.port, [], site_url="http://127.0.0.1:1/", unsubscribe_url=None, sections={"serve": {}}
    )
    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", "short")
    code, out, err = run_cli("serve", "--port", "1", cwd=tmp_path)
    assert code == 2 and not out
    assert err == (
        "error: DIGEST_UNSUBSCRIBE_SECRET is too short (16 characters needed, it has 5): it signs the confirmation and "
        f"unsubscribe links; make one with {MAKE_ONE}\n"
    )


@pytest.mark.usefixtures("project")
def test_run_refuses_a_too_short_secret_and_mails_nobody(tmp_path, server, run_cli, monkeypatch):
    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", "demo")
    code, out, err = run_cli("run", "--yes", cwd=tmp_path)
    assert code == 2 and not out and err.count("\n") == 1  # refused before collecting
    assert err.startswith("error: DIGEST_UNSUBSCRIBE_SECRET is too short (16 characters needed, it has 4)")
    assert not server.messages


def test_unsubscribe_by_token_refuses_a_secret_serve_would_refuse(tmp_path, run_cli, monkeypatch):
    make_project(tmp_path, 2525, subscribers(1))
    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", "demo")
    code, out, err = run_cli("unsubscribe", "2.c29tZXRva2Vu.abc", cwd=tmp_path)
    assert code == 2 and not out
    assert err.startswith("error: DIGEST_UNSUBSCRIBE_SECRET is too short (16 characters needed, it has 4)")
