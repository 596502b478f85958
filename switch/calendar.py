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

_MINUTE = timedelta(minutes=1)


class BusinessCalendar:
    """Maps a UTC instant to its business date."""

    def __init__(self, zone: str, cutover: str) -> None:
        self.zone = ZoneInfo(zone)
        hours, _, minutes = cutover.partition(":")
        self.cutover = timedelta(hours=int(hours), minutes=int(minutes))
        # The last answer and the minute it holds for: (start, end, date). Asked on every
        # request, the zone conversion cost 2 us; the date cannot change inside a minute.
        self._minute: tuple[datetime, datetime, date] | None = None

    def business_date(self, now: datetime) -> date:
        """The business date ``now`` (timezone-aware) counts in.

        The answer is remembered for the minute ``now`` falls in: the cutover is whole minutes,
        and so are the zone's offsets and its changes (checked, else nothing is remembered), so
        the date only ever changes at a minute's start.
        """
        assert now.tzinfo is not None, "business_date needs an aware datetime"
        minute = self._minute
        if minute is not None and minute[0] <= now < minute[1]:
            return minute[2]
        local = now.astimezone(self.zone)
        found = self._date_of(local.replace(tzinfo=None))
        offsets = (now.utcoffset(), local.utcoffset())
        if all(offset is not None and not offset % _MINUTE for offset in offsets):
            start = now.replace(second=0, microsecond=0)
            self._minute = (start, start + _MINUTE, found)
        return found

    def _date_of(self, local: datetime) -> date:
        if self.cutover >= timedelta(hours=12):
            return (local + (timedelta(days=1) - self.cutover)).date()
        return (local - self.cutover).date()
