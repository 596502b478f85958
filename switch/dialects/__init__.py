"""Dialects are data: a field table, a framing, and code tables (DESIGN.md decision 2).

A :class:`Dialect` is everything that differs between one ISO 8583 profile and another. Flows
never look at a dialect directly; the codec and the request model translate.
"""

from __future__ import annotations

from switch.dialects.base import Dialect, FieldSpec, Framing
from switch.dialects.shetab87 import SHETAB87
from switch.dialects.shetab93 import SHETAB93

DIALECTS: dict[str, Dialect] = {SHETAB87.name: SHETAB87, SHETAB93.name: SHETAB93}


def get_dialect(name: str) -> Dialect:
    """Return the dialect called ``name`` or raise ``ValueError`` listing the known ones."""
    try:
        return DIALECTS[name]
    except KeyError:
        known = ", ".join(sorted(DIALECTS))
        raise ValueError(f"unknown dialect {name!r}; known dialects: {known}") from None


__all__ = ["DIALECTS", "Dialect", "FieldSpec", "Framing", "get_dialect"]
