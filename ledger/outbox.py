"""The transactional outbox: events written with their ledger effects, read by the publisher.

Every event is one row of the ``outbox`` table, written in the same database transaction as the
ledger change it reports (``Store.add_event`` for decisions and hold expiries; :func:`add_event`
here for code outside ``ledger/store.py``). The publisher (``switch/publish.py``) reads unpublished
rows in ``id`` order, sends them, and marks them published. A row whose payload contains anything
shaped like a full PAN is *quarantined* instead: never sent, kept for an operator to inspect.

Topic names (relative; the publisher prefixes ``honar/v1/{environment}/``) written today:

=========================  =========================================  ==============================
topic                      written by                                 in the ledger transaction?
=========================  =========================================  ==============================
``transactions/<kind>``    the authorization engine (every decision) yes
``holds/expired``          ``Store.expire_pending``                   yes
``keys/exchange``          ``Store.set_terminal_keys``                yes
``alerts/velocity``        :mod:`switch.velocity`                     no: no ledger effect
``disbursements/batch``    disbursement code (to come): use           must be
                           :func:`add_event` with this topic
``settlement/cutover``     cutover code (to come): use                must be
                           :func:`add_event` with this topic
=========================  =========================================  ==============================

SQLAlchemy lives here and in ``ledger/store.py``/``ledger/schema.py`` only.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    select,
    update,
)

# The payload format version (the ``schema`` field), the event topics (``TOPIC_*``), an event's
# stored form and its encoding live in ledger.store with Store.add_event, which writes events
# too: this module imports the store.
from ledger.store import EVENT_JSON, event_body, write_transaction

# Relative topics: lowercase words separated by "/", no wildcards, no leading or trailing "/".
_TOPIC = re.compile(r"[a-z0-9_-]+(/[a-z0-9_-]+)*", flags=re.ASCII)
# Anything shaped like a full PAN: 13 to 19 digits with no digit on either side.
_PAN_SHAPED = re.compile(r"(?<!\d)\d{13,19}(?!\d)", flags=re.ASCII)
# The event id is an opaque token; a hexadecimal digest may contain long digit runs by chance,
# so it is checked by its own rule (not all digits) instead of the PAN rule.
_EVENT_ID = re.compile(r"[0-9A-Za-z_.:-]{1,40}", flags=re.ASCII)

# The outbox as migration 5 leaves it (ledger/schema.py adds ``quarantined_at``).
_metadata = MetaData()
outbox = Table(
    "outbox",
    _metadata,
    Column("id", Integer, primary_key=True),
    Column("event_id", String(40), nullable=False, unique=True),
    Column("topic", String(120), nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("published_at", String(32)),
    Column("quarantined_at", String(32)),
)


class EventRefused(ValueError):
    """An event that must not be written or published (bad topic, or PAN-shaped content)."""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One stored event, as the publisher reads it."""

    id: int
    event_id: str
    topic: str
    payload: str  # JSON text, exactly as stored
    created_at: str


@dataclass(frozen=True, slots=True)
class OutboxLag:
    """How far the publisher is behind: unpublished events and the oldest one's creation time."""

    unpublished: int
    quarantined: int
    oldest_created_at: str | None

    def oldest_age_s(self, now: datetime) -> float:
        """Seconds since the oldest unpublished event was written (0.0 when none waits)."""
        if self.oldest_created_at is None:
            return 0.0
        created = datetime.fromisoformat(self.oldest_created_at)
        return max((now - created).total_seconds(), 0.0)


def pan_shaped_fields(payload: Any, path: str = "$") -> list[str]:
    """The JSON paths in ``payload`` (a decoded event) holding a 13-19 digit run.

    Keys, strings and integers are all checked; ``event_id`` must match its own token rule
    and not be all digits.

    >>> pan_shaped_fields({"pan_masked": "636214******4327", "amount": 1000})
    []
    >>> pan_shaped_fields({"note": "card 6362144899564327", "items": [1, "x"]})
    ['$.note']
    """
    found: list[str] = []
    if isinstance(payload, Mapping):
        for key, value in payload.items():
            where = f"{path}.{key}"
            if _PAN_SHAPED.search(str(key)):
                found.append(f"{path}[key]")
            if key == "event_id" and path == "$" and isinstance(value, str):
                if not _EVENT_ID.fullmatch(value) or value.isdigit():
                    found.append(where)
                continue
            found.extend(pan_shaped_fields(value, where))
    elif isinstance(payload, list | tuple):
        for index, value in enumerate(payload):
            found.extend(pan_shaped_fields(value, f"{path}[{index}]"))
    elif (
        isinstance(payload, str | int)
        and not isinstance(payload, bool)
        and _PAN_SHAPED.search(str(payload))
    ):
        found.append(path)
    return found


