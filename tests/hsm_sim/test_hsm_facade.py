"""The in-process Hsm facade, driven the way the switch's demo drives it."""

from __future__ import annotations

import pytest

from hsm_sim.des import decrypt_tdes_ecb, encrypt_tdes_ecb, kcv_tdes
from hsm_sim.dukpt import TdesVariant, derive_tdes_working_key, derive_transaction_key
from hsm_sim.hsm import Hsm, MacDirection, PinCheck, WorkingKey
from hsm_sim.keys import KeyFormatError, Lmk
from hsm_sim.mac import generate_mac_x9_19
from hsm_sim.pinblock import encipher_pinblock_iso_0

PVK = "F8B9C2DF23DF10232A80FD9B86891A5D"
CVK = "58E3F4A1490BC7452C7A7C7FE9E99145"
BDK = "0123456789ABCDEFFEDCBA9876543210"
TPK = "0123456789ABCDEFFEDCBA9876543210"
TAK = "89B07B35A1B3F47E89B07B35A1B3F47F"
TMK = "3B5D7F9A1C2E4F6A8B0D2F4A6C8E0A2C"
PAN = "6037991234567890"
PIN = "4321"


@pytest.fixture
def hsm() -> Hsm:
    counter = iter(range(1, 1_000_000))

    def deterministic(n: int) -> bytes:
        # A predictable source keeps failures reproducible; uniqueness is all GCM needs here.
        return next(counter).to_bytes(n, "big")

    return Hsm(lmk=Lmk.test(), random_bytes=deterministic)


def test_lmk_variant_vector_reproduced(hsm: Hsm) -> None:
    # jPOS: 4 x "12345678" as a ZPK under the test LMK (odd parity forced first).
    assert hsm.import_clear_key("12345678" * 4, "001") == "U34E2FC8EAD7CD07BFA2B7ED5FE4D8212"


def test_key_check_value(hsm: Hsm) -> None:
    bdk = hsm.import_clear_key(BDK, "009")
    assert hsm.key_check_value(bdk, "009") == "08D7B4"


def test_pvv_round_trip(hsm: Hsm) -> None:
    tpk, pvk = hsm.import_clear_key(TPK, "002"), hsm.import_clear_key(PVK, "002")
    pvv = hsm.generate_pvv(pvk, PAN, PIN, 1)
    block = encipher_pinblock_iso_0(bytes.fromhex(TPK), PIN, PAN)
    assert hsm.verify_pin_pvv(tpk, pvk, block, PAN, 1, pvv) is PinCheck.OK
    wrong = encipher_pinblock_iso_0(bytes.fromhex(TPK), "1111", PAN)
    assert hsm.verify_pin_pvv(tpk, pvk, wrong, PAN, 1, pvv) is PinCheck.MISMATCH
    assert hsm.verify_pin_pvv(tpk, pvk, block, PAN, 2, pvv) is PinCheck.MISMATCH


def test_invalid_pin_block(hsm: Hsm) -> None:
    tpk, pvk = hsm.import_clear_key(TPK, "002"), hsm.import_clear_key(PVK, "002")
    garbage = encrypt_tdes_ecb(bytes.fromhex(TPK), bytes.fromhex("1234FFFFFFFFFFFF"))
    assert hsm.verify_pin_pvv(tpk, pvk, garbage, PAN, 1, "0000") is PinCheck.INVALID_BLOCK
    assert hsm.verify_pin_pvv(tpk, pvk, b"\x00" * 7, PAN, 1, "0000") is PinCheck.INVALID_BLOCK
    # A block built for another PAN no longer decodes as format 0 for this one.
    other = encipher_pinblock_iso_0(bytes.fromhex(TPK), PIN, "4000001234562000")
    assert hsm.verify_pin_pvv(tpk, pvk, other, PAN, 1, "0000") is not PinCheck.OK


def test_pvv_dukpt(hsm: Hsm) -> None:
    bdk, pvk = hsm.import_clear_key(BDK, "009"), hsm.import_clear_key(PVK, "002")
    ksn = bytes.fromhex("FFFF9876543210E00012")
    pin_key = derive_tdes_working_key(
        derive_transaction_key(bytes.fromhex(BDK), ksn), TdesVariant.PIN
    )
    block = encipher_pinblock_iso_0(pin_key, PIN, PAN)
    pvv = hsm.generate_pvv(pvk, PAN, PIN, 1)
    assert hsm.verify_pin_pvv_dukpt(bdk, ksn, pvk, block, PAN, 1, pvv) is PinCheck.OK
    wrong_pvv = f"{(int(pvv) + 1) % 10000:04d}"
    assert hsm.verify_pin_pvv_dukpt(bdk, ksn, pvk, block, PAN, 1, wrong_pvv) is PinCheck.MISMATCH
    other_ksn = bytes.fromhex("FFFF9876543210E00013")
    assert hsm.verify_pin_pvv_dukpt(bdk, other_ksn, pvk, block, PAN, 1, pvv) is not PinCheck.OK


