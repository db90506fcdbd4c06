"""A server digest cannot reach is one line naming the setting to change; a test copy says so at once."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from helpers.buttondown import Answer
from helpers.loopback import LoopbackServer, QuietHandler
from helpers.project import SECRET, WEEK, issue_row, ledger, make_project, subscribers
from helpers.smtp import Behaviour, SmtpServer, self_signed_certificate

# retries as cron's send would have them: a test copy must not wait for any of them
PATIENT = {"max_attempts": 5, "backoff": 5}


@pytest.fixture(autouse=True)
def secret(monkeypatch):
    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", SECRET)
    for name in ("DIGEST_SMTP_PASSWORD", "DIGEST_SMTP_PASSWORD_FILE", "BUTTONDOWN_API_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: bound, then closed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections (the kernel's backlog) and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def test_resolving_an_invalid_name_here_fails_at_once():
    """The tests below use nosuchhost.invalid: they must not wait on a resolver (this machine has no network)."""
    started = time.monotonic()
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("nosuchhost.invalid", 25)
    assert time.monotonic() - started < 2


def refused_line(port: int) -> str:
    where = f"smtp.port {port} on 127.0.0.1"
    return f"{where}: nothing listens (connection refused); set smtp.host and smtp.port in feeds.yaml"


def test_a_test_copy_to_a_closed_port_names_the_setting_at_once(tmp_path, run_cli, closed_port):
    make_project(tmp_path, closed_port, subscribers(2), smtp=PATIENT)
    started = time.monotonic()
    code, out, err = run_cli("send", "--week", WEEK, "--to", "you@example.com", cwd=tmp_path)
    assert (code, out, err) == (1, "", f"error: {refused_line(closed_port)}\n")
    assert time.monotonic() - started < 3  # no backoff: a person at a terminal is testing the setup
    assert not ledger(tmp_path) and issue_row(tmp_path) is None


def test_a_full_send_to_a_closed_port_keeps_its_retries_and_ends_naming_the_setting(tmp_path, run_cli, closed_port):
    make_project(tmp_path, closed_port, subscribers(2))  # max_attempts 3, backoff 0.01
    code, out, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    assert code == 75 and not err
    assert out.splitlines()[-1] == (
        f"  nothing was delivered, {WEEK} is a draft again; run again later. Last error: {refused_line(closed_port)}"
    )
    assert all(row["attempts"] == 3 for row in ledger(tmp_path).values())  # the relay may be restarting
    assert issue_row(tmp_path)["status"] == "draft"


def test_a_host_that_does_not_resolve_names_smtp_host(tmp_path, run_cli):
    make_project(tmp_path, 587, subscribers(1), smtp={"host": "nosuchhost.invalid", **PATIENT})
    code, out, err = run_cli("send", "--week", WEEK, "--to", "you@example.com", cwd=tmp_path)
    assert (code, out) == (1, "")
    assert err == "error: smtp.host nosuchhost.invalid: no such host (DNS); set smtp.host in feeds.yaml\n"


def test_a_server_that_never_answers_names_smtp_timeout(tmp_path, run_cli, silent_port):
    make_project(tmp_path, silent_port, subscribers(1), smtp={"timeout": 0.3, **PATIENT})
    code, out, err = run_cli("send", "--week", WEEK, "--to", "you@example.com", cwd=tmp_path)
    assert (code, out) == (1, "")
    assert err == (
        f"error: 127.0.0.1 port {silent_port}: no answer within smtp.timeout (0.3 s); check smtp.host and "
        f"smtp.port in feeds.yaml, or raise smtp.timeout\n"
    )


@pytest.mark.parametrize(
    "security, server_tls, words",
    [
        ("ssl", False, "is smtp.security right for this port?"),
        ("starttls", True, "set security: ssl for this port"),
        ("none", True, "set security: ssl for this port"),
    ],
)
def test_a_test_copy_with_the_wrong_tls_names_smtp_security(tmp_path, run_cli, security, server_tls, words):
    context = None
    if server_tls:
        cert, key = self_signed_certificate(tmp_path)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
    server = SmtpServer(tls=context, implicit_tls=server_tls).start()
    try:
        make_project(tmp_path, server.port, subscribers(1), smtp={"security": security, "timeout": 1, **PATIENT})
        code, out, err = run_cli("send", "--week", WEEK, "--to", "you@example.com", cwd=tmp_path)
    finally:
        server.stop()
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert "smtp.security" in err and words in err and not server.messages


# --- Buttondown --------------------------------------------------------------------------------------------


class _NotFoundPage(QuietHandler):
    """Some other web server: every path is a 404 HTML page."""

    def _page(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"<!DOCTYPE HTML>\n<html><head><title>Error response</title></head><body>404 Not Found</body></html>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html;charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = _page


@pytest.fixture
def web_server() -> Iterator[LoopbackServer]:
    server = LoopbackServer(_NotFoundPage).start()
    yield server
    server.stop()


def buttondown_project(tmp_path, api_url: str):
    settings = {"api_url": api_url, "timeout": 0.5, "max_attempts": 2, "backoff": 0.01}
    make_project(tmp_path, 2525, subscribers(2), buttondown=settings)


def send_buttondown(run_cli, tmp_path):
    return run_cli("send", "--week", WEEK, "--backend", "buttondown", "--yes", cwd=tmp_path)


def test_buttondown_unreachable_names_api_url(tmp_path, api, run_cli, closed_port):
    url = f"http://127.0.0.1:{closed_port}/v1"
    buttondown_project(tmp_path, url)
    code, out, err = send_buttondown(run_cli, tmp_path)
    assert (code, out) == (1, "")
    assert err == (
        f"error: Buttondown: POST /emails failed 2 times, last: nothing listens at {url} (connection refused); "
        f"check buttondown.api_url in feeds.yaml\n"
    )


def test_buttondown_at_a_name_that_does_not_resolve_names_the_variable_that_set_it(tmp_path, api, run_cli, monkeypatch):
    buttondown_project(tmp_path, api.url)
    monkeypatch.setenv("BUTTONDOWN_API_URL", "https://nosuchhost.invalid/v1")
    code, out, err = send_buttondown(run_cli, tmp_path)
    assert (code, out) == (1, "") and not api.requests
    assert err.endswith(
        "last: no such host at https://nosuchhost.invalid/v1 (DNS); check BUTTONDOWN_API_URL in the environment\n"
    )


def test_buttondown_that_never_answers_names_its_timeout(tmp_path, api, run_cli):
    buttondown_project(tmp_path, api.url)
    api.slow = 1.0
    code, out, err = send_buttondown(run_cli, tmp_path)
    assert (code, out) == (1, "")
    assert err.endswith(
        f"last: no answer from {api.url} within buttondown.timeout (0.5 s); check buttondown.api_url in "
        f"feeds.yaml, or raise buttondown.timeout\n"
    )


@pytest.mark.parametrize("from_environment", [False, True])
def test_a_buttondown_url_that_reaches_another_web_server_names_the_setting(
    tmp_path, api, run_cli, monkeypatch, web_server, from_environment
):
    url = f"{web_server.base}/"
    if from_environment:
        buttondown_project(tmp_path, api.url)
        monkeypatch.setenv("BUTTONDOWN_API_URL", url)
    else:
        buttondown_project(tmp_path, url)
    code, out, err = send_buttondown(run_cli, tmp_path)
    setting = "BUTTONDOWN_API_URL in the environment" if from_environment else "buttondown.api_url in feeds.yaml"
    assert (code, out) == (1, "") and not api.requests
    assert err == (
        f"error: Buttondown: {url} does not look like Buttondown's API (POST /emails answered 404 with an HTML "
        f"page, not JSON); check {setting}\n"
    )
    assert issue_row(tmp_path)["status"] == "draft"  # refused for good: the next run starts afresh


def test_buttondown_refusing_the_key_names_buttondown_api_key(tmp_path, api, run_cli):
    buttondown_project(tmp_path, api.url)
    api.script = [Answer(401, {"code": "invalid", "detail": "Invalid token."})]
    code, out, err = send_buttondown(run_cli, tmp_path)
    assert (code, out) == (1, "")
    assert err == (
        "error: Buttondown refused POST /emails: 401 Invalid token. (check BUTTONDOWN_API_KEY: the API key "
        "from Buttondown's settings)\n"
    )


def test_a_certificate_for_another_name_names_smtp_host(tmp_path, run_cli, monkeypatch):
    cert, key = self_signed_certificate(tmp_path)  # for 127.0.0.1 only
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted: only the name is wrong
    server = SmtpServer(tls=context, implicit_tls=True).start()
    try:
        make_project(tmp_path, server.port, subscribers(1), smtp={"host": "localhost", "security": "ssl"})
        code, out, err = run_cli("send", "--week", WEEK, "--to", "you@example.com", cwd=tmp_path)
    finally:
        server.stop()
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert err.startswith(f"error: TLS to localhost:{server.port}: Hostname mismatch")
    assert err.endswith("set smtp.host to a name the server's certificate is for\n")


def test_a_refused_login_names_the_username_and_the_password_variable(tmp_path, run_cli, monkeypatch):
    server = SmtpServer(Behaviour(refuse_login=True)).start()
    monkeypatch.setenv("DIGEST_SMTP_PASSWORD", "a-password-of-some-length")
    try:
        make_project(tmp_path, server.port, subscribers(1), smtp={"username": "digest-user"})
        code, out, err = run_cli("send", "--week", WEEK, "--to", "you@example.com", cwd=tmp_path)
    finally:
        server.stop()
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert err.startswith(f"error: SMTP login as 'digest-user' at 127.0.0.1:{server.port} refused: 535")
    assert err.endswith("; check smtp.username and DIGEST_SMTP_PASSWORD\n")


# --- feeds ---------------------------------------------------------------------------------------------------


def test_a_feed_nothing_listens_for_says_so_in_plain_words(tmp_path, run_cli, closed_port):
    url = f"http://127.0.0.1:{closed_port}/feed.xml"
    feeds = [{"name": "Closed", "url": url, "section": "News", "private": True}]
    make_project(tmp_path, 2525, [], feeds=feeds, sections={"collect": {"max_attempts": 1}})
    code, out, err = run_cli("collect", cwd=tmp_path)
    assert code == 1
    assert f"failed: Closed ({url}): cannot connect: nothing listens there (connection refused)" in out + err


def test_a_resolver_that_says_try_again_is_not_told_as_no_such_host(tmp_path, run_cli, monkeypatch):
    def resolver_down(*args, **kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", resolver_down)
    make_project(tmp_path, 587, subscribers(1), smtp={"host": "mail.example.com", **PATIENT})
    code, out, err = run_cli("send", "--week", WEEK, "--to", "you@example.com", cwd=tmp_path)
    assert (code, out) == (1, "")
    assert err == (
        "error: smtp.host mail.example.com: the name could not be looked up (DNS); check the network and smtp.host\n"
    )


def test_a_cycle_of_contexts_ends_the_search_for_a_cause():
    from digest.retry import connection_failure

    first, second = ValueError("a"), KeyError("b")
    first.__context__, second.__context__ = second, first
    assert connection_failure(first) is None
