"""``honar events``: watch the switch's MQTT events, or publish the outbox from its own process.

    honar events tail [--broker URL] [--topic T ...] [--count N] [--json]
    honar events publish [--broker URL]
    honar events lag

``tail`` subscribes (QoS 1) to ``honar/v1/{environment}/#`` (or the given topics; a topic not
starting with ``honar/`` is taken under the environment's root) and prints one line per event:
time, topic, type, terminal, STAN, response code, amount, masked PAN. Repeats of an
``event_id`` already printed are shown as such (QoS 1 may deliver twice).

``publish`` runs the outbox publisher alone, for deployments with several switch processes on
one PostgreSQL ledger: leave ``[events] broker_url`` empty in the switches and run one of these.

``lag`` prints how many events wait in the outbox, how many are quarantined, and the oldest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any, TextIO

import aiomqtt

from ledger.outbox import Outbox
from switch.config import Config, load_config
from switch.publish import Publisher, make_client, topic_prefix

SEEN_MAX = 100_000  # event ids remembered for de-duplication


def register(commands: Any) -> None:
    """Add ``honar events`` and its subcommands."""
    parser = commands.add_parser("events", help="MQTT events: tail, publish, lag")
    sub = parser.add_subparsers(dest="events_command", required=True)
    tail = sub.add_parser("tail", help="subscribe and print events, one line each")
    tail.add_argument("--broker", help="mqtt://host:port (default: [events] broker_url)")
    tail.add_argument("--topic", action="append", help="topic filter (repeatable)")
    tail.add_argument("--count", type=int, help="exit after this many events")
    tail.add_argument("--json", action="store_true", help="print each payload as JSON")
    tail.set_defaults(func=_tail)
    publish = sub.add_parser("publish", help="publish the outbox until Ctrl-C")
    publish.add_argument("--broker", help="mqtt://host:port (default: [events] broker_url)")
    publish.set_defaults(func=_publish)
    lag = sub.add_parser("lag", help="events waiting in the outbox")
    lag.set_defaults(func=_lag)


def topic_filters(config: Config, topics: list[str] | None) -> list[str]:
    """Full topic filters: ``honar/v1/{env}/#`` by default; relative ones under that root.

    >>> topic_filters(Config(), ["transactions/#", "honar/v1/prod/alerts/#"])
    ['honar/v1/dev/transactions/#', 'honar/v1/prod/alerts/#']
    """
    root = topic_prefix(config.events.environment)
    if not topics:
        return [f"{root}/#"]
    return [t if t.startswith("honar/") else f"{root}/{t.lstrip('/')}" for t in topics]


def event_line(topic: str, event: dict[str, Any]) -> str:
    """One readable line for an event.

    >>> event_line("honar/v1/dev/transactions/purchase", {"time": "T", "type": "purchase",
    ...     "terminal_id": "HNR00004", "stan": "000001", "response_code": "00", "amount": 1000,
    ...     "pan_masked": "636214******4327"})
    'T  transactions/purchase  purchase  HNR00004  000001  00  1,000  636214******4327'
    """
    short = topic.split("/", 3)[3] if topic.count("/") >= 3 else topic
    amount = event.get("amount")
    kind = str(event.get("type", "-"))
    if event.get("rule"):
        kind = f"{kind}:{event['rule']}"
    cells = [
        str(event.get("time", "-")),
        short,
        f"{event.get('type', '-')}:{event['rule']}"
        if event.get("rule")
        else str(event.get("type", "-")),
        str(event.get("terminal_id") or "-"),
        str(event.get("stan") or "-"),
        str(event.get("response_code") or "-"),
        f"{amount:,}" if isinstance(amount, int) else "-",
        str(event.get("pan_masked") or "-"),
    ]
    return "  ".join(cells)


async def tail(
    config: Config,
    broker: str | None,
    topics: list[str] | None,
    *,
    count: int | None = None,
    as_json: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    """Subscribe and print events until ``count`` were printed (or forever)."""
    url = broker or config.events.broker_url
    if not url:
        raise ValueError("no broker: give --broker mqtt://host:port or set [events] broker_url")
    seen: OrderedDict[str, None] = OrderedDict()
    printed = 0
    async with make_client(config.events, broker_url=url) as client:
        for pattern in topic_filters(config, topics):
            await client.subscribe(pattern, qos=1)
        async for message in client.messages:
            raw = message.payload
            text = (
                raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray) else str(raw)
            )
            try:
                event = json.loads(text)
            except ValueError:
                print(f"(not JSON on {message.topic.value})", file=out, flush=True)
                continue
            event_id = str(event.get("event_id", ""))
            repeat = event_id in seen
            seen[event_id] = None
            if len(seen) > SEEN_MAX:
                seen.popitem(last=False)
            if as_json:
                line = json.dumps({"topic": message.topic.value, "repeat": repeat, **event})
            else:
                line = event_line(message.topic.value, event) + ("  (repeat)" if repeat else "")
            print(line, file=out, flush=True)
            printed += 1
            if count is not None and printed >= count:
                return 0
    return 0


async def _tail(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    try:
        return await tail(config, args.broker, args.topic, count=args.count, as_json=args.json)
    except aiomqtt.MqttError as error:
        print(f"honar events tail: broker: {error}", file=sys.stderr)
        return 1


async def _publish(args: argparse.Namespace) -> int:
    from ledger.store import Store

    config = load_config(args.config)
    url = args.broker or config.events.broker_url
    if not url:
        raise ValueError("no broker: give --broker mqtt://host:port or set [events] broker_url")
    store = Store(config.ledger_url)
    store.migrate()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    publisher = Publisher(Outbox(store.engine), config.events, broker_url=url)
    print(f"publishing {config.ledger_url} to {url}; Ctrl-C stops", flush=True)
    try:
        await publisher.run(stop)
    finally:
        store.close()
    print(f"published {publisher.published}, quarantined {publisher.quarantined}")
    return 0


def _lag(args: argparse.Namespace) -> int:
    from ledger.store import Store

    config = load_config(args.config)
    store = Store(config.ledger_url)
    try:
        lag = Outbox(store.engine).lag()
    finally:
        store.close()
    age = lag.oldest_age_s(datetime.now(UTC))
    print(f"unpublished  {lag.unpublished:>12,}")
    print(f"quarantined  {lag.quarantined:>12,}")
    print(f"oldest       {lag.oldest_created_at or '-'} ({age:.1f} s)")
    return 0
