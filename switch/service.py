"""The switch's request handling: one message in, one response out (or nothing).

:meth:`Service.handle` is called by the TCP server (and by replay and the benchmarks) with the
payload of one frame. In order it: decodes, identifies the terminal, verifies the MAC, parses the
request, checks merchant and MCC, and runs the flow for the message kind. Flows verify the PIN
through the HSM port, then hand a pure decision to the ledger's group committer; the response is
built only after the ledger has committed. Every response but ``63`` (and those to unknown
terminals) carries a MAC.

Rules (MTI and processing code -> flow):

=====  ===============  ==============================
MTI    processing code  flow
=====  ===============  ==============================
0800   (field 70)       sign-on, sign-off, echo, key exchange
0200   000000           purchase
0200   310000           balance inquiry
=====  ===============  ==============================

Anything else is answered ``12``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Protocol

from hsm_sim.hsm import Hsm, MacDirection, PinCheck
from ledger.domain import (
    AuthorizationJob,
    CardRecord,
    JobResult,
    LedgerView,
    Outcome,
    TransactionKey,
    mask_pan,
)
from ledger.store import LedgerError, Store
from merchants.directory import Directory, Merchant, Terminal
from merchants.discounts import DiscountRule
from switch import authorize, flows
from switch.authorize import PinResult
from switch.calendar import BusinessCalendar
from switch.codec import CodecError, Message, decode, encode, encode_for_mac, mac_input
from switch.dialects import Dialect, shetab87
from switch.flows import FlowContext
from switch.hsm_port import HsmPort, HsmUnavailable
from switch.logs import log_fields
from switch.requests import (
    NETWORK_ECHO,
    NETWORK_KEY_EXCHANGE,
    NETWORK_SIGN_OFF,
    NETWORK_SIGN_ON,
    PROCESSING_BALANCE,
    PROCESSING_PURCHASE,
    PROCESSING_RECONCILIATION,
    PROCESSING_REFUND,
    FinancialRequest,
    NetworkRequest,
    Request,
    RequestError,
    build_tlv,
    luhn_valid,
    parse_request,
    request_digest,
)

log = logging.getLogger("honar.switch")

_PIN_RESULTS = {
    PinCheck.OK: PinResult.OK,
    PinCheck.MISMATCH: PinResult.MISMATCH,
    PinCheck.INVALID_BLOCK: PinResult.INVALID_BLOCK,
}


class Service:
    """Everything needed to answer a terminal's message."""

    def __init__(
        self,
        *,
        dialect: Dialect,
        store: Store,
        committer: GroupCommitterLike,
        hsm: HsmPort,
        local_hsm: Hsm,
        directory: Directory,
        pvk_lmk: str,
        calendar: BusinessCalendar,
        rules: tuple[DiscountRule, ...] = (),
        program_accounts: dict[str, int] | None = None,
        hold_period_s: int = 7 * 24 * 3600,
        card_cache_max: int = 100_000,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.dialect = dialect
        self.store = store
        self.committer = committer
        self.hsm = hsm
        self.local_hsm = local_hsm
        self.directory = directory
        self.pvk_lmk = pvk_lmk
        self.calendar = calendar
        self.clock = clock
        self.rules = rules
        # Called after every answered request (metrics, velocity alerts); must not block.
        self.observers: list[Callable[[Decision], None]] = []
        self.program_accounts = dict(program_accounts or {})
        self.hold_period_s = hold_period_s
        self._cards: OrderedDict[str, CardRecord] = OrderedDict()
        self.card_cache_max = card_cache_max
        # New working keys wait here until the 0810 that carries them has been MACed.
        self._pending_keys: dict[str, Terminal] = {}

    # --- entry point ----------------------------------------------------------------------------

    async def handle(self, payload: bytes, *, peer: str = "") -> bytes | None:
        """Answer one message; None means "log and drop" (nothing identifiable to answer)."""
        started = time.perf_counter()
        try:
            wire = decode(payload, self.dialect)
        except CodecError as undecodable:
            return await self._answer_undecodable(undecodable, peer)
        if self.dialect.response_mti.get(wire.mti) is None:
            return await self._answer_unknown_mti(wire, peer)
        try:
            message = self.dialect.to_canonical(wire)
        except ValueError as untranslatable:
            return await self._answer_undecodable(
                CodecError(str(untranslatable), field="t", partial=_partial(wire)), peer
            )
        response_mti = CANONICAL_RESPONSE_MTI[message.mti]
        if not (message.has(11) and message.has(41)):
            # A terminal matches answers by MTI, field 11 and field 41: without them, no answer.
            log.warning(
                "request without field 11 or 41 dropped", extra={"peer": peer, "mti": wire.mti}
            )
            return None
        terminal = self.directory.terminal(message.get(41) or "")
        if terminal is None:
            log.warning(
                "unknown terminal", extra={"peer": peer, "tid": message.get(41), "mti": wire.mti}
            )
            return self._encode_plain(self._response(message, response_mti, "03"), wire)
        try:
            request = parse_request(message)
        except RequestError as invalid:
            log.warning(
                "invalid request",
                extra={"peer": peer, "reason": str(invalid), "tid": terminal.id, "mti": wire.mti},
            )
            response = self._response(message, response_mti, invalid.response_code)
            return await self._encode_signed(response, terminal, wire)
        try:
            mac_ok, terminal = await self._check_mac(payload, wire, request, terminal)
        except HsmUnavailable as unavailable:
            log.error("HSM unavailable", extra={"tid": terminal.id, "error": str(unavailable)})
            # Without the HSM no MAC can be checked or made: 91, unsigned.
            return self._encode_plain(self._response(message, response_mti, "91"), wire)
        if not mac_ok:
            log.warning(
                "MAC verification failed",
                extra={"peer": peer, "tid": terminal.id, "stan": request.stan, "mti": wire.mti},
            )
            return self._encode_plain(self._response(message, response_mti, "63"), wire)
        try:
            code, fields = await self._dispatch(request, terminal)
        except HsmUnavailable as unavailable:
            log.error("HSM unavailable", extra={"tid": terminal.id, "error": str(unavailable)})
            code, fields = "91", {}
        except LedgerError as failure:
            log.error("ledger failure", extra={"tid": terminal.id, "error": str(failure)})
            code, fields = "96", {}
        except Exception:  # a bug must cost one answer (96), never the server
            log.exception("request failed", extra={"tid": terminal.id, "stan": request.stan})
            code, fields = "96", {}
        response = self._response(message, response_mti, code, fields)
        try:
            raw = await self._encode_signed(response, terminal, wire)
        except HsmUnavailable as unavailable:
            log.error("HSM unavailable for the response MAC", extra={"error": str(unavailable)})
            raw = self._encode_plain(response, wire)
        pan = ""
        if isinstance(request, FinancialRequest) and request.card is not None:
            pan = request.card.pan
        decision = Decision(
            mti=message.mti,
            kind=_kind_of(request),
            tid=terminal.id,
            stan=request.stan,
            response_code=code,
            amount=request.amount if isinstance(request, FinancialRequest) else 0,
            pan=pan,
            elapsed_s=time.perf_counter() - started,
        )
        for observer in self.observers:
            observer(decision)
        log_fields(
            log,
            logging.INFO,
            "answered",
            {
                "peer": peer,
                "mti": message.mti,
                "tid": terminal.id,
                "stan": request.stan,
                "pan": mask_pan(pan) if pan else None,
                "response_code": code,
                "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
            },
        )
        return raw

    async def _dispatch(self, request: Request, terminal: Terminal) -> tuple[str, dict[int, str]]:
        if isinstance(request, NetworkRequest):
            return await self._network(request, terminal)
        assert isinstance(request, FinancialRequest)
        merchant = self.directory.merchant(terminal.merchant_id)
        if merchant is None or (request.merchant_id not in (None, merchant.id)):
            return "03", {}
        if request.mcc is not None and request.mcc != merchant.mcc:
            return "58", {}
        if request.currency is not None and request.currency != authorize.CURRENCY:
            return "12", {}
        kind = flow_kind(request)
        if kind is None:
            return "12", {}
        return await self._financial(request, terminal, merchant, kind)

    # --- financial flows ----------------------------------------------------------------------

    async def _financial(
        self, request: FinancialRequest, terminal: Terminal, merchant: Merchant, kind: str
    ) -> tuple[str, dict[int, str]]:
        pan = request.card.pan if request.card is not None else None
        if pan is not None and not luhn_valid(pan):
            return "14", {}
        try:
            return await self._authorize(request, terminal, merchant, kind, pan, fresh=False)
        except flows.StaleCard:
            # The card's PIN data changed since we cached it: look it up again, verify again.
            return await self._authorize(request, terminal, merchant, kind, pan, fresh=True)

    async def _card(self, pan: str, *, fresh: bool) -> CardRecord | None:
        """The card for a PAN; cached by keyed hash (only its id and PVV are used from the
        cache: every decision re-reads the card, and a changed PVV forces a fresh look-up)."""
        pan_hash = self.local_hsm.pan_hash(pan)
        card = None if fresh else self._cards.get(pan_hash)
        if card is not None:
            self._cards.move_to_end(pan_hash)
            return card
        loop = asyncio.get_running_loop()
        card = await loop.run_in_executor(None, self.store.find_card, pan_hash)
        if card is not None:
            self._cards[pan_hash] = card
            while len(self._cards) > self.card_cache_max:
                self._cards.popitem(last=False)
        return card

    async def _authorize(
        self,
        request: FinancialRequest,
        terminal: Terminal,
        merchant: Merchant,
        kind: str,
        pan: str | None,
        *,
        fresh: bool,
    ) -> tuple[str, dict[int, str]]:
        key = TransactionKey(request.tid, request.stan, request.transmission)
        digest = request_digest(request.message)
        loop = asyncio.get_running_loop()
        card: CardRecord | None = None
        card_id: int | None = None
        if kind in PIN_FLOWS or (kind == "refund" and pan is not None):
            assert pan is not None
            card = await self._card(pan, fresh=fresh)
            card_id = None if card is None else card.id
        elif kind in ("completion", "reversal", "advice") and request.original is not None:
            original_key = TransactionKey(
                request.tid, request.original.stan, request.original.transmission
            )
            original = await loop.run_in_executor(None, self.store.find_transaction, original_key)
            card_id = None if original is None else original.card_id
        pin = PinResult.MISSING
        if kind in PIN_FLOWS:
            pin = await self._verify_pin(request, terminal, card)
        now = self.clock()
        today = self.calendar.business_date(now)
        context = FlowContext(
            today=today,
            now=now,
            pin=pin,
            merchant=merchant,
            rules=self.rules,
            program_accounts=self.program_accounts,
            hold_period_s=self.hold_period_s,
        )
        job = AuthorizationJob(
            key=key,
            mti=request.base_mti,
            kind=kind,
            processing_code=request.processing_code,
            request_digest=digest,
            card_id=card_id,
            merchant_id=merchant.id,
            pan_masked=None if pan is None else mask_pan(pan),
            business_date=today.isoformat(),
            now=now.isoformat(),
            decide=functools.partial(
                _decide, kind, request, context, None if card is None else (card.pvki, card.pvv)
            ),
        )
        result = await self.committer.submit_to_loop(job, loop)
        if result.replayed:
            return _replayed(result)
        return result.response_code, dict(result.response_fields)

    async def _verify_pin(
        self, request: FinancialRequest, terminal: Terminal, card: CardRecord | None
    ) -> PinResult:
        if request.pin_block is None:
            return PinResult.MISSING
        if card is None or request.card is None:
            return PinResult.INVALID_BLOCK  # no card: the decision is 14 whatever the PIN
        if terminal.dukpt:
            if request.ksn is None:
                return PinResult.INVALID_BLOCK
            check = await self.hsm.verify_pin_pvv_dukpt(
                terminal.bdk,
                request.ksn,
                self.pvk_lmk,
                request.pin_block,
                request.card.pan,
                card.pvki,
                card.pvv,
            )
        else:
            check = await self.hsm.verify_pin_pvv(
                terminal.tpk,
                self.pvk_lmk,
                request.pin_block,
                request.card.pan,
                card.pvki,
                card.pvv,
            )
        return _PIN_RESULTS[check]

    # --- network management -------------------------------------------------------------------

    async def _network(
        self, request: NetworkRequest, terminal: Terminal
    ) -> tuple[str, dict[int, str]]:
        if request.code in (NETWORK_SIGN_ON, NETWORK_SIGN_OFF, NETWORK_ECHO):
            return "00", {70: request.code}
        if request.code != NETWORK_KEY_EXCHANGE:
            return "12", {70: request.code}
        if terminal.dukpt or not terminal.tmk:
            return "12", {70: request.code}
        tpk = await self.hsm.generate_working_key(terminal.tmk, "002")
        tak = await self.hsm.generate_working_key(terminal.tmk, "003")
        loop = asyncio.get_running_loop()
        now = self.clock().isoformat()
        event = {
            "event_id": hashlib.sha256(
                f"{terminal.id}|{request.stan}|{request.transmission}".encode()
            ).hexdigest()[:32],
            "type": "key_exchange",
            "time": now,
            "terminal_id": terminal.id,
            "stan": request.stan,
            "mti": request.mti,
            "response_code": "00",
            "tpk_kcv": tpk.kcv,
            "tak_kcv": tak.kcv,
        }
        await loop.run_in_executor(
            None,
            functools.partial(
                self.store.set_terminal_keys, terminal.id, tpk=tpk.under_lmk,
                tak=tak.under_lmk, event=event, now=now,
            ),
        )
        # The 0810 itself is MACed with the TAK the request used; the new keys are in force
        # from the next request on (the caller encodes before replacing the directory entry).
        self._pending_keys[terminal.id] = replace(terminal, tpk=tpk.under_lmk, tak=tak.under_lmk)
        fields = {
            70: request.code,
            48: build_tlv(
                {"TPK": tpk.under_tmk, "TAK": tak.under_tmk, "TKC": tpk.kcv, "AKC": tak.kcv}
            ),
        }
        log.info(
            "working keys exchanged",
            extra={"tid": terminal.id, "tpk_kcv": tpk.kcv, "tak_kcv": tak.kcv},
        )
        return "00", fields

    # --- MAC and responses -------------------------------------------------------------------

    async def _check_mac(
        self, payload: bytes, wire: Message, request: Request, terminal: Terminal
    ) -> tuple[bool, Terminal]:
        required = not (
            isinstance(request, NetworkRequest) and request.code != NETWORK_KEY_EXCHANGE
        )
        data = mac_input(payload, wire)
        if data is None:
            return (not required), terminal
        mac = bytes(payload[-8:])
        if await self._verify_mac(terminal, wire, data, mac):
            return True, terminal
        loop = asyncio.get_running_loop()
        fresh = await loop.run_in_executor(None, self.directory.refresh_terminal, terminal.id)
        if fresh is not None and fresh != terminal:
            return await self._verify_mac(fresh, wire, data, mac), fresh
        return False, terminal

    async def _verify_mac(
        self, terminal: Terminal, message: Message, data: bytes, mac: bytes
    ) -> bool:
        if terminal.dukpt:
            ksn = message.binary(53)
            if ksn is None:
                return False
            return await self.hsm.verify_mac_dukpt(
                terminal.bdk, ksn, data, mac, MacDirection.REQUEST
            )
        return await self.hsm.verify_mac(terminal.tak, data, mac)

    def _response(
        self,
        request: Message,
        response_mti: str,
        code: str,
        fields: Mapping[int, str] | None = None,
    ) -> Message:
        out = {n: request.fields[n] for n in CANONICAL_ECHO_FIELDS if n in request.fields}
        if request.mti[:2] == "08" and 70 in request.fields:
            out[70] = request.fields[70]
        out.update(fields or {})
        out[39] = code
        return Message(response_mti, out)

    def _to_wire(self, response: Message, wire_request: Message | None) -> Message:
        return self.dialect.to_wire(response, wire_request, self.clock().year)

    def _encode_plain(self, response: Message, wire_request: Message | None) -> bytes:
        return encode(self._to_wire(response, wire_request), self.dialect)

    async def _encode_signed(
        self, response: Message, terminal: Terminal, wire_request: Message
    ) -> bytes:
        return await self._sign_wire(self._to_wire(response, wire_request), terminal, wire_request)

    async def _sign_wire(
        self, wire_response: Message, terminal: Terminal, wire_request: Message
    ) -> bytes:
        """Encode a wire-level response with its MAC (none when the key cannot be known)."""
        raw = encode_for_mac(wire_response, self.dialect)
        if terminal.dukpt:
            ksn = wire_request.binary(53)
            if ksn is None:
                return encode(wire_response, self.dialect)
            mac = await self.hsm.generate_mac_dukpt(
                terminal.bdk, ksn, raw[:-8], MacDirection.RESPONSE
            )
        else:
            mac = await self.hsm.generate_mac(terminal.tak, raw[:-8])
        encoded = raw[:-8] + mac
        pending = self._pending_keys.pop(terminal.id, None)
        if pending is not None:
            self.directory.replace_terminal(pending)
        return encoded

    def _wire_code(self, code: str) -> str:
        return self._to_wire(Message("0210", {39: code}), None).fields[39]

    async def _answer_undecodable(self, error: CodecError, peer: str) -> bytes | None:
        partial = error.partial
        mti, stan, tid = partial.get("t", ""), partial.get("11", ""), partial.get("41", "")
        response_mti = self.dialect.response_mti.get(mti)
        readable = response_mti is not None and len(stan) == 6 and stan.isdigit() and len(tid) == 8
        log.warning(
            "undecodable message", extra={"peer": peer, "error": str(error), "answered": readable}
        )
        if not readable or response_mti is None:
            return None
        return await self._answer_wire(Message(mti, {11: stan, 41: tid}), response_mti, "30")

    async def _answer_unknown_mti(self, message: Message, peer: str) -> bytes | None:
        mti = message.mti
        log.warning("unsupported MTI", extra={"peer": peer, "mti": mti})
        if int(mti[2]) % 2 or not (message.has(11) and message.has(41)):
            return None  # a response or advice-response sent to us, or unidentifiable
        return await self._answer_wire(message, mti[:2] + str(int(mti[2]) + 1) + "0", "12")

    async def _answer_wire(self, wire_request: Message, response_mti: str, code: str) -> bytes:
        """A bare wire-level answer (fields 11, 41, 39) to a request the flows never saw."""
        fields = {n: wire_request.fields[n] for n in (11, 41) if n in wire_request.fields}
        fields[39] = self._wire_code(code)
        wire_response = Message(response_mti, fields)
        terminal = self.directory.terminal(wire_request.get(41) or "")
        if terminal is None or terminal.dukpt:
            return encode(wire_response, self.dialect)
        return await self._sign_wire(wire_response, terminal, wire_request)


@dataclass(frozen=True, slots=True)
class Decision:
    """What observers hear about each answered request (the PAN is for in-process velocity
    checks only: observers must mask it before it leaves the process)."""

    mti: str
    kind: str
    tid: str
    stan: str
    response_code: str
    amount: int
    pan: str
    elapsed_s: float


def _kind_of(request: Request) -> str:
    if isinstance(request, NetworkRequest):
        return "network"
    assert isinstance(request, FinancialRequest)
    return flow_kind(request) or "unsupported"


def _partial(wire: Message) -> dict[str, str]:
    return {"t": wire.mti, **{str(k): v for k, v in wire.fields.items()}}


CANONICAL_RESPONSE_MTI = shetab87.RESPONSE_MTI
CANONICAL_ECHO_FIELDS = shetab87.ECHO_FIELDS

# (base MTI, processing code) -> flow; None as processing code: any.
FLOW_KINDS: dict[tuple[str, str | None], str] = {
    ("0200", PROCESSING_PURCHASE): "purchase",
    ("0200", PROCESSING_BALANCE): "balance",
    ("0200", PROCESSING_REFUND): "refund",
    ("0100", PROCESSING_PURCHASE): "preauth",
    ("0220", PROCESSING_PURCHASE): "completion",
    ("0400", None): "reversal",
    ("0420", None): "advice",
    ("0500", PROCESSING_RECONCILIATION): "reconciliation",
}
PIN_FLOWS = frozenset({"purchase", "balance", "preauth"})


def flow_kind(request: FinancialRequest) -> str | None:
    """The flow serving a request, or None (answered 12)."""
    return FLOW_KINDS.get((request.base_mti, request.processing_code)) or FLOW_KINDS.get(
        (request.base_mti, None)
    )


def _decide(
    kind: str,
    request: FinancialRequest,
    context: FlowContext,
    pin_data: tuple[int, str] | None,
    view: LedgerView,
) -> Outcome:
    if view.business_date != context.today.isoformat():
        # The request counts in a later open date (its own was closed early).
        context = replace(context, today=date.fromisoformat(view.business_date))
    if pin_data is not None and kind in PIN_FLOWS:
        snapshot = view.snapshot
        if snapshot is not None and (snapshot.card.pvki, snapshot.card.pvv) != pin_data:
            raise flows.StaleCard(f"card {snapshot.card.id}: PVV changed since verification")
    if kind == "purchase":
        outcome = flows.decide_purchase(request, view, context)
    elif kind == "balance":
        outcome = flows.decide_balance(request, view, context)
    elif kind == "refund":
        outcome = flows.decide_refund(request, view, context)
    elif kind == "preauth":
        outcome = flows.decide_preauth(request, view, context)
    elif kind == "completion":
        outcome = flows.decide_completion(request, view, context)
    elif kind in ("reversal", "advice"):
        outcome = flows.decide_reversal(request, view, context, advice=kind == "advice")
        if kind == "advice":
            outcome = replace(outcome, response_code="00")  # advices are always acknowledged
    else:
        assert kind == "reconciliation", kind
        outcome = flows.decide_reconciliation(request, view, context)
    fields = dict(outcome.response_fields)
    today = context.today
    fields[15] = f"{today.month:02d}{today.day:02d}"  # MMDD (strftime costs several times more)
    return replace(outcome, response_fields=fields)


def _replayed(result: JobResult) -> tuple[str, dict[int, str]]:
    if result.conflict:
        return "94", {}
    return result.response_code, dict(result.response_fields)


class GroupCommitterLike(Protocol):
    """Structural type of :class:`ledger.engine.GroupCommitter` as the service uses it."""

    def submit(self, job: AuthorizationJob) -> concurrent.futures.Future[JobResult]:
        """Queue a job; the future resolves once its batch has committed."""
        ...

    def submit_to_loop(
        self, job: AuthorizationJob, loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[JobResult]:
        """Queue a job; the asyncio future resolves once its batch has committed."""
        ...
