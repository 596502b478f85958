"""The demo data set of spec/demo-data.md, loaded into an empty ledger.

Every value here is a published test value (keys, PANs, PINs). Keys go into the database only
encrypted under the LMK; PINs only as PVVs; PANs only encrypted and as keyed hashes. Balances
come from program disbursement transfers, never from a balance written directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from ledger import schema
from ledger.domain import mask_pan
from ledger.model import AccountFlags, Transfer, TransferCode, TransferStatus
from ledger.store import Store

log = logging.getLogger("honar.ledger")

ACQUIRER_ID = "636214"
PVK_CLEAR = "F8B9C2DF23DF10232A80FD9B86891A5D"
CVK_CLEAR = "58E3F4A1490BC7452C7A7C7FE9E99145"
BDK_CLEAR = "0123456789ABCDEFFEDCBA9876543210"
DUKPT_INITIAL_KSN = "FFFF9876543210E00000"
DEMO_DATE = "2026-01-01"


class IssuingHsm(Protocol):
    """What loading demo data needs from the HSM."""

    def import_clear_key(self, clear_hex: str, key_type: str, scheme: str = "U") -> str:
        """A clear key, encrypted under the LMK for ``key_type``."""
        ...

    def generate_pvv(self, pvk_lmk: str, pan: str, pin: str, pvki: int) -> str:
        """The Visa PVV of ``pin`` for ``pan``."""
        ...

    def pan_hash(self, pan: str) -> str:
        """The keyed hash the ledger finds a card by."""
        ...

    def encrypt_pan(self, pan: str) -> bytes:
        """The PAN encrypted for storage."""
        ...


@dataclass(frozen=True)
class DemoMerchant:
    """A merchant row of the demo data."""

    id: str
    name: str
    mcc: str
    city: str
    chain: str
    sheba: str


@dataclass(frozen=True)
class DemoTerminal:
    """A terminal row of the demo data (clear keys: the terminal's own knowledge)."""

    id: str
    merchant_id: str
    tmk: str
    tpk: str
    tak: str
    dukpt: bool = False


@dataclass(frozen=True)
class DemoCard:
    """A member and card row of the demo data."""

    member_id: str
    name: str
    pan: str
    expiry: str
    service_code: str
    pin: str
    state: str
    purses: tuple[tuple[str, int], ...]


# fmt: off
MERCHANTS = (
    DemoMerchant("HNR000000000001", "Abbasi Hotel",            "7011", "Isfahan", "ITTO", "IR210620000000100123456001"),
    DemoMerchant("HNR000000000002", "Shahr-e Ketab Bookstore", "5942", "Tehran",  "",     "IR170620000000100987654002"),
    DemoMerchant("HNR000000000003", "Vahdat Hall",             "7922", "Tehran",  "",     "IR210560000000200113355003"),
    DemoMerchant("HNR000000000004", "Ofogh Kourosh Market",    "5411", "Tehran",  "",     "IR200170000000300246801004"),
)

TERMINALS = (
    DemoTerminal("HNR00001", "HNR000000000001", "BF519EFED3D57C6BE05D54FD38793B1C",
                 "0B4FA4EF4F6BE5E9B6C74F19862A15BA", "A47C83C1974C1A43F1ADB9809425EFF7"),
    DemoTerminal("HNR00002", "HNR000000000002", "19CD862CD5AEA70E0B5894AB7CAD0DC7",
                 "401F67FE792561C7F4E3B00875CE2591", "D96DA4899752752A61BC611FF76176C2"),
    DemoTerminal("HNR00003", "HNR000000000003", "", "", "", dukpt=True),
    DemoTerminal("HNR00004", "HNR000000000004", "DFE34A2004FDC4075DF897E6CB15F794",
                 "B9371C6DE54C290D83106D4C8F2A4F73", "49C49E738957EC19C434B98FE9518A07"),
)

PROGRAMS = (
    ("FUND-GEN", "Art Credit Fund — general support"),
    ("MOC-TOUR", "Ministry of Culture — tourism grant 1405"),
    ("MOC-BOOK", "Deputy for Culture — book grant 1405"),
)

# purse code: (funding program, chains, merchant ids, MCCs, expires)
PURSE_KINDS = {
    "GN": ("FUND-GEN", "",     "", "",     None),
    "TR": ("MOC-TOUR", "ITTO", "", "7011", "2027-03-20"),
    "BK": ("MOC-BOOK", "",     "", "5942", "2027-03-20"),
}

CARDS = (
    DemoCard("M0001", "Parvaneh Ahmadi", "6362147682085715", "2812", "101", "1234", "active",  (("GN", 50_000_000), ("TR", 20_000_000))),
    DemoCard("M0002", "Kaveh Rostami",   "6362149173324546", "2812", "101", "4321", "active",  (("GN", 3_000_000),)),
    DemoCard("M0003", "Shirin Tehrani",  "6362148033590999", "2812", "101", "1111", "blocked", (("GN", 10_000_000),)),
    DemoCard("M0004", "Dariush Karimi",  "6362149895682841", "2401", "101", "2222", "active",  (("GN", 10_000_000),)),
    DemoCard("M0005", "Leila Farahani",  "6362140409390583", "2812", "101", "0000", "active",  (("BK", 5_000_000),)),
    DemoCard("M0006", "Hamid Saberi",    "6362144899564327", "2812", "101", "9876", "active",  (("GN", 1_000_000_000),)),
)
# fmt: on

# code: (chains, merchant ids, MCCs, percent, cap, uses max, period, funded by, valid from, to)
DISCOUNT_RULES = {
    "HOTEL20": ("ITTO", "", "", 20, 5_000_000, 4, "month", "merchant", "2026-01-01", "2027-12-31"),
    "BOOK10": ("", "", "5942", 10, 1_000_000, 0, "", "MOC-BOOK", "2026-01-01", "2027-12-31"),
}

LIMITS_DEFAULT = {
    "daily_amount_max": 200_000_000,
    "daily_count_max": 50,
    "payment_amount_max": 500_000_000,
    "pin_tries_max": 3,
}
LIMITS_LOAD = {**LIMITS_DEFAULT, "daily_amount_max": 10_000_000_000, "daily_count_max": 1_000_000}
LOAD_MEMBERS = {"M0006"}


def program_account_code(program: str) -> str:
    """Account code of a program's funding account."""
    return f"program:{program}"


def purse_account_code(member_id: str, purse: str) -> str:
    """Account code of a member's purse."""
    return f"purse:{member_id}:{purse}"


def merchant_account_code(merchant_id: str) -> str:
    """Account code of a merchant's payable account."""
    return f"merchant:{merchant_id}:payable"


def load_demo(store: Store, hsm: IssuingHsm) -> None:
    """Create the demo programs, merchants, terminals, members, cards and disburse purses.

    One database transaction: either all of it is there afterwards or none of it.
    """
    pvk = hsm.import_clear_key(PVK_CLEAR, "002")
    cvk = hsm.import_clear_key(CVK_CLEAR, "402")
    bdk = hsm.import_clear_key(BDK_CLEAR, "009")
    with store.transaction() as connection:
        program_accounts: dict[str, int] = {}
        for code, name in PROGRAMS:
            account_id = store.create_account(
                connection, program_account_code(code), AccountFlags.NONE
            )
            program_accounts[code] = account_id
            connection.execute(
                schema.programs.insert().values(code=code, name=name, account_id=account_id)
            )
        for purse, (_program, chains, merchant_ids, mccs, expires) in PURSE_KINDS.items():
            connection.execute(
                schema.purse_kinds.insert().values(
                    code=purse, chains=chains, merchant_ids=merchant_ids, mccs=mccs, expires=expires
                )
            )
        for code, rule in DISCOUNT_RULES.items():
            chains, ids, mccs, percent, cap, uses, period, funded_by, start, end = rule
            connection.execute(
                schema.discount_rules.insert().values(
                    code=code,
                    chains=chains,
                    merchant_ids=ids,
                    mccs=mccs,
                    percent=percent,
                    fixed_amount=0,
                    cap_amount=cap,
                    uses_max=uses,
                    uses_period=period,
                    funded_by=funded_by,
                    valid_from=start,
                    valid_to=end,
                )
            )
        for m in MERCHANTS:
            payable = store.create_account(
                connection, merchant_account_code(m.id), AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
            )
            connection.execute(
                schema.merchants.insert().values(
                    id=m.id,
                    name=m.name,
                    mcc=m.mcc,
                    city=m.city,
                    chain=m.chain,
                    sheba=m.sheba,
                    payable_account_id=payable,
                )
            )
        for t in TERMINALS:
            keys = {"tmk": "", "tpk": "", "tak": "", "bdk": ""}
            if t.dukpt:
                keys["bdk"] = bdk
            else:
                keys["tmk"] = hsm.import_clear_key(t.tmk, "002")
                keys["tpk"] = hsm.import_clear_key(t.tpk, "002")
                keys["tak"] = hsm.import_clear_key(t.tak, "003")
            connection.execute(
                schema.terminals.insert().values(
                    id=t.id,
                    merchant_id=t.merchant_id,
                    key_scheme="dukpt" if t.dukpt else "tdes",
                    signed_on=False,
                    **keys,
                )
            )
        for c in CARDS:
            connection.execute(schema.members.insert().values(id=c.member_id, name=c.name))
            limits = LIMITS_LOAD if c.member_id in LOAD_MEMBERS else LIMITS_DEFAULT
            connection.execute(
                schema.cards.insert().values(
                    member_id=c.member_id,
                    pan_hash=hsm.pan_hash(c.pan),
                    pan_encrypted=hsm.encrypt_pan(c.pan),
                    pan_masked=mask_pan(c.pan),
                    expiry=c.expiry,
                    service_code=c.service_code,
                    pvki=1,
                    pvv=hsm.generate_pvv(pvk, c.pan, c.pin, 1),
                    state=c.state,
                    pin_failures=0,
                    **limits,
                )
            )
            for purse, amount in c.purses:
                program, _chains, _ids, _mccs, expires = PURSE_KINDS[purse]
                account_id = store.create_account(
                    connection,
                    purse_account_code(c.member_id, purse),
                    AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
                )
                connection.execute(
                    schema.purses.insert().values(
                        member_id=c.member_id,
                        code=purse,
                        account_id=account_id,
                        program_code=program,
                        expires=expires,
                    )
                )
                transfer = Transfer(
                    id=f"demo:disburse:{c.member_id}:{purse}",
                    debit_account_id=program_accounts[program],
                    credit_account_id=account_id,
                    amount=amount,
                    ledger=364,
                    code=TransferCode.DISBURSEMENT,
                    user_data=f"demo disbursement {program}",
                )
                status = store.post_transfer(
                    connection, transfer, business_date=DEMO_DATE, now=f"{DEMO_DATE}T00:00:00+00:00"
                )
                assert status is TransferStatus.CREATED, status
        connection.execute(schema.settings.insert().values(key="pvk", value=pvk))
        connection.execute(schema.settings.insert().values(key="cvk", value=cvk))
    log.info("demo data loaded", extra={"members": len(CARDS), "terminals": len(TERMINALS)})
