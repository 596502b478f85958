"""Velocity alerts: per-card patterns over recent decisions, raised as ``alerts/velocity`` events.

Rules (``[velocity]`` in the config, :class:`switch.config.VelocityConfig`):

* ``pin_declines``: more than ``pin_declines_max`` declines ``55`` (wrong PIN) on one card within
  ``pin_declines_window_s``. After an alert the card's count starts again from zero, so a card
  under attack raises one alert per ``pin_declines_max + 1`` wrong PINs, not one per decline.
* ``amount_hour``: more than ``amount_hour_max`` IRR approved (purchases, pre-authorizations,
  completions) on one card within the last hour, counted in one-minute buckets. One alert per
  card per hour at most.

State lives in memory, per process, keyed by a SHA-256 of the PAN (the PAN itself is not kept);
at most ``cards_max`` cards are tracked, the least recently seen forgotten first. Several switch
processes each see their own share of the traffic: the rules are a first line, not a fraud
system. Alerts carry the masked PAN only (first 6, last 4).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ledger.domain import mask_pan
from ledger.store import TOPIC_ALERTS_VELOCITY
from switch.config import VelocityConfig

if TYPE_CHECKING:
    from switch.service import Decision

log = logging.getLogger("honar.velocity")

PIN_DECLINE_CODE = "55"
AMOUNT_KINDS = frozenset({"purchase", "preauth", "completion"})
HOUR_S = 3600.0
BUCKET_S = 60.0

Emit = Callable[[str, Mapping[str, Any]], None]


MINUTES = int(HOUR_S // BUCKET_S)  # the amount rule's window, in buckets


class _Card:
    """One card's state, kept small: a switch may track ``cards_max`` (100,000) of them.

    The hour's approvals are a ring of one 64-bit slot per minute (an ``array``: 544 bytes,
    where a dict of minute -> amount reached some 6 KB per card in a busy hour); the declines'
    deque is made at the first wrong PIN. A slot cannot overflow: an amount has at most 12
    digits, and 2**63 IRR in a minute would take some 9 million of the largest ones.
    """

    __slots__ = ("amount_alerted_until", "declines", "last_minute", "minutes", "total")

    def __init__(self) -> None:
        self.declines: deque[float] | None = None  # monotonic times of recent 55s
        self.minutes: array[int] | None = None  # IRR approved in minute m at [m % MINUTES]
        self.last_minute = 0  # the ring holds minutes last_minute - 59 .. last_minute
        self.total = 0  # the sum of the ring
        self.amount_alerted_until = 0.0


@dataclass(frozen=True, slots=True)
class Alert:
    """One velocity alert, as written to the outbox (``payload``)."""

    rule: str
    payload: dict[str, Any]


class VelocityMonitor:
    """Applies the velocity rules to decisions; returns the alerts they raise."""

    def __init__(
        self,
        config: VelocityConfig,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        assert config.pin_declines_max > 0 and config.cards_max > 0
        self.config = config
        self.monotonic = monotonic
        self.clock = clock
        self._cards: OrderedDict[bytes, _Card] = OrderedDict()
        self.forgotten = 0  # cards dropped because cards_max was reached

    @property
    def cards_tracked(self) -> int:
        """How many cards have state now (never more than ``cards_max``)."""
        return len(self._cards)

    def check(self, decision: Decision) -> list[Alert]:
        """Update the card's state with ``decision``; return any alerts it raises."""
        if not decision.pan:
            return []
        pin_decline = decision.response_code == PIN_DECLINE_CODE
        approved_amount = (
            decision.response_code == "00" and decision.kind in AMOUNT_KINDS and decision.amount > 0
        )
        if not (pin_decline or approved_amount):
            return []
        now = self.monotonic()
        card = self._card(hashlib.sha256(decision.pan.encode()).digest())
        alerts: list[Alert] = []
        c = self.config
        if pin_decline:
            declines = card.declines
            if declines is None:
                declines = card.declines = deque()
            declines.append(now)
            while declines and declines[0] <= now - c.pin_declines_window_s:
                declines.popleft()
            if len(declines) > c.pin_declines_max:
                alerts.append(
                    self._alert(
                        "pin_declines",
                        decision,
                        count=len(declines),
                        limit=c.pin_declines_max,
                        window_s=c.pin_declines_window_s,
                    )
                )
                declines.clear()
        if approved_amount:
            _add_approval(card, int(now // BUCKET_S), decision.amount)
            total = card.total
            if total > c.amount_hour_max and now >= card.amount_alerted_until:
                alerts.append(
                    self._alert(
                        "amount_hour",
                        decision,
                        amount_total=total,
                        limit=c.amount_hour_max,
                        window_s=HOUR_S,
                    )
                )
                card.amount_alerted_until = now + HOUR_S
        return alerts

    def _card(self, key: bytes) -> _Card:
        card = self._cards.get(key)
        if card is None:
            card = self._cards[key] = _Card()
            if len(self._cards) > self.config.cards_max:
                self._cards.popitem(last=False)
                self.forgotten += 1
        else:
            self._cards.move_to_end(key)
        return card

    def _alert(self, rule: str, decision: Decision, **figures: Any) -> Alert:
        payload = {
            "event_id": uuid.uuid4().hex,
            "type": "velocity_alert",
            "rule": rule,
            "time": self.clock().isoformat(),
            "pan_masked": mask_pan(decision.pan),
            "terminal_id": decision.tid,
            "stan": decision.stan,
            "response_code": decision.response_code,
            "amount": decision.amount,
            **figures,
        }
        return Alert(rule, payload)


def _add_approval(card: _Card, minute: int, amount: int) -> None:
    """Count ``amount`` in ``minute``, first emptying the slots of the minutes that have left
    the hour since the card's last approval (at most :data:`MINUTES` of them). A minute older
    than the card's newest (an injected clock going back) counts in the newest."""
    ring = card.minutes
    if ring is None:
        ring = card.minutes = array("q", bytes(8 * MINUTES))
        card.last_minute = minute
    elif minute > card.last_minute:
        if minute - card.last_minute >= MINUTES:  # the whole hour has passed
            ring = card.minutes = array("q", bytes(8 * MINUTES))
            card.total = 0
        else:
            for passed in range(card.last_minute + 1, minute + 1):
                slot = passed % MINUTES
                card.total -= ring[slot]
                ring[slot] = 0
        card.last_minute = minute
    ring[card.last_minute % MINUTES] += amount
    card.total += amount


class VelocityObserver:
    """A :class:`switch.service.Decision` observer: alerts go to ``emit(topic, payload)``."""

    def __init__(
        self,
        monitor: VelocityMonitor,
        emit: Emit,
        on_alert: Callable[[str], None] | None = None,
    ) -> None:
        self.monitor = monitor
        self.emit = emit
        self.on_alert = on_alert

    def __call__(self, decision: Decision) -> None:
        """Check one decision; emit its alerts."""
        for alert in self.monitor.check(decision):
            log.warning(
                "velocity alert",
                extra={
                    "rule": alert.rule,
                    "pan": alert.payload["pan_masked"],
                    "tid": decision.tid,
                    "stan": decision.stan,
                },
            )
            if self.on_alert is not None:
                self.on_alert(alert.rule)
            self.emit(TOPIC_ALERTS_VELOCITY, alert.payload)


class OutboxEmitter:
    """Writes events without a ledger effect to the outbox, off the event loop.

    Observers run on the event loop and must not block; each event is written by a worker
    thread. ``pending`` counts writes not finished yet; beyond ``pending_max`` new events are
    dropped and logged (the loop is never held up by a slow database).
    """

    def __init__(
        self,
        write: Callable[[list[tuple[str, Mapping[str, Any]]], str], object],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        pending_max: int = 10_000,
    ) -> None:
        self.write = write
        self.clock = clock
        self.pending_max = pending_max
        self.pending = 0
        self.dropped = 0
        self._futures: set[asyncio.Future[object]] = set()

    def __call__(self, topic: str, payload: Mapping[str, Any]) -> None:
        """Queue one event for writing."""
        if self.pending >= self.pending_max:
            self.dropped += 1
            log.error("event dropped: too many outbox writes pending", extra={"topic": topic})
            return
        loop = asyncio.get_running_loop()
        self.pending += 1
        future = loop.run_in_executor(
            None, self.write, [(topic, payload)], self.clock().isoformat()
        )
        self._futures.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: asyncio.Future[object]) -> None:
        self.pending -= 1
        self._futures.discard(future)
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            log.error("event not written to the outbox", extra={"error": str(error)})

    async def drain(self) -> None:
        """Wait until every queued event has been written (or failed)."""
        if self._futures:
            await asyncio.gather(*self._futures, return_exceptions=True)
