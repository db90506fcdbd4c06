"""`digest check`: placeholders, summaries, items already sent, and the issue's links fetched from a loopback
site (200, 404, a redirect to the home page, a redirect chain, a timeout, a TLS failure); `send` refuses on
errors unless --force."""

from __future__ import annotations

import http.server
import json
import ssl
import threading

import pytest
import yaml

from digest import store
from digest.issue.draft import draft_path, read_draft, write_draft
from digest.models import DraftItem

from helpers.feeds import FeedServer, Route
from helpers.project import WEEK, make_project
from helpers.smtp import self_signed_certificate


@pytest.fixture(autouse=True)
def secret(monkeypatch):
    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", "a-long-random-secret-for-the-tests")


def edit_draft(tmp_path, issue: str = WEEK, **changes):
    path = draft_path(tmp_path / "drafts", issue)
    draft = read_draft(path)
    for name, value in changes.items():
        setattr(draft, name, value)
    write_draft(path, draft)
    return draft


def set_check(tmp_path, **settings) -> None:
    config = tmp_path / "feeds.yaml"
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["check"] = settings
    config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def test_placeholders_are_errors_and_missing_words_are_warnings(tmp_path, server, run_cli):
    make_project(tmp_path, server.port, [], items=2)
    draft = read_draft(draft_path(tmp_path / "drafts", WEEK))
    draft.items[0].summary = "Write this TODO"
    draft.items[1].summary = ""
    edit_draft(tmp_path, intro="", subject="A subject that goes on and on " * 3, sections=draft.sections)
    code, out, _ = run_cli("check", "--week", WEEK, cwd=tmp_path)
    assert code == 1
    lines = out.splitlines()
    assert any(line.startswith("error: News #1 ") and line.endswith("a placeholder is left: TODO") for line in lines)
    assert "warning: intro: empty" in lines
    assert any(line.startswith("warning: News #2 ") and line.endswith("no summary") for line in lines)
    assert "warning: subject: 90 characters: inboxes cut it past 78" in lines
    assert lines[-1].startswith(f"check {WEEK}: 1 error(s), 3 warning(s); links not checked in ")
    code, out, _ = run_cli("check", "--week", WEEK, "--json", cwd=tmp_path)
    assert json.loads(out)["errors"] == 1
    code, _, err = run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)
    assert code == 1 and err.startswith(f"error: {WEEK}: 1 error(s) found by the checks: News #1 ")
    assert "add --force to send it as it is" in err and not server.messages


def test_an_item_sent_in_an_earlier_issue_is_an_error_even_behind_tracking_and_http(tmp_path, server, run_cli):
    make_project(tmp_path, server.port, [{"email": "ada@example.com", "name": "", "status": "active"}], items=2)
    assert run_cli("send", "--week", WEEK, "--yes", cwd=tmp_path)[0] == 0
    draft = read_draft(draft_path(tmp_path / "drafts", WEEK))
    draft.issue = "2026-W15"
    draft.sections[0].items = [
        DraftItem(title="Again", url="http://blog.example.com/0?utm_source=x", summary="Seen before."),
        DraftItem(title="New", url="https://blog.example.com/new", summary="Never sent."),
    ]
    write_draft(draft_path(tmp_path / "drafts", "2026-W15"), draft)
    code, out, _ = run_cli("check", "--week", "2026-W15", cwd=tmp_path)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert code == 1 and errors == [
        f"error: News #1 “Again”: already sent in {WEEK}: http://blog.example.com/0?utm_source=x"
    ]
    assert run_cli("send", "--week", "2026-W15", "--yes", cwd=tmp_path)[0] == 1
    code, _, err = run_cli("send", "--week", "2026-W15", "--yes", "--force", cwd=tmp_path)
    assert code == 0, err
    assert [message.rcpt for message in server.messages] == ["ada@example.com", "ada@example.com"]


