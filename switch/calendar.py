"""Business dates: which day a transaction counts in, given the cutover time and zone.

The business date closes at the cutover (default 00:00 Asia/Tehran). Two conventions exist and
the cutover time decides which one applies:

* a cutover before noon (``00:00``, ``02:00``) closes day D after midnight: a request at local
  time ``t`` counts in the date of ``t - cutover`` (at 01:00 with a 02:00 cutover: yesterday);
* a cutover at or after noon (``21:00``) opens day D+1 in the evening: a request counts in the
  date of ``t + (24h - cutover)`` (at 22:00 with a 21:00 cutover: tomorrow).

>>> from datetime import datetime, UTC
>>> cal = BusinessCalendar("Asia/Tehran", "00:00")
>>> cal.business_date(datetime(2026, 12, 4, 21, 0, tzinfo=UTC)).isoformat()  # 00:30 in Tehran
'2026-12-05'
>>> BusinessCalendar("Asia/Tehran", "21:00").business_date(
...     datetime(2026, 12, 4, 18, 0, tzinfo=UTC)).isoformat()  # 21:30 in Tehran
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
        local = now.astimezone(self.zone).replace(tzinfo=None)
        if self.cutover >= timedelta(hours=12):
            return (local + (timedelta(days=1) - self.cutover)).date()
        return (local - self.cutover).date()
