"""Merchants and terminals as the switch sees them: an in-memory directory, refreshed on demand.

Keys stay encrypted under the LMK here; only the HSM can use them. When a MAC fails the switch
refreshes the terminal from the ledger once (another switch process may have exchanged its
keys) before it declines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Merchant:
    """A card acceptor."""

    id: str
    name: str
    mcc: str
    city: str
    chain: str
    sheba: str
    payable_account_id: int


@dataclass(frozen=True, slots=True)
class Terminal:
    """A POS terminal and its keys (each under the LMK; empty when not used)."""

    id: str
    merchant_id: str
    key_scheme: str  # tdes | dukpt
    tmk: str
    tpk: str
    tak: str
    bdk: str

    @property
    def dukpt(self) -> bool:
        """True for a DUKPT terminal (keys derived from the BDK and the KSN)."""
        return self.key_scheme == "dukpt"


class Directory:
    """Terminals and merchants by id."""

    def __init__(
        self,
        merchants: Iterable[Merchant],
        terminals: Iterable[Terminal],
        *,
        reload_terminal: Callable[[str], Terminal | None] | None = None,
    ) -> None:
        self._merchants = {m.id: m for m in merchants}
        self._terminals = {t.id: t for t in terminals}
        self._reload_terminal = reload_terminal

    def terminal(self, tid: str) -> Terminal | None:
        """The terminal with id ``tid``."""
        return self._terminals.get(tid)

    def merchant(self, merchant_id: str) -> Merchant | None:
        """The merchant with id ``merchant_id``."""
        return self._merchants.get(merchant_id)

    def refresh_terminal(self, tid: str) -> Terminal | None:
        """Read the terminal again from its source (keys may have changed elsewhere)."""
        if self._reload_terminal is None:
            return self._terminals.get(tid)
        fresh = self._reload_terminal(tid)
        if fresh is not None:
            self._terminals[tid] = fresh
        return fresh

    def replace_terminal(self, terminal: Terminal) -> None:
        """Put a changed terminal (new working keys) in force."""
        self._terminals[terminal.id] = terminal

    def __len__(self) -> int:
        return len(self._terminals)