class _TlsServer:
    """An HTTPS server whose certificate nobody trusts (self-signed): a TLS failure for the link checker."""

    def __init__(self, directory):
        cert, key = self_signed_certificate(directory)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}/page"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_links_are_fetched_judged_and_remembered_for_a_day(tmp_path, server, run_cli):
    site = FeedServer().start()
    tls = _TlsServer(tmp_path)
    try:
        html = {"Content-Type": "text/html"}
        site.routes.update(
            {
                "/": Route(b"home", headers=html),
                "/ok": Route(b"fine", headers=html),
                "/gone": Route(b"no", status=404, headers=html),
                "/moved": Route(status=301, headers={"Location": site.url("/")}),
                "/chain": Route(status=302, headers={"Location": site.url("/chain2")}),
                "/chain2": Route(status=302, headers={"Location": site.url("/ok")}),
                "/slow": Route(b"late", delay=3, headers=html),
            }
        )
        make_project(tmp_path, server.port, [], items=0)
        draft = read_draft(draft_path(tmp_path / "drafts", WEEK))
        draft.sections[0].items = [
            DraftItem(title=path, url=site.url(path), summary="s") for path in ("/ok", "/gone", "/moved", "/chain")
        ] + [
            DraftItem(title="slow", url=site.url("/slow"), summary="s"),
            DraftItem(title="tls", url=tls.url, summary="s"),
        ]
        write_draft(draft_path(tmp_path / "drafts", WEEK), draft)
        edit_draft(tmp_path, intro=f"Read {site.url('/ok')}.")
        set_check(tmp_path, links=True, private=True, timeout=1)
        code, out, _ = run_cli("check", "--week", WEEK, cwd=tmp_path)
        findings = [line for line in out.splitlines() if line.startswith(("error", "warning"))]
        assert code == 1
        assert findings[0] == f"error: News #2 “/gone”: {site.url('/gone')} answers 404"
        assert findings[1] == (
            f"warning: News #3 “/moved”: {site.url('/moved')} redirects to the site's home page ({site.url('/')})"
        )
        assert findings[2] == f"warning: News #5 “slow”: {site.url('/slow')}: no answer within 1 s"
        assert findings[3].startswith(f"warning: News #6 “tls”: {tls.url}: TLS: ") and "CERTIFICATE" in findings[3]
        assert len(findings) == 4  # /ok, the /chain to it, and the intro's link to it are fine
        assert out.splitlines()[-1].startswith(f"check {WEEK}: 1 error(s), 3 warning(s); 6 links (6 fetched now)")
        assert ("/ok", "HEAD") not in site.requests  # the loopback site answers HEAD 501: GET was used

        good = [path for path, _ in site.requests if path in ("/ok", "/moved", "/chain", "/chain2", "/")]
        code, out, _ = run_cli("check", "--week", WEEK, cwd=tmp_path)
        assert code == 1 and "6 links (3 fetched now)" in out.splitlines()[-1]  # the failures are asked again
        assert [path for path, _ in site.requests if path in ("/ok", "/moved", "/chain", "/chain2", "/")] == good
        db = store.open_db(tmp_path / "digest.db")
        db.execute("UPDATE link_checks SET checked_at = '2020-01-01T00:00:00+00:00'")  # a day old and more
        code, out, _ = run_cli("check", "--week", WEEK, cwd=tmp_path)
        assert "6 links (6 fetched now)" in out.splitlines()[-1]
    finally:
        site.stop()
        tls.stop()


def test_malformed_and_unknown_hosts_are_that_links_finding_not_a_crash(tmp_path, server, run_cli):
    make_project(tmp_path, server.port, [], items=0)
    draft = read_draft(draft_path(tmp_path / "drafts", WEEK))
    draft.sections[0].items = [
        DraftItem(title="typo", url="https://www.djangoproject..com/weblog/", summary="s"),
        DraftItem(title="gone", url="https://no-such-host.invalid/post", summary="s"),
        DraftItem(title="Building TODO apps with Python/TK", url=None, summary="TODO: link"),
    ]
    draft.intro = "See http://[::1 soon, and (https://en.wikipedia.org/wiki/Django_(web_framework))."
    write_draft(draft_path(tmp_path / "drafts", WEEK), draft)
    set_check(tmp_path, links=True, timeout=2)
    _, out, err = run_cli("check", "--week", WEEK, cwd=tmp_path)
    assert "Traceback" not in out + err
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert any("djangoproject..com" in line and "cannot resolve" in line for line in errors), out
    assert any("no-such-host.invalid" in line and "cannot resolve" in line for line in errors), out
    placeholders = [line for line in errors if "placeholder" in line]
    assert placeholders == ["error: News #3 “Building TODO apps with Python/TK”: a placeholder is left: TODO"]
    assert "https://en.wikipedia.org/wiki/Django_(web_framework):" in out or "(web_framework)" in out
    assert "[::1" not in out  # not an address: never fetched, not reported as a link


