"""The switch with its HSM over TCP (payShield-style host commands), and when it is gone."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from pathlib import Path

from hsm_sim.commands import HostCommands
from hsm_sim.keys import Lmk
from hsm_sim.server import HsmServer
from scripts.pos import PosTerminal
from switch.config import HsmConfig

from conftest import make_config, running_switch
from helpers import M0002, amounts, ask


def test_purchase_with_the_hsm_over_tcp_then_91_when_it_is_gone(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    hsm = HsmServer(HostCommands(Lmk.test()), host="127.0.0.1", port=0)
    asyncio.run_coroutine_threadsafe(hsm.start(), loop).result(10)
    config = make_config(tmp_path)
    config = replace(config, hsm=HsmConfig(mode="tcp", port=hsm.port, timeout_s=1.0))
    try:
        with running_switch(config) as s:
            t = PosTerminal.demo("HNR00004")
            response, ok = ask(t, s.host, s.port,
                               t.purchase(pan=M0002[0], pin=M0002[1], amount=1_000))
            assert response.get(39) == "00" and ok is True
            wrong, _ = ask(t, s.host, s.port, t.purchase(pan=M0002[0], pin="0000", amount=1))
            assert wrong.get(39) == "55"
            asyncio.run_coroutine_threadsafe(hsm.stop(), loop).result(10)
            gone, _ = ask(t, s.host, s.port, t.purchase(pan=M0002[0], pin=M0002[1], amount=5))
            assert gone.get(39) == "91"
            balance = s.app.store.account_by_code("purse:M0002:GN").balance_credit
            assert balance == 3_000_000 - 1_000
            assert not amounts(gone)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