def check_topic(topic: str) -> str:
    """Return ``topic`` if it is a valid relative topic, else raise :class:`EventRefused`."""
    if len(topic) > 120 or not _TOPIC.fullmatch(topic):
        raise EventRefused(f"topic {topic!r}: lowercase words separated by '/', at most 120")
    return topic


def add_event(connection: Connection, topic: str, payload: Mapping[str, Any], now: str) -> str:
    """Write one event in the caller's transaction (with the ledger effect it reports).

    ``topic`` is relative (e.g. :data:`ledger.store.TOPIC_SETTLEMENT_CUTOVER`); ``payload``
    must carry ``type`` and ``time`` and must not hold a PAN (masked ``pan_masked`` only), a key
    or PIN data: anything PAN-shaped raises :class:`EventRefused` and the caller's transaction
    should roll back. Give ``event_id`` when the event must be idempotent (a retried batch writes
    the same id and the unique constraint refuses the duplicate). Returns the event id.
    """
    check_topic(topic)
    body = event_body(payload)
    bad = pan_shaped_fields(body)
    if bad:
        raise EventRefused(f"event for {topic} has PAN-shaped content at {', '.join(bad)}")
    connection.execute(
        outbox.insert().values(
            event_id=body["event_id"],
            topic=topic,
            payload=EVENT_JSON(body),
            created_at=now,
        )
    )
    return str(body["event_id"])


class Outbox:
    """Reads and marks outbox rows for a publisher (each method is one short transaction).

    ``write_lock`` (optional) is held around every write. On SQLite it must be the lock the
    group committer holds around its batches: a write committed by another connection while a
    batch's deferred transaction is between its reads and its first write makes that batch
    fail at once with "database is locked" (WAL snapshot conflict; the busy timeout does not
    apply), and its requests would be answered 96.
    """

    def __init__(
        self, engine: Engine, write_lock: AbstractContextManager[object] | None = None
    ) -> None:
        self.engine = engine
        self.write_lock: AbstractContextManager[object] = write_lock or contextlib.nullcontext()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        with self.write_lock, self.engine.connect() as connection, write_transaction(connection):
            yield connection

    def unpublished(self, limit: int, after_id: int = 0) -> list[OutboxRow]:
        """Up to ``limit`` events not yet published nor quarantined, oldest (lowest id) first."""
        assert limit > 0
        o = outbox.c
        query = (
            select(o.id, o.event_id, o.topic, o.payload, o.created_at)
            .where(o.published_at.is_(None), o.quarantined_at.is_(None), o.id > after_id)
            .order_by(o.id)
            .limit(limit)
        )
        with self.engine.connect() as connection:
            return [OutboxRow(*row) for row in connection.execute(query)]

    def mark_published(self, ids: Sequence[int], now: str) -> int:
        """Record that these events were acknowledged by the broker; return rows changed."""
        return self._mark(ids, published_at=now)

    def mark_quarantined(self, ids: Sequence[int], now: str) -> int:
        """Take these events out of publishing for good; return rows changed."""
        return self._mark(ids, quarantined_at=now)

    def _mark(self, ids: Sequence[int], **values: str) -> int:
        if not ids:
            return 0
        changed = 0
        with self._writing() as connection:
            # Chunks keep the IN list under every database's parameter limit.
            for start in range(0, len(ids), 500):
                chunk = list(ids[start : start + 500])
                result = connection.execute(
                    update(outbox).where(outbox.c.id.in_(chunk)).values(**values)
                )
                changed += result.rowcount
        return changed

    def lag(self) -> OutboxLag:
        """Unpublished and quarantined counts, and the oldest unpublished event's time."""
        o = outbox.c
        waiting = (o.published_at.is_(None), o.quarantined_at.is_(None))
        with self.engine.connect() as connection:
            count, oldest = connection.execute(
                select(func.count(), func.min(o.created_at)).where(*waiting)
            ).one()
            quarantined = connection.scalar(
                select(func.count()).where(o.quarantined_at.is_not(None))
            )
        return OutboxLag(int(count), int(quarantined or 0), oldest)

    def write_events(self, events: Iterable[tuple[str, Mapping[str, Any]]], now: str) -> list[str]:
        """Write events that have no ledger effect of their own, in one transaction."""
        with self._writing() as connection:
            return [add_event(connection, topic, payload, now) for topic, payload in events]

    def rows(self, topic_prefix: str = "") -> list[dict[str, Any]]:
        """Every stored event (for tools and tests), decoded, in id order."""
        o = outbox.c
        query = select(outbox).order_by(o.id)
        if topic_prefix:
            query = query.where(o.topic.startswith(topic_prefix))
        with self.engine.connect() as connection:
            return [
                {**row._asdict(), "payload": json.loads(row.payload)}
                for row in connection.execute(query)
            ]
