"""`digest serve` under a real uvicorn: signup with double opt-in, confirmation, unsubscribe (RFC 8058), the
archive, and what a hostile client tries (forged, expired and cross-purpose tokens, floods, other origins)."""

from __future__ import annotations

import asyncio
import email
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email import policy

import httpx
import pytest

from digest import store
from digest.send.unsubscribe import make_token
from digest.web.signup import make_confirm_token

from helpers.project import WEEK, make_project, subscribers
from helpers.web import SECRET, Site, confirmation_link


def _recorded(site: Site, address: str) -> None:
    """Polled: the confirmations' thread has recorded the request (it does so after the answer)."""
    deadline = datetime.now(UTC) + timedelta(seconds=30)
    while site.status(address) is None:
        assert datetime.now(UTC) < deadline, f"{address} was not recorded"


def test_signup_sends_a_confirmation_link_that_activates_the_subscriber(site, server):
    answer = site.subscribe("grace@example.com", "Grace")
    assert answer.status_code == 200 and "Check your inbox" in answer.text
    server.wait_for(1)  # the request is recorded and mailed after the answer (web/confirmations.py)
    assert site.status("grace@example.com") == "pending"
    confirmation = server.messages[0]
    assert confirmation.rcpt == "grace@example.com"
    headers = email.message_from_bytes(confirmation.data, policy=policy.default)
    assert headers["From"] == "Test Digest <digest@example.com>" and headers["List-Id"]
    assert headers["Auto-Submitted"] == "auto-generated" and "List-Unsubscribe" not in headers
    link = confirmation_link(confirmation.data)
    for opened in (site.client.get(link), site.client.head(link)):  # a mail scanner following the link
        assert opened.status_code == 200 and site.status("grace@example.com") == "pending"
    page = site.client.get(link)
    assert '<form method="post"' in page.text and ">Confirm</button>" in page.text
    confirmed = site.client.post(link)
    assert confirmed.status_code == 200 and "Subscribed" in confirmed.text
    assert site.status("grace@example.com") == "active"
    row = site.db().execute("SELECT source, consent_at FROM subscribers WHERE email = 'grace@example.com'").fetchone()
    assert row[0] == "form" and row[1] is not None


def test_the_answer_is_the_same_whether_or_not_the_address_is_known(site, server):
    site.subscribe("known@example.com")
    server.wait_for(1)
    site.client.post(confirmation_link(server.messages[0].data))
    known = site.subscribe("known@example.com")
    unknown = site.subscribe("other@example.com")
    assert known.status_code == unknown.status_code == 200
    assert known.text.replace("known@", "X@") == unknown.text.replace("other@", "X@")
    server.wait_for(2)
    assert [message.rcpt for message in server.messages] == ["known@example.com", "other@example.com"]


def test_a_filled_honeypot_gets_the_same_page_and_nothing_is_recorded_or_mailed(site, server):
    answer = site.subscribe("bot@example.com", website="http://spam.example")
    assert answer.status_code == 200 and "Check your inbox" in answer.text
    assert site.status("bot@example.com") is None and not server.messages


def test_a_form_posted_from_another_site_is_refused(site, server):
    answer = site.client.post(
        "/subscribe", data={"email": "victim@example.com"}, headers={"Origin": "https://evil.example"}
    )
    assert answer.status_code == 403 and site.status("victim@example.com") is None and not server.messages


def test_signups_are_limited_per_client_and_confirmations_per_address(tmp_path, server, monkeypatch):
    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", SECRET)
    limited = Site(tmp_path, server.port, [], serve={"subscribes_per_hour": 3, "confirmations_per_day": 1})
    try:
        assert limited.subscribe("twice@example.com").status_code == 200
        again = limited.subscribe("twice@example.com")  # told to use the link it has, no second mail
        assert again.status_code == 429 and again.headers["Retry-After"] == "86400" and "tomorrow" in again.text
        assert limited.subscribe("third@example.com").status_code == 200
        flood = limited.subscribe("fourth@example.com")
        assert flood.status_code == 429 and flood.headers["Retry-After"] == "3600"
        server.wait_for(2)
        assert sorted(message.rcpt for message in server.messages) == ["third@example.com", "twice@example.com"]
        assert limited.status("fourth@example.com") is None
    finally:
        limited.stop()


