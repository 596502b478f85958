"""Business dates: which day a transaction counts in, given the cutover time and zone.

The business date closes at the cutover (default 00:00 Asia/Tehran). A request received at
local time ``t`` belongs to the business date of ``t - cutover``.

>>> from datetime import datetime, UTC
>>> cal = BusinessCalendar("Asia/Tehran", "00:00")
>>> cal.business_date(datetime(2026, 12, 4, 21, 0, tzinfo=UTC)).isoformat()  # 00:30 in Tehran
'2026-12-05'
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo


class BusinessCalendar:
    """Maps a UTC instant to its business date."""

    def __init__(self, zone: str, cutover: str) -> None:
        self.zone = ZoneInfo(zone)
        hours, _, minutes = cutover.partition(":")
        self.cutover = timedelta(hours=int(hours), minutes=int(minutes))

    def business_date(self, now: datetime) -> date:
        """The business date ``now`` (timezone-aware) counts in."""
        assert now.tzinfo is not None, "business_date needs an aware datetime"
        local = now.astimezone(self.zone)
        return (local.replace(tzinfo=None) - self.cutover).date()
