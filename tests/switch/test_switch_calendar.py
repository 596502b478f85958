"""The business calendar remembers its last answer for a minute: never a different date from
working it out afresh, across cutovers, zones with daylight saving and odd offsets."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from switch.calendar import BusinessCalendar

ZONES = ["Asia/Tehran", "Europe/London", "America/St_Johns", "Asia/Kathmandu", "UTC"]
CUTOVERS = ["00:00", "02:00", "11:59", "12:00", "21:00", "23:59"]
START = datetime(1950, 1, 1, tzinfo=UTC)


def fresh(zone: str, cutover: str, now: datetime) -> date:
    """The date worked out with no remembered answer."""
    return BusinessCalendar(zone, cutover).business_date(now)


@given(
    zone=st.sampled_from(ZONES),
    cutover=st.sampled_from(CUTOVERS),
    first_s=st.integers(0, 90 * 365 * 86400),
    steps_ms=st.lists(st.integers(-150_000, 150_000), min_size=1, max_size=30),
    offset_s=st.sampled_from([0, 3600, -12600, 45, 19800]),
)
def test_the_remembered_date_is_always_the_fresh_one(
    zone: str, cutover: str, first_s: int, steps_ms: list[int], offset_s: int
) -> None:
    calendar = BusinessCalendar(zone, cutover)
    now = (START + timedelta(seconds=first_s)).astimezone(timezone(timedelta(seconds=offset_s)))
    for step in steps_ms:
        assert calendar.business_date(now) == fresh(zone, cutover, now), now
        now += timedelta(milliseconds=step)


def test_the_date_turns_at_the_cutover_minute_and_not_within_it() -> None:
    calendar = BusinessCalendar("Asia/Tehran", "21:00")  # 17:30 UTC in winter
    before = datetime(2026, 12, 4, 17, 29, 59, 999_999, tzinfo=UTC)
    at = datetime(2026, 12, 4, 17, 30, tzinfo=UTC)
    assert calendar.business_date(datetime(2026, 12, 4, 17, 29, tzinfo=UTC)) == date(2026, 12, 4)
    assert calendar.business_date(before) == date(2026, 12, 4)  # remembered minute
    assert calendar.business_date(at) == date(2026, 12, 5)
    assert calendar.business_date(before) == date(2026, 12, 4)  # back again: worked out anew


def test_a_zone_offset_in_seconds_is_never_remembered() -> None:
    calendar = BusinessCalendar("Asia/Tehran", "00:00")
    # Tehran's local mean time before 1946 was +03:25:44: the date turns at hh:mm:16 UTC
    odd = datetime(1930, 6, 1, 20, 34, 10, tzinfo=UTC)
    assert calendar.business_date(odd) == date(1930, 6, 1)
    assert calendar.business_date(odd + timedelta(seconds=10)) == date(1930, 6, 2)