def test_forged_expired_and_cross_purpose_tokens_change_nothing(site, server):
    list_id = site.config.newsletter.list_identifier
    site.subscribe("pending@example.com")
    server.wait_for(1)
    good = confirmation_link(server.messages[0].data).split("token=")[1]
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    old = make_confirm_token(SECRET, list_id, "pending@example.com", datetime.now(UTC) - timedelta(days=8))
    other_newsletter = make_confirm_token(SECRET, "another.example.com", "pending@example.com", datetime.now(UTC))
    unsubscribe_token = site.unsubscribe_token("pending@example.com")
    for token, says in [
        (forged, "not valid"),
        (old, "more than 7 days old"),
        (other_newsletter, "not valid"),
        (unsubscribe_token, "not valid"),
        ("", "not valid"),
        ("c1.%%%.x.y", "not valid"),
    ]:
        for answer in (
            site.client.get("/confirm", params={"token": token}),
            site.client.post("/confirm", params={"token": token}),
        ):
            assert answer.status_code == 400 and says in answer.text, token
    assert site.status("pending@example.com") == "pending"
    site.subscribe("ada@example.com")  # a row for ada (pending): a confirmation token is no unsubscribe token
    _recorded(site, "ada@example.com")
    confirm_token = make_confirm_token(SECRET, list_id, "ada@example.com", datetime.now(UTC))
    assert site.client.post("/unsubscribe", params={"token": confirm_token}).status_code == 400
    assert site.client.get("/unsubscribe", params={"token": confirm_token}).status_code == 400
    assert site.status("ada@example.com") == "pending"


def test_a_confirmation_link_works_for_seven_days_and_then_changes_nothing(tmp_path, server, monkeypatch):
    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", SECRET)
    now = [datetime(2026, 4, 1, 12, 0, tzinfo=UTC)]
    timed = Site(tmp_path, server.port, [], clock=lambda: now[0])
    try:
        timed.subscribe("early@example.com")
        timed.subscribe("late@example.com")
        server.wait_for(2)
        links = {message.rcpt: confirmation_link(message.data) for message in server.messages}
        now[0] += timedelta(days=7)
        assert timed.client.post(links["early@example.com"]).status_code == 200
        now[0] += timedelta(seconds=1)
        late = timed.client.post(links["late@example.com"])
        assert late.status_code == 400 and "more than 7 days old" in late.text
        assert timed.status("early@example.com") == "active" and timed.status("late@example.com") == "pending"
    finally:
        timed.stop()


