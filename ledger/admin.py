"""Member and card administration for the Fund's operators (what ``honar members/cards`` call).

Input problems raise :class:`AdminError` (a ``ValueError``) naming the argument; storage refusals
come as ``ledger.store.LedgerError``. Nothing is half applied: each operation is one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.domain import CardRecord, Purse
from ledger.issuance import IssuingHsm, card_by_pan
from ledger.store import MemberRecord, Store

MEMBER_ID_LENGTH_MAX = 20
MEMBER_NAME_LENGTH_MAX = 200
MEMBER_ID_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
LIST_LIMIT_MAX = 10_000


class AdminError(ValueError):
    """An administration request that cannot be carried out; nothing changed."""


@dataclass(frozen=True)
class MemberView:
    """A member with its cards and purses, for ``honar members show``."""

    member: MemberRecord
    cards: tuple[CardRecord, ...]
    purses: tuple[Purse, ...]


def add_member(store: Store, member_id: str, name: str) -> MemberRecord:
    """Create a member; the id is 1-20 of ``A-Z 0-9 -``, the name 1-200 characters."""
    if (
        not 1 <= len(member_id) <= MEMBER_ID_LENGTH_MAX
        or not set(member_id) <= MEMBER_ID_CHARACTERS
    ):
        raise AdminError(f"--id {member_id!r}: 1-{MEMBER_ID_LENGTH_MAX} characters of A-Z 0-9 -")
    name = name.strip()
    if not 1 <= len(name) <= MEMBER_NAME_LENGTH_MAX:
        raise AdminError(f"--name: 1-{MEMBER_NAME_LENGTH_MAX} characters")
    store.add_member(member_id, name)
    return MemberRecord(member_id, name)


def member_view(store: Store, member_id: str) -> MemberView:
    """The member with its cards and purses; AdminError when there is no such member."""
    member = store.member(member_id)
    if member is None:
        raise AdminError(f"member {member_id!r}: no such member")
    return MemberView(member, tuple(store.member_cards(member_id)), store.member_purses(member_id))


def list_members(store: Store, *, limit: int, offset: int = 0) -> list[MemberRecord]:
    """Members in id order (``limit`` at most ``LIST_LIMIT_MAX``)."""
    if not 1 <= limit <= LIST_LIMIT_MAX:
        raise AdminError(f"--limit: 1-{LIST_LIMIT_MAX:,}, got {limit}")
    if offset < 0:
        raise AdminError(f"--offset: 0 or more, got {offset}")
    return store.members(limit=limit, offset=offset)


def set_card_state(store: Store, hsm: IssuingHsm, pan: str, state: str) -> CardRecord:
    """Block or unblock a card; unblocking also clears its PIN failure counter."""
    assert state in ("active", "blocked"), state
    card = card_by_pan(store, hsm, pan)
    if state == "active":
        store.update_card(card.id, state=state, pin_failures=0)
    else:
        store.update_card(card.id, state=state)
    return card
