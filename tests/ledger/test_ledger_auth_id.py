"""The authorization id (field 38) is derived from the transaction id and the request's key;
the derivation must not change between versions, or one request's retransmission handled by a
new version would not match what an earlier one answered."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from ledger.domain import TransactionKey
from ledger.engine import authorization_id


def reference(transaction_id: int, key: TransactionKey) -> str:
    """The original definition: the digest of ``id|repr(key)``, six decimal digits."""
    digest = hashlib.sha256(f"{transaction_id}|{key!r}".encode()).hexdigest()
    return f"{int(digest[:8], 16) % 1_000_000:06d}"


@given(st.integers(1, 10**12), st.text(max_size=12), st.text(max_size=8), st.text(max_size=12))
def test_authorization_id_is_the_original_derivation(
    transaction_id: int, tid: str, stan: str, transmission: str
) -> None:
    key = TransactionKey(tid, stan, transmission)
    assert authorization_id(transaction_id, key) == reference(transaction_id, key)


def test_authorization_id_known_answer() -> None:
    key = TransactionKey("HNR00001", "000123", "1204103000")
    digest = hashlib.sha256(
        b"42|TransactionKey(tid='HNR00001', stan='000123', transmission='1204103000')"
    ).hexdigest()
    assert authorization_id(42, key) == f"{int(digest[:8], 16) % 1_000_000:06d}"
    assert len(authorization_id(42, key)) == 6