def test_an_unsubscribe_link_opened_shows_a_button_and_changes_nothing(site):
    site.subscribe("ada@example.com")
    _recorded(site, "ada@example.com")
    token = site.unsubscribe_token("ada@example.com")
    page = site.client.get("/unsubscribe", params={"token": token})
    assert page.status_code == 200 and '<form method="post"' in page.text and "<button" in page.text
    assert site.status("ada@example.com") == "pending"  # a GET never unsubscribes


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
def test_one_click_unsubscribe_as_mailbox_providers_post_it(site, encoding):
    token = site.unsubscribe_token("ada@example.com")
    if encoding == "urlencoded":
        answer = site.client.post(
            "/unsubscribe",
            params={"token": token},
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    else:
        answer = site.client.post(
            "/unsubscribe", params={"token": token}, files={"List-Unsubscribe": (None, "One-Click")}
        )
    assert answer.status_code == 200 and "will not receive" in answer.text
    assert site.status("ada@example.com") == "unsubscribed"
    detail = site.db().execute("SELECT status_detail FROM subscribers").fetchone()[0]
    assert detail == "one-click unsubscribe"
    again = site.client.post("/unsubscribe", params={"token": token}, data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200  # twice is fine: a provider may retry


def test_a_forged_unsubscribe_is_refused_and_changes_nothing(site):
    token = site.unsubscribe_token("ada@example.com")
    for forged in [
        token[:-2] + "xx",
        make_token("another-secret", site.config.newsletter.list_identifier, "ada@example.com"),
        "",
        "2..",
    ]:
        answer = site.client.post("/unsubscribe", params={"token": forged}, data={"List-Unsubscribe": "One-Click"})
        assert answer.status_code == 400
    assert site.status("ada@example.com") is None


def test_pages_escape_what_they_are_sent_and_carry_no_referrer_or_script(site):
    answer = site.subscribe('"><script>alert(1)</script>@example.com')
    assert answer.status_code == 400 and "<script>" not in answer.text
    answer = site.subscribe("x@example.com", name="<script>alert(1)</script>")
    assert "<script>" not in answer.text
    headers = answer.headers
    assert headers["Referrer-Policy"] == "same-origin" and "script-src" not in headers["Content-Security-Policy"]
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert site.client.get("/healthz").text == "ok\n"


def test_the_archive_is_served_and_follows_the_sends(site, server, run_cli):
    index = site.client.get("/")
    assert index.status_code == 200 and 'action="' + site.url + 'subscribe"' in index.text
    assert run_cli("send", "--week", WEEK, "--yes", cwd=site.path.parent)[0] == 0
    page = site.client.get(f"/issues/{WEEK}/")
    assert page.status_code == 200 and "Test Digest" in page.text
    assert f"issues/{WEEK}/" in site.client.get("/").text
    import feedparser

    feed = feedparser.parse(site.client.get("/feed.xml").content)
    assert not feed.bozo and feed.entries[0].link == f"{site.url}issues/{WEEK}/"


def test_the_feeds_are_served_as_feeds_not_as_any_xml_or_json(site):
    """A reader or a browser told `application/xml` may show the source rather than offer to subscribe."""
    atom, json_feed = site.client.get("/feed.xml"), site.client.get("/feed.json")
    assert atom.status_code == 200 and atom.headers["content-type"].startswith("application/atom+xml")
    assert json_feed.status_code == 200 and json_feed.headers["content-type"] == "application/feed+json"
    assert site.client.get("/").headers["content-type"].startswith("text/html")


def test_two_hundred_one_click_unsubscribes_during_a_five_thousand_subscriber_send(tmp_path, server, monkeypatch):
    """The send runs as its own process, as cron runs it; the unsubscribes come at once, as mailbox providers
    post them. Every one is answered 200, none is lost, and none is mailed after its unsubscribe."""
    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", SECRET)
    everyone = subscribers(5000)
    busy = Site(tmp_path, server.port, everyone)
    leaving = [person["email"] for person in everyone[::25]]  # 200, spread over the list
    try:
        send = subprocess.Popen(
            [sys.executable, "-m", "digest", "send", "--week", WEEK, "--yes"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        server.wait_for(100)  # the send is under way

        async def unsubscribe_all() -> list[int]:
            async with httpx.AsyncClient(
                base_url=busy.url, timeout=60, limits=httpx.Limits(max_connections=200)
            ) as client:
                answers = await asyncio.gather(
                    *(
                        client.post(
                            "/unsubscribe",
                            params={"token": busy.unsubscribe_token(address)},
                            data={"List-Unsubscribe": "One-Click"},
                        )
                        for address in leaving
                    )
                )
            return [answer.status_code for answer in answers]

        codes = asyncio.run(unsubscribe_all())
        _, err = send.communicate(timeout=300)
        assert send.returncode == 0, err
    finally:
        busy.stop()
    assert codes == [200] * 200
    db = store.open_db(tmp_path / "digest.db")
    assert {busy.status(address) for address in leaving} == {"unsubscribed"}
    ledger = dict(db.execute("SELECT email, status FROM deliveries WHERE issue_id = ?", [WEEK]).fetchall())
    mailed = server.per_recipient()
    assert set(ledger.values()) <= {"sent", "skipped"} and store.get_issue(db, WEEK)["status"] == "sent"
    assert all(mailed[address] == (ledger[address] == "sent") for address in ledger)  # once, or never
    skipped = [address for address in leaving if ledger[address] == "skipped"]
    assert len(skipped) >= 100  # most were still to be mailed when they left
    assert sum(mailed.values()) == 5000 - len(skipped)


def test_digest_serve_and_publish_run_from_the_command_line(tmp_path, server, run_cli):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    make_project(tmp_path, server.port, [], site_url=url, unsubscribe_url=None, sections={"serve": {"port": port}})
    env = {**os.environ, "DIGEST_UNSUBSCRIBE_SECRET": ""}
    refused = subprocess.run([sys.executable, "-m", "digest", "serve"], cwd=tmp_path, env=env, capture_output=True)
    assert refused.returncode == 2 and refused.stderr.decode().startswith("error: DIGEST_UNSUBSCRIBE_SECRET is not")
    env["DIGEST_UNSUBSCRIBE_SECRET"] = SECRET
    serving = subprocess.Popen(
        [sys.executable, "-m", "digest", "serve"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert serving.stdout.readline().decode() == f"serving {url} on http://127.0.0.1:{port} (Ctrl-C to stop)\n"
        deadline = datetime.now(UTC) + timedelta(seconds=20)
        while True:  # polled: uvicorn listens once the archive is published
            try:
                assert httpx.get(url + "healthz").text == "ok\n"
                break
            except httpx.TransportError:
                assert datetime.now(UTC) < deadline, serving.stderr.read1().decode()
        assert "No issue has been sent yet" in httpx.get(url).text
    finally:
        serving.terminate()
        serving.wait(20)
    assert serving.returncode == 0
    code, out, _ = run_cli("publish", "--out", str(tmp_path / "elsewhere"), cwd=tmp_path)
    assert code == 0 and out.startswith(f"published 0 issue(s) to {tmp_path / 'elsewhere'}: ")
    assert (tmp_path / "elsewhere" / "feed.xml").is_file()
    no_web = tmp_path / "plain"
    no_web.mkdir()
    make_project(no_web, server.port, [])
    code, _, err = run_cli("serve", cwd=no_web)
    assert code == 2 and "add a serve: section" in err


def test_an_unsubscribe_body_is_read_only_up_to_its_limit(site):
    """A chunked body has no Content-Length to refuse it by: it is read as it comes, and cut at 16 KB."""

    def endless():
        for _ in range(1000):
            yield b"x" * 65536  # 64 MB if it were all read

    token = site.unsubscribe_token("ada@example.com")
    answer = site.client.post("/unsubscribe", params={"token": token}, content=endless())
    assert answer.status_code == 413 and site.status("ada@example.com") is None
    big = site.client.post("/unsubscribe", params={"token": token}, content=b"x" * 20_000)
    assert big.status_code == 413


def test_a_silent_mail_server_does_not_hold_up_unsubscribes(tmp_path, server, monkeypatch):
    """Confirmation mails go from a thread of their own: signups while the SMTP server never answers do not take
    the threads that unsubscribes need."""
    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", SECRET)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(100)  # accepts connections, never greets: each mail waits smtp.timeout, 5 s here
        limits = {"subscribes_per_hour": 1000, "confirmations_per_hour": 1000}
        site = Site(tmp_path, silent.getsockname()[1], [], serve=limits)
        try:
            for number in range(45):
                assert site.subscribe(f"reader{number}@example.com").status_code == 200
            started = datetime.now(UTC)
            token = site.unsubscribe_token("reader0@example.com")
            answer = site.client.post("/unsubscribe", params={"token": token}, data={"List-Unsubscribe": "One-Click"})
            assert answer.status_code == 200
            assert datetime.now(UTC) - started < timedelta(seconds=4)  # not behind 45 mails of 5 s each
        finally:
            site.stop()


def test_one_inbox_gets_few_confirmations_whatever_the_tags_and_dots(tmp_path, server, monkeypatch):
    monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", SECRET)
    site = Site(tmp_path, server.port, [], serve={"confirmations_per_day": 2, "subscribes_per_hour": 100})
    try:
        for address, status in [
            ("victim@gmail.com", 200),
            ("vic.tim+1@gmail.com", 200),
            ("v.i.c.t.i.m+2@googlemail.com", 429),
            ("Victim+3@gmail.com", 429),
        ]:
            assert site.subscribe(address).status_code == status
        assert site.subscribe("other@example.com").status_code == 200
        server.wait_for(3)
        assert sorted(message.rcpt for message in server.messages) == [
            "other@example.com",
            "vic.tim+1@gmail.com",
            "victim@gmail.com",
        ]
    finally:
        site.stop()


def test_the_limits_count_an_ipv6_network_as_one_client_and_forget_old_windows():
    from digest.web.limits import RateLimit as _RateLimit
    from digest.web.limits import client_key, inbox_key

    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert inbox_key("Vic.Tim+news@GoogleMail.com") == "victim@gmail.com"
    assert inbox_key("a.b+x@example.com") == "a.b@example.com"
    limit = _RateLimit(2, 3600)
    assert [limit.allow("a"), limit.allow("a"), limit.allow("a"), limit.allow("b")] == [True, True, False, True]
    limit._start -= 7200  # two windows later: both forgotten
    assert limit.allow("a") and not limit._previous


def test_forms_from_other_sites_are_refused_with_or_without_origin(site, server):
    refused = site.client.post("/subscribe", data={"email": "x@example.com"}, headers={"Sec-Fetch-Site": "cross-site"})
    assert refused.status_code == 403
    for address in ("a\u202emoc.live@example.com", "tab\t@example.com"):
        assert site.subscribe(address).status_code == 400
    assert not server.messages


def test_serve_refuses_a_short_secret_and_a_port_in_use(tmp_path, server, run_cli, monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        make_project(
            tmp_path, server.port, [], site_url="http://127.0.0.1:1/", unsubscribe_url=None, sections={"serve": {}}
        )
        monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", "abc12")
        code, out, err = run_cli("serve", "--port", str(port), cwd=tmp_path)
        assert code == 2 and "too short" in err and not out
        monkeypatch.setenv("DIGEST_UNSUBSCRIBE_SECRET", SECRET)
        code, out, err = run_cli("serve", "--port", str(port), cwd=tmp_path)
        assert code == 2 and err.startswith(f"error: --port: cannot listen on 127.0.0.1:{port}") and not out


def test_a_version_2_token_read_as_one_of_release_0_1_0_is_refused():
    import base64

    from digest.send.unsubscribe import _signature, verify_token

    signature = _signature(SECRET, "news.example.com", "mallory@example.com")
    smuggled = b"2\0news.example.com\0mallory@example.com"
    token = ".".join(base64.urlsafe_b64encode(part).decode().rstrip("=") for part in (smuggled, signature))
    assert verify_token(SECRET, "news.example.com", token) is None