def test_links_to_this_machine_are_not_fetched_unless_allowed(tmp_path, server, run_cli):
    site = FeedServer().start()
    try:
        site.routes["/ok"] = Route(b"fine")
        make_project(tmp_path, server.port, [], items=0)
        draft = read_draft(draft_path(tmp_path / "drafts", WEEK))
        draft.sections[0].items = [DraftItem(title="internal", url=site.url("/ok"), summary="s")]
        write_draft(draft_path(tmp_path / "drafts", WEEK), draft)
        set_check(tmp_path, links=True)
        code, out, _ = run_cli("check", "--week", WEEK, cwd=tmp_path)
        assert (
            code == 0
            and (
                "cannot connect: refused to connect: 127.0.0.1 is 127.0.0.1, a loopback or private address "
                "(check.private: true fetches such links)"
            )
            in out
        )
        assert not site.requests
    finally:
        site.stop()


def test_what_an_earlier_email_held_counts_as_sent_and_what_its_draft_held_back_does_not(tmp_path, server, run_cli):
    from digest.issue.draft import dump_draft

    make_project(tmp_path, server.port, [], items=0)
    earlier = read_draft(draft_path(tmp_path / "drafts", WEEK))
    earlier.issue = "2026-W13"
    earlier.sections[0].items = [DraftItem(title="Went out", url="https://blog.example.com/went-out", summary="s")]
    earlier.sections[0].stale = [DraftItem(title="Held back", url="https://blog.example.com/held", summary="s")]
    db = store.open_db(tmp_path / "digest.db")
    for status, remote in (("sent", None), ("sending", "em_123")):  # the second: handed to Buttondown
        issue = earlier.issue = "2026-W13" if status == "sent" else "2026-W12"
        db.execute(
            "INSERT INTO issues (id, status, remote_id, created_at, sent_draft) VALUES (?, ?, ?, ?, ?)",
            [issue, status, remote, "2026-03-27T00:00:00+00:00", dump_draft(earlier).replace("went-out", issue)],
        )
    draft = read_draft(draft_path(tmp_path / "drafts", WEEK))
    draft.sections[0].items = [
        DraftItem(title=title, url=f"https://blog.example.com/{path}", summary="s")
        for title, path in (("Again", "2026-W13"), ("Via Buttondown", "2026-W12"), ("Was held", "held"))
    ]
    write_draft(draft_path(tmp_path / "drafts", WEEK), draft)
    _, out, _ = run_cli("check", "--week", WEEK, "--no-links", cwd=tmp_path)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: News #1 “Again”: already sent in 2026-W13: https://blog.example.com/2026-W13",
        "error: News #2 “Via Buttondown”: already sent in 2026-W12: https://blog.example.com/2026-W12",
    ]


def test_the_size_checks_count_the_longest_token_send_makes():
    """The issue stage counts an unsubscribe link by TOKEN_CHARS; send makes the tokens: they must agree."""
    from digest.issue.unsubscribe_link import LONGEST_ADDRESS, TOKEN_CHARS
    from digest.send.unsubscribe import make_token

    assert len(make_token("size", "", LONGEST_ADDRESS)) == TOKEN_CHARS


