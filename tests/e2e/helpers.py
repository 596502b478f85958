"""Small helpers for end-to-end tests over TCP."""

from __future__ import annotations

import asyncio

from scripts.pos import PosClient, PosTerminal
from switch.codec import Message
from switch.dialects.base import Framing

M0002 = ("6362149173324546", "4321")
M0003 = ("6362148033590999", "1111")
M0004 = ("6362149895682841", "2222")
M0006 = ("6362144899564327", "9876")


def talk(
    host: str,
    port: int,
    payloads: list[bytes],
    *,
    framing: Framing = Framing.ASCII4,
    timeout_s: float = 10.0,
) -> list[bytes]:
    """Send each payload in turn on one connection, returning each response payload."""

    async def run() -> list[bytes]:
        client = await PosClient.connect(host, port, framing)
        try:
            return [await client.request(p, timeout_s) for p in payloads]
        finally:
            await client.close()

    return asyncio.run(run())


def ask(terminal: PosTerminal, host: str, port: int, payload: bytes) -> tuple[Message, bool | None]:
    """Send one request and return the decoded response and whether its MAC is right."""
    (raw,) = talk(host, port, [payload])
    return terminal.check_response(raw, payload)


def amounts(message: Message) -> dict[tuple[str, str], int]:
    """Field 54 as {(account type, amount type): signed amount}."""
    value = message.get(54) or ""
    out = {}
    for i in range(0, len(value), 20):
        block = value[i : i + 20]
        sign = -1 if block[7] == "D" else 1
        out[(block[:2], block[2:4])] = sign * int(block[8:20])
    return out
