"""`read_subscriber_export`: our own export and Buttondown's, Mailchimp's, Substack's and listmonk's, told apart by
the header row, each read into our statuses; skipped rows named by line and column; into the database."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digest import store
from digest.errors import ConfigError
from digest.jobs import export_subscribers
from digest.settings.subscribers import (
    FORMULA_STARTS,
    Subscriber,
    _from_spreadsheet_safe,
    clean_name,
    parse_moment,
    read_subscriber_export,
    read_subscribers,
    spreadsheet_safe,
)

from conftest import FIXTURES, SHARED

EXPORTS = FIXTURES / "exports"
NOW = datetime(2026, 4, 6, 9, 0, tzinfo=UTC)


def statuses(path) -> dict[str, str]:
    return {subscriber.email: subscriber.status for subscriber in read_subscriber_export(path).subscribers}


def problems(path) -> list[tuple[int | None, str | None]]:
    return [(problem.line, problem.field) for problem in read_subscriber_export(path).problems]


def write(tmp_path, text: str, name: str = "export.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    "name, format",
    [
        ("digest.csv", "digest"),
        ("buttondown.csv", "buttondown"),
        ("mailchimp_subscribed.csv", "mailchimp"),
        ("mailchimp_unsubscribed.csv", "mailchimp"),
        ("mailchimp_cleaned.csv", "mailchimp"),
        ("substack.csv", "substack"),
        ("listmonk.csv", "listmonk"),
        ("generic.csv", "generic"),
    ],
)
def test_each_export_is_told_by_its_header_row(name, format):
    assert read_subscriber_export(EXPORTS / name).format == format


# --- Buttondown ---------------------------------------------------------------------------------------------


def test_a_buttondown_export_maps_each_subscriber_type_to_a_status():
    assert statuses(EXPORTS / "buttondown.csv") == {
        "ada@example.com": "active",  # regular
        "grace@example.com": "active",  # premium
        "linus@example.com": "pending",  # unactivated
        "ken@example.com": "unsubscribed",
        "dennis@example.com": "bounced",  # undeliverable
        "margaret@example.com": "complained",
        "barbara@example.com": "unsubscribed",  # removed
        "frances@example.com": "active",  # gifted
        "tim@example.com": "complained",  # spammy
    }
    first = read_subscriber_export(EXPORTS / "buttondown.csv").subscribers[0]
    assert first.joined_at == datetime(2023, 2, 14, 9, 30, 0, 123456, tzinfo=UTC)


def test_every_subscriber_type_in_buttondowns_api_has_a_status(tmp_path):
    openapi = json.loads((SHARED / "reference" / "buttondown-openapi.json").read_text(encoding="utf-8"))
    types = openapi["components"]["schemas"]["SubscriberType"]["enum"]
    rows = "".join(f"{kind}@example.com,2024-01-01T00:00:00Z,{kind}\n" for kind in types)
    file = read_subscriber_export(write(tmp_path, f"email_address,creation_date,type\n{rows}"))
    assert file.problems == []
    assert {subscriber.email.partition("@")[0]: subscriber.status for subscriber in file.subscribers} == {
        **dict.fromkeys(types, "active"),
        "unactivated": "pending",
        "unsubscribed": "unsubscribed",
        "removed": "unsubscribed",
        "blocked": "unsubscribed",
        "undeliverable": "bounced",
        "complained": "complained",
    }


def test_a_buttondown_export_without_a_type_column_takes_an_unsubscription_date_as_unsubscribed(tmp_path):
    path = write(
        tmp_path,
        "email,creation_date,unsubscription_date\n"
        "ada@example.com,2024-01-01T00:00:00Z,\n"
        "grace@example.com,2024-01-01T00:00:00Z,2024-06-01T00:00:00Z\n",
    )
    assert statuses(path) == {"ada@example.com": "active", "grace@example.com": "unsubscribed"}


# --- Mailchimp ----------------------------------------------------------------------------------------------


def test_a_mailchimp_subscribed_export_imports_names_and_its_times_as_utc():
    ada, grace, linus = read_subscriber_export(EXPORTS / "mailchimp_subscribed.csv").subscribers
    assert (ada.email, ada.name, ada.status) == ("ada@example.com", "Ada Lovelace", "active")
    assert ada.joined_at == at("2024-01-31 12:34:56")  # OPTIN_TIME
    assert ada.consent_at == at("2024-01-31 12:40:00")  # CONFIRM_TIME
    assert grace.name == "Grace, Rear Admiral Hopper"
    assert grace.joined_at == grace.consent_at == at("2024-02-01 08:00:00")  # no OPTIN_TIME: CONFIRM_TIME
    assert linus.name == "" and linus.consent_at == at("2024-02-02 07:00:00")  # no CONFIRM_TIME: OPTIN_TIME


def test_a_mailchimp_unsubscribed_export_imports_its_members_as_unsubscribed():
    file = read_subscriber_export(EXPORTS / "mailchimp_unsubscribed.csv")
    assert [(s.email, s.name, s.status) for s in file.subscribers] == [
        ("dennis@example.com", "Dennis Ritchie", "unsubscribed"),
        ("margaret@example.com", "Margaret Hamilton", "unsubscribed"),
    ]


def test_a_mailchimp_cleaned_export_imports_its_members_as_bounced():
    assert statuses(EXPORTS / "mailchimp_cleaned.csv") == {
        "barbara@example.com": "bounced",
        "frances@example.com": "bounced",
    }


# --- Substack, listmonk, anything else ----------------------------------------------------------------------


def test_a_substack_reader_who_turned_off_email_is_unsubscribed():
    file = read_subscriber_export(EXPORTS / "substack.csv")
    assert [(s.email, s.status) for s in file.subscribers] == [
        ("ada@example.com", "active"),
        ("GRACE@example.com", "unsubscribed"),  # grace@ paid and reads, GRACE@ turned email off: one person
        ("linus@example.com", "unsubscribed"),
    ]
    assert file.subscribers[0].joined_at == datetime(2024, 1, 15, 10, 0, tzinfo=UTC)


def test_listmonk_disabled_and_blocklisted_subscribers_are_unsubscribed():
    ada, grace, linus = read_subscriber_export(EXPORTS / "listmonk.csv").subscribers
    assert [(s.name, s.status) for s in (ada, grace, linus)] == [
        ("Lovelace, Ada", "active"),
        ("Grace Hopper", "unsubscribed"),  # blocklisted
        ("Linus", "unsubscribed"),  # disabled
    ]
    assert ada.joined_at == datetime(2021, 3, 9, 15, 39, 18, 582924, tzinfo=UTC)  # Go's time.String()
    assert grace.joined_at == datetime(2021, 3, 9, 15, 39, 18, 500000, tzinfo=UTC)  # +0530 IST, in UTC


def test_a_list_from_anywhere_else_with_an_email_column_is_imported_as_active():
    file = read_subscriber_export(EXPORTS / "generic.csv")
    assert [(s.email, s.name, s.status) for s in file.subscribers] == [
        ("ada@example.com", "Ada Lovelace", "active"),
        ("grace@example.com", "Grace Hopper", "active"),
    ]


def test_a_list_from_anywhere_else_keeps_the_unsubscribes_it_shows(tmp_path):
    with_status = write(tmp_path, "Email Address,status,city\nada@example.com,active,Paris\nbob@example.com,bounced,\n")
    assert statuses(with_status) == {"ada@example.com": "active", "bob@example.com": "bounced"}
    dated = write(tmp_path, "email,city,unsubscribed_at\nada@example.com,Paris,\nbob@example.com,,2024-05-01\n")
    assert statuses(dated) == {"ada@example.com": "active", "bob@example.com": "unsubscribed"}


def test_a_file_without_an_email_column_says_which_formats_are_recognized(tmp_path):
    path = write(tmp_path, "address,name\nada@example.com,Ada\n")
    with pytest.raises(ConfigError) as raised:
        read_subscriber_export(path)
    assert (raised.value.line, raised.value.field) == (1, None)
    assert all(word in raised.value.problem for word in ("Buttondown", "Mailchimp", "Substack", "listmonk"))


def test_a_column_the_import_reads_named_twice_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="more than one 'status' column"):
        read_subscriber_export(write(tmp_path, "uuid,email,name,attributes,status,status\n"))


# --- bad rows, duplicates -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, skipped",
    [
        # the 5th row's notes hold a line break: it ends on line 6, and the rows after it are a line further
        ("buttondown.csv", [(11, "email"), (12, "subscriber_type")]),
        ("mailchimp_subscribed.csv", [(5, "Email Address"), (6, "OPTIN_TIME")]),
        ("substack.csv", [(6, "email_disabled"), (7, "email")]),  # the blank last line is no row
        ("listmonk.csv", [(5, "status"), (6, "email")]),
        ("digest.csv", [(5, "status"), (7, "joined_at")]),
    ],
)
def test_each_skipped_row_is_a_problem_naming_its_line_and_column(name, skipped):
    assert problems(EXPORTS / name) == skipped


def test_a_problem_says_what_was_wrong():
    messages = [str(problem) for problem in read_subscriber_export(EXPORTS / "listmonk.csv").problems]
    path = EXPORTS / "listmonk.csv"
    assert messages == [
        f"{path}:5: status: must be one of enabled, disabled, blocklisted, not 'unconfirmed'",
        f"{path}:6: email: not a valid address: 'dennis@@example.com'",
    ]
    dated = read_subscriber_export(EXPORTS / "mailchimp_subscribed.csv").problems[1]
    assert dated.problem == "not a date and time (ISO 8601): '31/01/2024 12:00'"


def test_the_same_address_twice_is_merged_and_a_status_that_stops_the_mail_wins(tmp_path):
    path = write(
        tmp_path,
        "email,name,status\n"
        "ada@example.com,Ada,active\n"
        "ADA@example.com,Ada Lovelace,active\n"  # both active: the later row
        "grace@example.com,Grace,unsubscribed\n"
        "Grace@Example.com,Grace,active\n"  # an unsubscribe anywhere in the file wins
        "linus@example.com,Linus,pending\n"
        "linus@EXAMPLE.com,Linus,bounced\n"  # a bounce wins over a pending confirmation
        "ken@example.com,Ken,complained\n"
        "ken@example.com,Ken,unsubscribed\n",  # the first that stops the mail
    )
    file = read_subscriber_export(path)
    assert [(s.email, s.name, s.status) for s in file.subscribers] == [
        ("ADA@example.com", "Ada Lovelace", "active"),
        ("grace@example.com", "Grace", "unsubscribed"),
        ("linus@EXAMPLE.com", "Linus", "bounced"),
        ("ken@example.com", "Ken", "complained"),
    ]
    assert file.problems == []


# --- our own format -----------------------------------------------------------------------------------------


def text(moment: datetime | None) -> str | None:
    return store.iso(moment) if moment else None


def test_our_export_round_trips_through_the_database(tmp_path):
    db = store.open_db(tmp_path / "digest.db")
    people = [
        Subscriber("ada@example.com", "Ada Lovelace", "active", at("2024-01-31 12:34:56"), at("2024-01-31 12:40:00")),
        Subscriber("grace@example.com", 'Grace "Amazing" Hopper, RADM', "unsubscribed", at("2023-05-01 08:00:00")),
        Subscriber("linus@example.com", "Linus Torvalds", "pending", at("2024-03-01 10:00:00")),
        Subscriber("zoë@example.com", "Zoë", "bounced", at("2024-03-03 10:00:00")),
    ]
    store.record_subscribers(db, people, "form", NOW)
    exported = tmp_path / "subscribers-export.csv"
    with exported.open("w", encoding="utf-8", newline="") as handle:
        assert export_subscribers(db, handle) == 4

    file = read_subscriber_export(exported)
    assert file.format == "digest" and file.problems == []
    read_back = [(s.email, s.name, s.status, text(s.joined_at), text(s.consent_at)) for s in file.subscribers]
    rows = db.execute("SELECT email, name, status, joined_at, consent_at FROM subscribers").fetchall()
    assert sorted(read_back) == sorted(rows)
    grace = ("grace@example.com", 'Grace "Amazing" Hopper, RADM', "unsubscribed", "2023-05-01T08:00:00+00:00", None)
    assert grace in read_back


# any text, most often behind what a spreadsheet or our apostrophe makes something of at a cell's start
CELLS = st.builds(str.__add__, st.text(alphabet="'=+-@\t\r x", max_size=4), st.text())


@given(CELLS)
def test_a_cell_made_spreadsheet_safe_reads_back_as_it_was(cell):
    assert _from_spreadsheet_safe(spreadsheet_safe(cell)) == cell
    assert not spreadsheet_safe(cell).startswith(FORMULA_STARTS)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(CELLS, min_size=1, max_size=5))
def test_every_name_survives_an_export_and_an_import(tmp_path, names):
    db = store.open_db(tmp_path / "digest.db")
    db.execute("DELETE FROM subscribers")
    people = [Subscriber(f"reader{number}@example.com", clean_name(name)) for number, name in enumerate(names)]
    store.record_subscribers(db, people, "form", NOW)  # the names as the database keeps them
    exported = tmp_path / "export.csv"
    with exported.open("w", encoding="utf-8", newline="") as handle:
        export_subscribers(db, handle)
    read_back = {subscriber.email: subscriber.name for subscriber in read_subscriber_export(exported).subscribers}
    assert read_back == {person.email: person.name for person in people}


def test_a_name_that_starts_with_an_apostrophe_and_a_formula_keeps_its_apostrophe(tmp_path):
    db = store.open_db(tmp_path / "digest.db")
    store.record_subscribers(db, [Subscriber("ada@example.com", "'=Ada")], "form", NOW)
    exported = tmp_path / "export.csv"
    with exported.open("w", encoding="utf-8", newline="") as handle:
        export_subscribers(db, handle)
    assert exported.read_text(encoding="utf-8").splitlines()[1].startswith("ada@example.com,''=Ada,")
    assert read_subscriber_export(exported).subscribers[0].name == "'=Ada"


def test_our_format_reads_a_date_without_a_zone_as_utc_and_one_with_a_zone_in_utc(tmp_path):
    path = write(
        tmp_path,
        "email,name,status,joined_at,consent_at\n"
        "ada@example.com,Ada,active,2024-01-31 12:34:56,2024-01-31T14:40:00+02:00\n",
    )
    (ada,) = read_subscriber_export(path).subscribers
    assert ada.joined_at == at("2024-01-31 12:34:56") and ada.joined_at.tzinfo is UTC
    assert ada.consent_at == at("2024-01-31 12:40:00") and ada.consent_at.tzinfo is UTC


def test_subscribers_csv_may_be_an_export_whose_dates_digest_send_does_not_read():
    subscribers, problems = read_subscribers(EXPORTS / "digest.csv")
    assert [(p.line, p.field) for p in problems] == [(5, "status")]  # a bad date is no problem here
    assert {s.email: s.joined_at for s in subscribers}["margaret@example.com"] is None


@pytest.mark.parametrize(
    "text, moment",
    [
        ("2024-01-31T12:34:56Z", datetime(2024, 1, 31, 12, 34, 56, tzinfo=UTC)),  # Buttondown
        ("2024-01-31T12:34:56.789Z", datetime(2024, 1, 31, 12, 34, 56, 789000, tzinfo=UTC)),  # Substack
        ("2024-01-31 12:34:56", datetime(2024, 1, 31, 12, 34, 56, tzinfo=UTC)),  # Mailchimp
        ("2024-01-31 12:34:56.123456789 +0000 UTC", datetime(2024, 1, 31, 12, 34, 56, 123456, tzinfo=UTC)),  # listmonk
        ("2024-01-31 18:04:56 +0530 IST", datetime(2024, 1, 31, 12, 34, 56, tzinfo=UTC)),
        ("2024-01-31", datetime(2024, 1, 31, tzinfo=UTC)),
    ],
)
def test_dates_are_read_as_each_export_writes_them_into_utc(text, moment):
    assert parse_moment(text) == moment and parse_moment(text).tzinfo is UTC


# --- the whole file -----------------------------------------------------------------------------------------


def test_a_file_that_cannot_be_read_is_one_error_with_its_line(tmp_path):
    with pytest.raises(ConfigError) as missing:
        read_subscriber_export(tmp_path / "nope.csv")
    assert missing.value.problem == "not found"  # no word of `digest init`: the file is someone's export
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(b"email,name\nada@example.com,Ada\ngrace@example.com,Gr\xe2ce\n")
    with pytest.raises(ConfigError, match="not UTF-8") as not_utf8:
        read_subscriber_export(latin1)
    assert not_utf8.value.line == 3
    huge = write(tmp_path, "email,name\nada@example.com,Ada\nbob@example.com," + "x" * 200_000 + "\n")
    with pytest.raises(ConfigError, match="not valid CSV") as not_csv:
        read_subscriber_export(huge)
    assert not_csv.value.line == 3


def test_a_100000_row_export_is_read_in_well_under_two_seconds(tmp_path):
    path = tmp_path / "subscribed_members_export.csv"
    header = (EXPORTS / "mailchimp_subscribed.csv").read_text(encoding="utf-8").splitlines()[0]
    with path.open("w", encoding="utf-8") as handle:
        handle.write(header + "\n")
        for number in range(100_000):
            handle.write(
                f'reader{number}@example.com, Reader , {number} ,2,"2024-01-31 12:34:56",,"2024-01-31 12:40:00",'
                f',,,,,,GB,,"2024-02-01 09:00:00",{number},a1b2c3d4e5,,\n'
            )
    started = time.perf_counter()
    file = read_subscriber_export(path)
    elapsed = time.perf_counter() - started
    assert len(file.subscribers) == 100_000 and file.problems == []
    assert elapsed < 2, f"{elapsed:.2f} s"


# --- into the database --------------------------------------------------------------------------------------


def recorded(db) -> dict[str, str]:
    return dict(db.execute("SELECT email, status FROM subscribers").fetchall())


def test_importing_mailchimps_three_files_gives_each_member_its_status(tmp_path):
    db = store.open_db(tmp_path / "digest.db")
    for name in ("mailchimp_subscribed.csv", "mailchimp_unsubscribed.csv", "mailchimp_cleaned.csv"):
        file = read_subscriber_export(EXPORTS / name)
        store.record_subscribers(db, file.subscribers, "import", NOW)
    assert recorded(db) == {
        "ada@example.com": "active",
        "grace@example.com": "active",
        "linus@example.com": "active",
        "dennis@example.com": "unsubscribed",
        "margaret@example.com": "unsubscribed",
        "barbara@example.com": "bounced",
        "frances@example.com": "bounced",
    }
    consent = db.execute("SELECT consent_at FROM subscribers WHERE email = 'ada@example.com'").fetchone()[0]
    assert consent == "2024-01-31T12:40:00+00:00"


@pytest.mark.parametrize("name", ["buttondown.csv", "substack.csv", "listmonk.csv", "digest.csv"])
def test_importing_an_export_into_an_empty_database_keeps_the_statuses_it_read(tmp_path, name):
    db = store.open_db(tmp_path / "digest.db")
    file = read_subscriber_export(EXPORTS / name)
    changes = store.record_subscribers(db, file.subscribers, "import", NOW)
    assert changes.added == len(file.subscribers)
    assert recorded(db) == {subscriber.email: subscriber.status for subscriber in file.subscribers}


def test_an_unsubscribed_address_in_the_database_stays_unsubscribed_when_a_file_says_active(tmp_path):
    db = store.open_db(tmp_path / "digest.db")
    store.record_subscribers(db, [Subscriber("Ada@Example.com", "Ada", "unsubscribed")], "form", NOW)
    file = read_subscriber_export(EXPORTS / "mailchimp_subscribed.csv")  # ada@example.com, active
    changes = store.record_subscribers(db, file.subscribers, "import", NOW)
    assert changes.kept == {"unsubscribed": 1}
    assert recorded(db)["Ada@Example.com"] == "unsubscribed"