def test_the_starter_placeholders_are_noted_sender_and_example_readers(tmp_path, server, run_cli):
    """RFC 2606's example domains receive no mail: a sender there gets no reply, readers there no issue. Told by
    check as notes, not counted as the issue's warnings (the tests and the demo use example.com on purpose)."""
    people = [
        {"email": "ada@example.com", "name": "", "status": "active"},
        {"email": "grace@sub.example.org", "name": "", "status": "active"},
        {"email": "me@real.test.digest.dev", "name": "", "status": "active"},
    ]
    make_project(tmp_path, server.port, people, items=1)
    code, out, _ = run_cli("check", "--week", WEEK, cwd=tmp_path)
    lines = out.splitlines()
    assert code == 0 and lines[-1].startswith(f"check {WEEK}: 0 error(s), 0 warning(s);")
    assert (
        "note: from: digest@example.com is a placeholder (example.com is reserved: no mail arrives there, "
        "no one can reply): set newsletter.from in feeds.yaml" in lines
    )
    assert (
        "note: subscribers: 2 of subscribers.csv's addresses are at example domains (example.com, .org, .net "
        "receive no mail): put your readers in subscribers.csv" in lines
    )
    report = json.loads(run_cli("check", "--week", WEEK, "--json", cwd=tmp_path)[1])
    assert [finding["severity"] for finding in report["findings"]] == ["note", "note"] and report["warnings"] == 0
    config = yaml.safe_load((tmp_path / "feeds.yaml").read_text(encoding="utf-8"))
    config["newsletter"]["from"] = "Digest <digest@real.digest.dev>"
    (tmp_path / "feeds.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    (tmp_path / "subscribers.csv").write_text("email\nme@real.digest.dev\n", encoding="utf-8")
    code, out, _ = run_cli("check", "--week", WEEK, cwd=tmp_path)
    assert code == 0 and "placeholder" not in out and "example domains" not in out and "note:" not in out


def _check_lines(tmp_path, run_cli, urls: list[str], **settings) -> tuple[int, list[str]]:
    """`digest check` of a draft whose items link to `urls`: its exit code and its error and warning lines."""
    make_project(tmp_path, 25, [], items=0)
    draft = read_draft(draft_path(tmp_path / "drafts", WEEK))
    draft.sections[0].items = [DraftItem(title=f"item {n}", url=url, summary="s") for n, url in enumerate(urls)]
    write_draft(draft_path(tmp_path / "drafts", WEEK), draft)
    set_check(tmp_path, links=True, private=True, **settings)
    code, out, _ = run_cli("check", "--week", WEEK, cwd=tmp_path)
    return code, [line for line in out.splitlines() if line.startswith(("error", "warning"))]


def test_only_a_link_surely_gone_is_an_error_bot_walls_are_warnings(tmp_path, run_cli):
    site = FeedServer().start()
    try:
        statuses = (404, 410, 401, 403, 429, 999, 503)
        for status in statuses:
            site.routes[f"/{status}"] = Route(b"page", status=status, headers={"Content-Type": "text/html"})
        code, lines = _check_lines(tmp_path, run_cli, [site.url(f"/{status}") for status in statuses])
    finally:
        site.stop()
    errors = sorted(line.split("answers ")[1][:3] for line in lines if line.startswith("error"))
    warnings = sorted(line.split("answers ")[1][:3] for line in lines if line.startswith("warning"))
    assert code == 1 and errors == ["404", "410"]
    assert warnings == ["401", "403", "429", "503", "999"]


def test_a_resolver_that_cannot_answer_is_a_warning_a_name_that_does_not_exist_an_error(tmp_path, run_cli, monkeypatch):
    import socket

    from digest.feeds import fetch

    async def resolve(host: str, port: int) -> list[str]:  # the resolver's two answers, without a network
        if host.startswith("down"):
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(fetch, "_resolve", resolve)
    code, lines = _check_lines(tmp_path, run_cli, ["https://down.example.net/a", "https://gone.example.net/b"])
    assert code == 1
    assert [line.split(":")[0] for line in lines] == ["warning", "error"], lines
    assert "down.example.net" in lines[0] and "gone.example.net" in lines[1]


def test_when_most_links_fail_the_same_way_the_network_is_named_once(tmp_path, run_cli, monkeypatch):
    import socket

    from digest.feeds import fetch

    async def resolve(host: str, port: int) -> list[str]:  # a resolver down that says no name exists
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(fetch, "_resolve", resolve)
    urls = [f"https://site{n}.example.net/post" for n in range(6)]
    code, lines = _check_lines(tmp_path, run_cli, urls)
    assert code == 0, lines
    assert len(lines) == 1 and lines[0].startswith("warning: links: 6 of 6 links failed the same way (no such host)")
    assert "the network or the resolver" in lines[0]


def test_the_whole_link_check_has_one_deadline(tmp_path, run_cli):
    import socket
    import time

    silent = socket.create_server(("127.0.0.1", 0), backlog=64)  # accepts (the kernel does), never answers
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = silent.getsockname()[1]
    try:
        started = time.monotonic()
        code, lines = _check_lines(
            tmp_path, run_cli, [f"http://127.0.0.1:{port}/{n}" for n in range(40)], timeout=30, deadline=1
        )
        took = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        silent.close()
    assert took < 10, took  # 40 links to a silent host: one deadline, not 40 timeouts
    assert code == 0 and len(lines) == 40
    assert all(line.endswith("not checked: the 1 s deadline of the link check (check.deadline)") for line in lines)
    assert all(line.startswith("warning:") for line in lines)
