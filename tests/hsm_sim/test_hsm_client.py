"""TcpHsmPort against the TCP simulator gives what InProcessHsmPort gives, or HsmUnavailable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from hsm_sim.client import HsmCommandError, TcpHsmPort
from hsm_sim.commands import HostCommands
from hsm_sim.des import decrypt_tdes_ecb
from hsm_sim.dukpt import TdesVariant, derive_tdes_working_key, derive_transaction_key
from hsm_sim.hsm import Hsm, MacDirection, PinCheck
from hsm_sim.keys import KeyFormatError, Lmk
from hsm_sim.pinblock import encipher_pinblock_iso_0
from hsm_sim.server import HsmServer
from switch.hsm_port import HsmUnavailable, InProcessHsmPort

LMK = Lmk.test()
HSM = Hsm(lmk=LMK)
TPK_CLEAR = "B9371C6DE54C290D83106D4C8F2A4F73"
TMK_CLEAR = "DFE34A2004FDC4075DF897E6CB15F794"
BDK_CLEAR = "0123456789ABCDEFFEDCBA9876543210"
TPK = HSM.import_clear_key(TPK_CLEAR, "002")
TAK = HSM.import_clear_key("49C49E738957EC19C434B98FE9518A07", "003")
PVK = HSM.import_clear_key("F8B9C2DF23DF10232A80FD9B86891A5D", "002")
TMK = HSM.import_clear_key(TMK_CLEAR, "002")
BDK = HSM.import_clear_key(BDK_CLEAR, "009")
KSN = bytes.fromhex("FFFF9876543210E00001")
PAN = "6037991234567890"
PIN = "4321"
DATA = b"0200 purchase message bytes \x00\x19\xff"


def with_port(test: Callable[[TcpHsmPort, InProcessHsmPort], Awaitable[None]]) -> None:
    async def run() -> None:
        async with HsmServer(HostCommands(LMK), port=0) as server:
            port = TcpHsmPort("127.0.0.1", server.port, pool_size=4, timeout_s=5)
            try:
                await asyncio.wait_for(test(port, InProcessHsmPort(HSM)), 30)
            finally:
                await port.close()

    asyncio.run(run())


def test_macs_match_the_in_process_port() -> None:
    async def test(tcp: TcpHsmPort, local: InProcessHsmPort) -> None:
        mac = await tcp.generate_mac(TAK, DATA)
        assert mac == await local.generate_mac(TAK, DATA)
        for candidate in (mac, mac[:4], mac[:6], mac[:3], b"\x00" * 8, mac[:4] + b"\x00"):
            assert await tcp.verify_mac(TAK, DATA, candidate) == await local.verify_mac(
                TAK, DATA, candidate
            )

    with_port(test)


def test_dukpt_macs_match_the_in_process_port() -> None:
    async def test(tcp: TcpHsmPort, local: InProcessHsmPort) -> None:
        for direction in MacDirection:
            mac = await tcp.generate_mac_dukpt(BDK, KSN, DATA, direction)
            assert mac == await local.generate_mac_dukpt(BDK, KSN, DATA, direction)
            for candidate in (mac, mac[:4], mac[:5], b"\x01" * 8):
                got = await tcp.verify_mac_dukpt(BDK, KSN, DATA, candidate, direction)
                assert got == await local.verify_mac_dukpt(BDK, KSN, DATA, candidate, direction)

    with_port(test)


def test_pvv_checks_match_the_in_process_port() -> None:
    async def test(tcp: TcpHsmPort, local: InProcessHsmPort) -> None:
        pvv = HSM.generate_pvv(PVK, PAN, PIN, 1)
        good = encipher_pinblock_iso_0(bytes.fromhex(TPK_CLEAR), PIN, PAN)
        wrong = encipher_pinblock_iso_0(bytes.fromhex(TPK_CLEAR), "1111", PAN)
        garbage = bytes.fromhex("0123456789ABCDEF")
        cases = [(good, pvv), (wrong, pvv), (garbage, pvv), (good[:7], pvv), (good, "12")]
        for block, value in cases:
            expected = await local.verify_pin_pvv(TPK, PVK, block, PAN, 1, value)
            assert await tcp.verify_pin_pvv(TPK, PVK, block, PAN, 1, value) == expected
        assert await tcp.verify_pin_pvv(TPK, PVK, good, PAN, 1, pvv) is PinCheck.OK
        assert await tcp.verify_pin_pvv(TPK, PVK, wrong, PAN, 1, pvv) is PinCheck.MISMATCH
        assert await tcp.verify_pin_pvv(TPK, PVK, garbage, PAN, 1, pvv) is PinCheck.INVALID_BLOCK

    with_port(test)


def test_dukpt_pvv_checks_match_the_in_process_port() -> None:
    async def test(tcp: TcpHsmPort, local: InProcessHsmPort) -> None:
        pin_key = derive_tdes_working_key(
            derive_transaction_key(bytes.fromhex(BDK_CLEAR), KSN), TdesVariant.PIN
        )
        pvv = HSM.generate_pvv(PVK, PAN, PIN, 1)
        good = encipher_pinblock_iso_0(pin_key, PIN, PAN)
        wrong = encipher_pinblock_iso_0(pin_key, "9999", PAN)
        for block in (good, wrong, bytes(8)):
            expected = await local.verify_pin_pvv_dukpt(BDK, KSN, PVK, block, PAN, 1, pvv)
            got = await tcp.verify_pin_pvv_dukpt(BDK, KSN, PVK, block, PAN, 1, pvv)
            assert got == expected
        assert await tcp.verify_pin_pvv_dukpt(BDK, KSN, PVK, good, PAN, 1, pvv) is PinCheck.OK

    with_port(test)


def test_generate_working_key_has_the_in_process_layout() -> None:
    async def test(tcp: TcpHsmPort, local: InProcessHsmPort) -> None:
        for key_type in ("002", "003"):
            key = await tcp.generate_working_key(TMK, key_type)
            reference = await local.generate_working_key(TMK, key_type)
            assert (len(key.under_lmk), len(key.under_tmk), len(key.kcv)) == (
                len(reference.under_lmk),
                len(reference.under_tmk),
                len(reference.kcv),
            )
            clear = decrypt_tdes_ecb(bytes.fromhex(TMK_CLEAR), bytes.fromhex(key.under_tmk))
            assert HSM.import_clear_key(clear.hex(), key_type) == key.under_lmk
            assert HSM.key_check_value(key.under_lmk, key_type) == key.kcv
        with pytest.raises(KeyFormatError):
            await tcp.generate_working_key(TMK, "001")

    with_port(test)


def test_error_codes_other_than_outcomes_raise_hsm_command_error() -> None:
    async def test(tcp: TcpHsmPort, local: InProcessHsmPort) -> None:
        single_tak = HSM.import_clear_key("0123456789ABCDEF", "003", scheme="Z")
        with pytest.raises(HsmCommandError) as caught:
            await tcp.generate_mac(single_tak, DATA)
        assert caught.value.error_code == "27"

    with_port(test)


def test_one_hundred_concurrent_calls() -> None:
    async def test(tcp: TcpHsmPort, local: InProcessHsmPort) -> None:
        payloads = [DATA + bytes([i]) for i in range(100)]
        macs = await asyncio.gather(*(tcp.generate_mac(TAK, p) for p in payloads))
        assert list(macs) == [HSM.generate_mac(TAK, p) for p in payloads]

    with_port(test)


def test_silent_server_gives_hsm_unavailable_within_the_timeout() -> None:
    async def run() -> None:
        held: list[asyncio.StreamWriter] = []

        async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)  # accept and never answer

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tcp = TcpHsmPort("127.0.0.1", port, timeout_s=0.3)
        started = time.monotonic()
        with pytest.raises(HsmUnavailable):
            await tcp.verify_mac(TAK, DATA, bytes(8))
        assert time.monotonic() - started < 2
        await tcp.close()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(run())


def test_refused_connection_gives_hsm_unavailable() -> None:
    async def run() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(HsmUnavailable):
            await TcpHsmPort("127.0.0.1", port, timeout_s=1).generate_mac(TAK, DATA)

    asyncio.run(run())


def test_a_server_that_hangs_up_gives_hsm_unavailable_and_the_pool_recovers() -> None:
    async def run() -> None:
        async with HsmServer(HostCommands(LMK), port=0) as server:
            tcp = TcpHsmPort("127.0.0.1", server.port, pool_size=1, timeout_s=2)
            assert await tcp.generate_mac(TAK, DATA) == HSM.generate_mac(TAK, DATA)
            await server.stop()
            with pytest.raises(HsmUnavailable):
                await tcp.generate_mac(TAK, DATA)
            await server.start()
            assert await tcp.generate_mac(TAK, DATA) == HSM.generate_mac(TAK, DATA)
            await tcp.close()

    asyncio.run(run())
