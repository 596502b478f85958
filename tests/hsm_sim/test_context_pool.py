"""The pooled cipher contexts in hsm_sim.des give what fresh contexts give, call after call."""

from __future__ import annotations

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_sim import des

KEYS = [bytes.fromhex(k) for k in ("0123456789ABCDEF", "0123456789ABCDEFFEDCBA9876543210")]


def fresh(key: bytes, mode: modes.Mode, data: bytes, *, decrypt: bool = False) -> bytes:
    cipher = Cipher(TripleDES(des.tdes_key_24(key)), mode)
    context = cipher.decryptor() if decrypt else cipher.encryptor()
    return context.update(data) + context.finalize()


blocks = st.integers(min_value=1, max_value=6).flatmap(
    lambda n: st.binary(min_size=8 * n, max_size=8 * n)
)
calls = st.lists(
    st.tuples(
        st.sampled_from(["ecb-e", "ecb-d", "cbc-e"]),
        st.sampled_from(range(len(KEYS))),
        st.binary(min_size=8, max_size=8),
        blocks,
    ),
    min_size=1,
    max_size=20,
)


@settings(max_examples=200, deadline=None)
@given(calls)
def test_pooled_contexts_match_fresh_ones(sequence: list[tuple[str, int, bytes, bytes]]) -> None:
    for kind, key_index, iv, data in sequence:
        key = KEYS[key_index]
        if kind == "ecb-e":
            assert des.encrypt_tdes_ecb(key, data) == fresh(key, modes.ECB(), data)
        elif kind == "ecb-d":
            assert des.decrypt_tdes_ecb(key, data) == fresh(key, modes.ECB(), data, decrypt=True)
        else:
            assert des.encrypt_tdes_cbc(key, iv, data) == fresh(key, modes.CBC(iv), data)


def test_a_full_pool_is_emptied_and_still_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(des, "CONTEXT_POOL_MAX", 2)
    keys = [bytes([i]) * 8 for i in range(1, 6)]
    for key in keys * 2:
        assert des.encrypt_tdes_ecb(key, bytes(8)) == fresh(key, modes.ECB(), bytes(8))
        assert len(des._TDES_ECB_ENCRYPT._free) <= 2
