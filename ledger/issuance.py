"""Card issuance: PAN, expiry, PVV and card verification values, through the HSM.

Rules:

* A PAN is BIN ``636214``, nine random digits and a Luhn check digit (16 digits). The seventh
  digit is never ``9``: PANs ``6362149…`` are reserved for the synthetic members of
  spec/demo-data.md, so a later ``honar demo synthetic`` cannot collide with an issued card.
* The PIN leaves this module only as a Visa PVV (PVKI 1) computed by the HSM under the issuer
  PVK (setting ``pvk``, under the LMK).
* CVV (service code of the card), CVV2 (service code ``000``) and iCVV (``999``) are computed by
  the HSM under the issuer CVK (setting ``cvk``) and returned once to the caller; they are
  never stored.
* The PAN is stored only encrypted, as a keyed hash (for lookups) and masked.

Bad input (a PIN that is not 4-12 digits, an expiry in the past, an unknown member) raises
:class:`IssuanceError`, a ``ValueError`` whose message names the field.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Protocol

from ledger.demo import LIMITS_DEFAULT
from ledger.domain import CardRecord, mask_pan
from ledger.store import LedgerError, NewCard, Store

BIN = "636214"
PAN_LENGTH = 16
SERVICE_CODE = "101"  # international, normal authorization, no restrictions
SERVICE_CODE_CVV2 = "000"
SERVICE_CODE_ICVV = "999"
PVKI = 1
PIN_LENGTH_MIN = 4
PIN_LENGTH_MAX = 12
VALIDITY_YEARS = 5
PAN_ATTEMPTS_MAX = 20  # random PANs tried before giving up (a collision is ~1e-9 per try)
SYNTHETIC_PREFIX_DIGIT = "9"  # seventh digit reserved for synthetic members


class IssuanceError(ValueError):
    """Issuance input that cannot be used; nothing was stored."""


class IssuingHsm(Protocol):
    """What issuance needs from the HSM."""

    def generate_pvv(self, pvk_lmk: str, pan: str, pin: str, pvki: int) -> str:
        """The Visa PVV of ``pin`` for ``pan``."""
        ...

    def generate_cvv(self, cvk_lmk: str, pan: str, expiry_yymm: str, service_code: str) -> str:
        """The card verification value for ``pan``, its expiry and service code."""
        ...

    def pan_hash(self, pan: str) -> str:
        """The keyed hash the ledger finds a card by."""
        ...

    def encrypt_pan(self, pan: str) -> bytes:
        """The PAN encrypted for storage."""
        ...


@dataclass(frozen=True)
class IssuedCard:
    """A new card as shown once to the operator: the only time PAN and CVVs leave the system."""

    card_id: int
    member_id: str
    pan: str
    expiry: str  # YYMM
    service_code: str
    cvv: str
    cvv2: str
    icvv: str

    def __repr__(self) -> str:
        # Never let a log line or traceback carry the clear PAN or the CVVs.
        return f"IssuedCard(card_id={self.card_id}, member_id={self.member_id!r}, pan=<masked>)"


def luhn_digit(body: str) -> str:
    """The Luhn check digit that completes ``body`` (digits).

    >>> luhn_digit("636214768208571")
    '5'
    """
    total = 0
    for index, char in enumerate(reversed(body)):
        digit = int(char)
        if index % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return str((10 - total % 10) % 10)


def luhn_valid(pan: str) -> bool:
    """True when the last digit of ``pan`` is its Luhn check digit.

    >>> luhn_valid("6362147682085715"), luhn_valid("6362147682085716")
    (True, False)
    """
    return pan.isascii() and pan.isdigit() and len(pan) >= 2 and luhn_digit(pan[:-1]) == pan[-1]


def random_pan(random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> str:
    """A random 16-digit Luhn-valid PAN under the Honar BIN, outside the synthetic range."""
    digits_wanted = PAN_LENGTH - len(BIN) - 1
    while True:  # bounded in practice: 9 of 10 first digits are accepted
        number = int.from_bytes(random_bytes(8), "big") % 10**digits_wanted
        middle = f"{number:0{digits_wanted}d}"
        if middle[0] != SYNTHETIC_PREFIX_DIGIT:
            break
    body = BIN + middle
    return body + luhn_digit(body)


def default_expiry(today: date) -> str:
    """YYMM ``VALIDITY_YEARS`` years after ``today``'s month."""
    return f"{(today.year + VALIDITY_YEARS) % 100:02d}{today.month:02d}"


def check_pin(pin: str) -> None:
    """Raise IssuanceError unless ``pin`` is 4-12 decimal digits."""
    if not (pin.isascii() and pin.isdigit() and PIN_LENGTH_MIN <= len(pin) <= PIN_LENGTH_MAX):
        raise IssuanceError(f"--pin: a PIN is {PIN_LENGTH_MIN}-{PIN_LENGTH_MAX} digits")


