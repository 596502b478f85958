"""Response codes (field 39) and their meanings, as in pos-interface.md §5."""

from __future__ import annotations

# fmt: off
RESPONSE_CODES = {
    "00": "approved",                       "57": "not permitted to cardholder",
    "03": "invalid merchant or terminal",   "58": "not permitted to terminal",
    "05": "do not honor",                   "61": "exceeds amount limit",
    "12": "invalid transaction",            "62": "restricted card (blocked)",
    "13": "invalid amount",                 "63": "security violation (MAC)",
    "14": "invalid card number",            "65": "exceeds frequency limit",
    "25": "original not found",             "75": "PIN tries exceeded",
    "30": "format error",                   "91": "issuer or HSM unavailable",
    "51": "insufficient funds",             "94": "duplicate transmission",
    "54": "expired card",                   "95": "reconciliation totals differ",
    "55": "incorrect PIN",                  "96": "system malfunction",
}
# fmt: on


def meaning(code: str) -> str:
    """What a response code means (``"unknown code"`` for one not in the table)."""
    return RESPONSE_CODES.get(code, "unknown code")
