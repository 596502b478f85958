"""The wire-level message value shared by the codec, the dialects and the flows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Message:
    """An ISO 8583 message: MTI and fields (number -> value; binary values as hex)."""

    mti: str
    fields: Mapping[int, str] = field(default_factory=dict)

    def get(self, number: int) -> str | None:
        """The value of field ``number`` or None."""
        return self.fields.get(number)

    def has(self, number: int) -> bool:
        """True when field ``number`` is present."""
        return number in self.fields

    def binary(self, number: int) -> bytes | None:
        """The value of a binary field as bytes, or None."""
        value = self.fields.get(number)
        return None if value is None else bytes.fromhex(value)
