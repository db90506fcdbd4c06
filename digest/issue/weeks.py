"""ISO weeks in the newsletter's time zone: the id and the span of an issue."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from digest.errors import BadWeek

_WEEK_ID = re.compile(r"(\d{4})-W(\d{2})", re.ASCII)  # \d alone also matches "２０２６" and "٢٠٢٦"
FIRST_YEAR, LAST_YEAR = 1970, 2999  # far from the ends of what dates and time zones can hold


def chosen_week(issue_id: str | None, tz: ZoneInfo, now: datetime | None = None) -> str:
    """The issue a command works on: the week asked for (checked), else the current one."""
    if issue_id is None:
        return current_week(now or datetime.now(UTC), tz)
    parse_week(issue_id)
    return issue_id.strip()


def parse_week(issue_id: str) -> date:
    """The Monday of an ISO week id such as 2026-W14."""
    match = _WEEK_ID.fullmatch(issue_id.strip())
    if not match:
        raise BadWeek(f"{issue_id!r} is not an ISO week like 2026-W14")
    year, week = int(match[1]), int(match[2])
    if not FIRST_YEAR <= year <= LAST_YEAR:
        raise BadWeek(f"{issue_id!r}: the year must be between {FIRST_YEAR} and {LAST_YEAR}")
    try:
        monday = date.fromisocalendar(year, week, 1)
    except ValueError:
        raise BadWeek(f"{issue_id!r}: {year} has no week {week}") from None
    return monday


def week_id(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def current_week(now: datetime, tz: ZoneInfo) -> str:
    return week_id(now.astimezone(tz).date())


def week_span(issue_id: str, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) of the week in UTC: Monday 00:00 to the next Monday 00:00, local time."""
    monday = parse_week(issue_id)
    start = datetime.combine(monday, time(), tzinfo=tz)
    end = datetime.combine(monday + timedelta(days=7), time(), tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)


def week_dates(issue_id: str) -> tuple[date, date]:
    """Monday and Sunday of the week, for display."""
    monday = parse_week(issue_id)
    return monday, monday + timedelta(days=6)
