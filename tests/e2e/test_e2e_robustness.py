"""End to end over real TCP: bad frames, limits, concurrency, pipelining, shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hsm_sim.hsm import Hsm, PinCheck
from hsm_sim.keys import Lmk
from scripts.pos import PosClient, PosTerminal
from switch.codec import Message, decode, encode
from switch.dialects import get_dialect
from switch.hsm_port import InProcessHsmPort

from conftest import RunningSwitch, fresh_postgres_database, make_config, running_switch
from helpers import M0002, M0006, amounts, ask, talk

DIALECT = get_dialect("shetab87")


def raw_exchange(host: str, port: int, data: bytes, *, wait_s: float = 2.0) -> bytes:
    """Send raw bytes, half-close, and read until the switch closes or ``wait_s`` passes."""
    with socket.create_connection((host, port), timeout=wait_s) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
        return received


def test_garbage_frame_is_dropped_and_the_connection_keeps_serving(
    switch_sqlite: RunningSwitch,
) -> None:
    s, t = switch_sqlite, PosTerminal.demo("HNR00004")

    async def run() -> bytes:
        client = await PosClient.connect(s.host, s.port)
        try:
            await client.send(b"\x00\xff garbage that is no ISO 8583 message \x13")
            return await client.request(t.network("301"))
        finally:
            await client.close()

    response = decode(asyncio.run(run()), DIALECT)
    assert response.mti == "0810" and response.get(39) == "00"


def test_undecodable_but_identifiable_request_gets_30(switch_sqlite: RunningSwitch) -> None:
    s, t = switch_sqlite, PosTerminal.demo("HNR00004")
    good = decode(t.purchase(pan=M0002[0], pin=M0002[1], amount=5), DIALECT)
    raw = encode(good, DIALECT)
    bad = raw.replace(b"364", b"3X4")  # field 49 must be numeric: decodes, fails validation
    (answer,) = talk(s.host, s.port, [bad])
    response = decode(answer, DIALECT)
    assert response.mti == "0210" and response.get(39) == "30"
    assert response.get(11) == good.get(11) and response.get(41) == "HNR00004"


def test_oversized_length_prefix_closes_the_connection(switch_sqlite: RunningSwitch) -> None:
    s = switch_sqlite
    assert raw_exchange(s.host, s.port, b"9999" + b"0" * 100) == b""
    assert raw_exchange(s.host, s.port, b"12ab") == b""  # not 4 digits
    t = PosTerminal.demo("HNR00004")
    assert ask(t, s.host, s.port, t.network("301"))[0].get(39) == "00"  # still up


def test_frame_cut_in_the_middle_is_not_processed(switch_sqlite: RunningSwitch) -> None:
    s, t = switch_sqlite, PosTerminal.demo("HNR00004")
    payload = t.purchase(pan=M0002[0], pin=M0002[1], amount=1_000_000)
    framed = b"%04d" % len(payload) + payload
    assert raw_exchange(s.host, s.port, framed[: len(framed) // 2], wait_s=0.5) == b""
    balance = ask(t, s.host, s.port, t.balance(pan=M0002[0], pin=M0002[1]))[0]
    assert amounts(balance)[("GN", "02")] == 3_000_000


def test_200_concurrent_connections(switch_sqlite: RunningSwitch) -> None:
    s = switch_sqlite
    connections, per_connection, amount = 200, 3, 1_000

    async def one(index: int) -> list[str]:
        t = PosTerminal.demo("HNR00004")
        t.profile.stan = index * 100
        client = await PosClient.connect(s.host, s.port)
        try:
            codes = []
            for _ in range(per_connection):
                raw = await client.request(
                    t.purchase(pan=M0006[0], pin=M0006[1], amount=amount), timeout_s=60
                )
                message, ok = t.check_response(raw)
                assert ok is True
                codes.append(message.get(39) or "")
            return codes
        finally:
            await client.close()

    async def run() -> list[list[str]]:
        return await asyncio.gather(*(one(i) for i in range(connections)))

    results = asyncio.run(run())
    assert [c for codes in results for c in codes] == ["00"] * connections * per_connection
    totals = s.app.store.totals()
    assert totals.balanced
    purse = s.app.store.account_by_code("purse:M0006:GN")
    assert purse.balance_credit == 1_000_000_000 - connections * per_connection * amount
    assert s.app.committer.batches < s.app.committer.jobs, "group commit should batch"


def test_pipelined_requests_on_one_connection(switch_sqlite: RunningSwitch) -> None:
    s, t = switch_sqlite, PosTerminal.demo("HNR00004")
    payloads = [t.purchase(pan=M0006[0], pin=M0006[1], amount=10) for _ in range(50)]

    async def run() -> list[bytes]:
        client = await PosClient.connect(s.host, s.port)
        try:
            for p in payloads:  # all sent before any response is read
                await client.send(p)
            return [await client.receive(30) for _ in payloads]
        finally:
            await client.close()

    responses = [decode(r, DIALECT) for r in asyncio.run(run())]
    sent = sorted(decode(p, DIALECT).get(11) or "" for p in payloads)
    assert sorted(r.get(11) or "" for r in responses) == sent
    assert {r.get(39) for r in responses} == {"00"}


def test_connections_beyond_the_cap_are_refused(tmp_path: Path) -> None:
    with running_switch(make_config(tmp_path, connections_max=2)) as s:
        keep = [socket.create_connection((s.host, s.port)) for _ in range(2)]
        time.sleep(0.2)
        try:
            assert raw_exchange(s.host, s.port, b"", wait_s=1.0) == b""
            assert s.app.server.refused >= 1
        finally:
            for sock in keep:
                sock.close()
        time.sleep(0.2)
        t = PosTerminal.demo("HNR00004")
        assert ask(t, s.host, s.port, t.network("301"))[0].get(39) == "00"


def test_idle_connections_are_closed(tmp_path: Path) -> None:
    with running_switch(make_config(tmp_path, idle_timeout_s=0.3)) as s:
        started = time.monotonic()
        assert raw_exchange(s.host, s.port, b"", wait_s=5.0) == b""
        assert time.monotonic() - started < 4.0


class SlowHsm(InProcessHsmPort):
    """An HSM that takes its time verifying PINs (to catch requests in flight)."""

    async def verify_pin_pvv(
        self, tpk_lmk: str, pvk_lmk: str, pin_block: bytes, pan: str, pvki: int, pvv: str
    ) -> PinCheck:
        await asyncio.sleep(0.5)
        return await super().verify_pin_pvv(tpk_lmk, pvk_lmk, pin_block, pan, pvki, pvv)


def test_graceful_shutdown_finishes_requests_in_flight(tmp_path: Path) -> None:
    hsm = SlowHsm(Hsm(lmk=Lmk.test()))
    with running_switch(make_config(tmp_path), hsm_port=hsm) as s:
        t = PosTerminal.demo("HNR00004")
        payloads = [t.purchase(pan=M0002[0], pin=M0002[1], amount=100) for _ in range(5)]

        async def run() -> list[bytes]:
            client = await PosClient.connect(s.host, s.port)
            for p in payloads:
                await client.send(p)
            await asyncio.sleep(0.1)  # all five are now waiting on the HSM
            shutdown = asyncio.get_running_loop().run_in_executor(None, s.shutdown)
            answers = [await client.receive(10) for _ in payloads]
            await shutdown
            await client.close()
            return answers

        answers = [decode(r, DIALECT).get(39) for r in asyncio.run(run())]
        assert answers == ["00"] * 5
        assert s.app.store.account_by_code("purse:M0002:GN").balance_credit == 3_000_000 - 500
        with pytest.raises(OSError):
            socket.create_connection((s.host, s.port), timeout=1).close()


def test_sigterm_stops_the_real_process_gracefully(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "switch.cli",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert f"listening on 127.0.0.1:{port}" in line, line
        t = PosTerminal.demo("HNR00004")
        assert (
            ask(t, "127.0.0.1", port, t.purchase(pan=M0002[0], pin=M0002[1], amount=7))[0].get(39)
            == "00"
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        assert process.stderr is not None
        log = process.stderr.read()
        assert '"msg": "stopped"' in log and "6362149173324546" not in log
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.postgres
def test_purchase_on_postgresql(tmp_path: Path) -> None:
    with fresh_postgres_database() as url, running_switch(make_config(tmp_path, url)) as s:
        t = PosTerminal.demo("HNR00004")
        response, ok = ask(
            t, s.host, s.port, t.purchase(pan=M0002[0], pin=M0002[1], amount=1_000_000)
        )
        assert response.get(39) == "00" and ok is True
        balance = ask(t, s.host, s.port, t.balance(pan=M0002[0], pin=M0002[1]))[0]
        assert amounts(balance)[("GN", "02")] == 2_000_000
        too_much = ask(t, s.host, s.port, t.purchase(pan=M0002[0], pin=M0002[1], amount=2_000_001))[
            0
        ]
        assert too_much.get(39) == "51"
        assert s.app.store.totals().balanced


def test_message_without_identity_is_dropped(switch_sqlite: RunningSwitch) -> None:
    s = switch_sqlite
    # decodable MTI but missing field 41: nothing to answer, dropped; connection stays
    bare = encode(Message("0200", {3: "000000", 11: "000001"}), DIALECT)
    t = PosTerminal.demo("HNR00004")

    async def run() -> bytes:
        client = await PosClient.connect(s.host, s.port)
        try:
            await client.send(bare)
            return await client.request(t.network("301"))
        finally:
            await client.close()

    assert decode(asyncio.run(run()), DIALECT).mti == "0810"