def check_expiry(expiry: str, today: date) -> None:
    """Raise IssuanceError unless ``expiry`` is YYMM, a real month, not before ``today``."""
    if not (len(expiry) == 4 and expiry.isascii() and expiry.isdigit()):
        raise IssuanceError(f"--expiry {expiry!r}: expected YYMM, e.g. 2812")
    year, month = 2000 + int(expiry[:2]), int(expiry[2:])
    if not 1 <= month <= 12:
        raise IssuanceError(f"--expiry {expiry!r}: month {month:02d} is not 01-12")
    if (year, month) < (today.year, today.month):
        raise IssuanceError(f"--expiry {expiry!r}: the card would be expired already")


def issue_card(
    store: Store,
    hsm: IssuingHsm,
    member_id: str,
    pin: str,
    *,
    today: date,
    expiry: str | None = None,
    limits: Mapping[str, int] = LIMITS_DEFAULT,
    random_bytes: Callable[[int], bytes] = secrets.token_bytes,
) -> IssuedCard:
    """Issue a card for ``member_id`` with initial ``pin``; return it with its CVVs, once."""
    check_pin(pin)
    expiry = expiry or default_expiry(today)
    check_expiry(expiry, today)
    if store.member(member_id) is None:
        raise IssuanceError(f"--member {member_id!r}: no such member")
    pvk, cvk = _issuer_keys(store)
    for _attempt in range(PAN_ATTEMPTS_MAX):
        pan = random_pan(random_bytes)
        if store.find_card(hsm.pan_hash(pan)) is not None:
            continue
        card = new_card(hsm, pvk, member_id, pan, pin, expiry, limits=limits)
        try:
            card_id = store.insert_card(card)
        except LedgerError:
            continue  # another issuer took this PAN between our check and insert
        return IssuedCard(
            card_id=card_id,
            member_id=member_id,
            pan=pan,
            expiry=expiry,
            service_code=SERVICE_CODE,
            cvv=hsm.generate_cvv(cvk, pan, expiry, SERVICE_CODE),
            cvv2=hsm.generate_cvv(cvk, pan, expiry, SERVICE_CODE_CVV2),
            icvv=hsm.generate_cvv(cvk, pan, expiry, SERVICE_CODE_ICVV),
        )
    raise IssuanceError(f"no free PAN found in {PAN_ATTEMPTS_MAX} attempts")


def new_card(
    hsm: IssuingHsm,
    pvk: str,
    member_id: str,
    pan: str,
    pin: str,
    expiry: str,
    *,
    limits: Mapping[str, int],
    state: str = "active",
) -> NewCard:
    """The stored form of a card: encrypted, hashed and masked PAN; the PIN as a PVV."""
    assert luhn_valid(pan), "PANs are generated Luhn-valid"
    return NewCard(
        member_id=member_id,
        pan_hash=hsm.pan_hash(pan),
        pan_encrypted=hsm.encrypt_pan(pan),
        pan_masked=mask_pan(pan),
        expiry=expiry,
        service_code=SERVICE_CODE,
        pvki=PVKI,
        pvv=hsm.generate_pvv(pvk, pan, pin, PVKI),
        state=state,
        daily_amount_max=limits["daily_amount_max"],
        daily_count_max=limits["daily_count_max"],
        payment_amount_max=limits["payment_amount_max"],
        pin_tries_max=limits["pin_tries_max"],
    )


def card_by_pan(store: Store, hsm: IssuingHsm, pan: str) -> CardRecord:
    """The card with this PAN (looked up by keyed hash); IssuanceError if there is none."""
    if not (pan.isascii() and pan.isdigit() and 12 <= len(pan) <= 19):
        raise IssuanceError("--pan: a PAN is 12-19 digits")
    card = store.find_card(hsm.pan_hash(pan))
    if card is None:
        raise IssuanceError(f"--pan {mask_pan(pan)}: no such card")
    return card


def reset_pin(store: Store, hsm: IssuingHsm, pan: str, pin: str) -> CardRecord:
    """Give the card a new PIN (a new PVV) and clear its PIN failure counter."""
    check_pin(pin)
    card = card_by_pan(store, hsm, pan)
    pvk, _cvk = _issuer_keys(store, cvk_needed=False)
    store.update_card(card.id, pvv=hsm.generate_pvv(pvk, pan, pin, card.pvki), pin_failures=0)
    return card


def _issuer_keys(store: Store, *, cvk_needed: bool = True) -> tuple[str, str]:
    pvk = store.setting("pvk")
    cvk = store.setting("cvk")
    if pvk is None:
        raise IssuanceError("the ledger has no issuer PVK (setting 'pvk'); load the demo data")
    if cvk is None and cvk_needed:
        raise IssuanceError("the ledger has no issuer CVK (setting 'cvk'); load the demo data")
    return pvk, cvk or ""