def test_mac_generate_verify_and_tamper(hsm: Hsm) -> None:
    tak = hsm.import_clear_key(TAK, "003")
    data = b"0200\x72\x3a ISO 8583 message body"
    mac = hsm.generate_mac(tak, data)
    assert len(mac) == 8
    assert mac == generate_mac_x9_19(bytes.fromhex(TAK), data, padding=1)
    assert hsm.verify_mac(tak, data, mac)
    assert hsm.verify_mac(tak, data, mac[:4])
    assert not hsm.verify_mac(tak, data + b"!", mac)
    assert not hsm.verify_mac(tak, data, bytes([mac[0] ^ 1]) + mac[1:])
    assert not hsm.verify_mac(tak, data, mac[:3])


def test_mac_dukpt_matches_x9_24_vector(hsm: Hsm) -> None:
    bdk = hsm.import_clear_key(BDK, "009")
    ksn = bytes.fromhex("FFFF9876543210E00001")
    data = b"4012345678909D987"
    request = hsm.generate_mac_dukpt(bdk, ksn, data, MacDirection.REQUEST)
    response = hsm.generate_mac_dukpt(bdk, ksn, data, MacDirection.RESPONSE)
    assert request[:4].hex().upper() == "9CCC7817"
    assert response[:4].hex().upper() == "20364223"
    assert hsm.verify_mac_dukpt(bdk, ksn, data, request, MacDirection.REQUEST)
    assert not hsm.verify_mac_dukpt(bdk, ksn, data, request, MacDirection.RESPONSE)
    assert not hsm.verify_mac_dukpt(bdk, ksn, data + b"0", request, MacDirection.REQUEST)


def test_cvv(hsm: Hsm) -> None:
    cvk = hsm.import_clear_key("0123456789ABCDEFFEDCBA9876543210", "402")
    assert hsm.generate_cvv(cvk, "4999988887777", "9105", "111") == "649"
    demo = hsm.import_clear_key(CVK, "402")
    cvv2 = hsm.generate_cvv(demo, PAN, "2812", "000")
    assert len(cvv2) == 3 and cvv2.isdigit()


def test_working_key_under_tmk(hsm: Hsm) -> None:
    tmk = hsm.import_clear_key(TMK, "002")
    for key_type in ("002", "003"):
        working = hsm.generate_working_key(tmk, key_type)
        assert isinstance(working, WorkingKey)
        assert len(working.under_tmk) == 32 and len(working.kcv) == 6
        clear = decrypt_tdes_ecb(bytes.fromhex(TMK), bytes.fromhex(working.under_tmk))
        assert kcv_tdes(clear).hex().upper() == working.kcv
        assert hsm.key_check_value(working.under_lmk, key_type) == working.kcv
    with pytest.raises(KeyFormatError):
        hsm.generate_working_key(tmk, "001")


def test_working_keys_differ() -> None:
    hsm = Hsm(lmk=Lmk.test())
    tmk = hsm.import_clear_key(TMK, "002")
    assert hsm.generate_working_key(tmk, "003") != hsm.generate_working_key(tmk, "003")


def test_pan_hash_is_stable_and_keyed(hsm: Hsm) -> None:
    first = hsm.pan_hash(PAN)
    assert first == Hsm(lmk=Lmk.test()).pan_hash(PAN)
    assert len(first) == 64 and int(first, 16) >= 0
    assert hsm.pan_hash("6037991234567891") != first
    other_lmk = Lmk.from_lines(["0123456789ABCDEFFEDCBA9876543210"] * 20)
    assert Hsm(lmk=other_lmk).pan_hash(PAN) != first
    with pytest.raises(ValueError):
        hsm.pan_hash("6037-9912")


def test_pan_encryption_round_trip(hsm: Hsm) -> None:
    blob = hsm.encrypt_pan(PAN)
    assert PAN.encode() not in blob
    assert hsm.decrypt_pan(blob) == PAN
    assert hsm.encrypt_pan(PAN) != blob  # fresh nonce each time
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(ValueError, match="authenticate"):
        hsm.decrypt_pan(tampered)
    with pytest.raises(ValueError, match="too short"):
        hsm.decrypt_pan(b"short")


def test_repr_shows_no_key_material(hsm: Hsm) -> None:
    assert repr(hsm) == f"Hsm(lmk=Lmk(check_value='{Lmk.test().check_value()}'))"
