"""The Fund operators' commands: members, cards, purses, program disbursement, synthetic members.

    honar members add --id M0007 --name "Sara Jafari"
    honar members list [--limit 50] [--offset 0]
    honar members show M0001
    honar cards issue --member M0007 --pin 1234 [--expiry 3012]   (prints PAN, expiry, CVV2 once)
    honar cards block|unblock --pan PAN
    honar cards reset-pin --pan PAN --pin NNNN
    honar purses expire [--date YYYY-MM-DD]
    honar programs disburse --program MOC-BOOK --file grant.csv --batch-id BK-1405-01
    honar demo synthetic --members 100000

Every command opens the configured ledger (``--config``, or ``--ledger-url``), applies the
schema migrations and, on an empty ledger, loads the demo data (as ``honar serve`` does).
Input errors print one line per problem naming the place and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Any

from hsm_sim.hsm import Hsm
from ledger import admin, issuance
from ledger.disburse import DisbursementError, ProgressBar, disburse_file
from ledger.store import LedgerError, Store
from ledger.synthetic import create_synthetic_members
from switch.app import load_lmk, open_ledger
from switch.calendar import BusinessCalendar
from switch.config import Config, load_config

LIST_LIMIT_DEFAULT = 50


def register(commands: Any) -> None:
    """Add ``members``, ``cards``, ``purses``, ``programs`` and ``demo`` to ``honar``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--ledger-url", help="SQLAlchemy URL (default: from the config)")

    members = commands.add_parser("members", help="members of the Fund")
    member_commands = members.add_subparsers(dest="members_command", required=True)
    add = member_commands.add_parser("add", parents=[common], help="create a member")
    add.add_argument("--id", required=True, dest="member_id")
    add.add_argument("--name", required=True)
    add.set_defaults(func=_run(_members_add))
    listing = member_commands.add_parser("list", parents=[common], help="list members")
    listing.add_argument("--limit", type=int, default=LIST_LIMIT_DEFAULT)
    listing.add_argument("--offset", type=int, default=0)
    listing.set_defaults(func=_run(_members_list))
    show = member_commands.add_parser("show", parents=[common], help="a member, cards, purses")
    show.add_argument("member_id")
    show.set_defaults(func=_run(_members_show))

    cards = commands.add_parser("cards", help="card issuance and administration")
    card_commands = cards.add_subparsers(dest="cards_command", required=True)
    issue = card_commands.add_parser("issue", parents=[common], help="issue a card")
    issue.add_argument("--member", required=True)
    issue.add_argument("--pin", required=True, help="initial PIN (4-12 digits)")
    issue.add_argument("--expiry", help="YYMM (default: five years from now)")
    issue.set_defaults(func=_run(_cards_issue))
    for name, state in (("block", "blocked"), ("unblock", "active")):
        command = card_commands.add_parser(name, parents=[common], help=f"{name} a card")
        command.add_argument("--pan", required=True)
        command.set_defaults(func=_run(_cards_state), state=state)
    reset = card_commands.add_parser("reset-pin", parents=[common], help="set a new PIN")
    reset.add_argument("--pan", required=True)
    reset.add_argument("--pin", required=True)
    reset.set_defaults(func=_run(_cards_reset_pin))

    purses = commands.add_parser("purses", help="member purses")
    purse_commands = purses.add_subparsers(dest="purses_command", required=True)
    expire = purse_commands.add_parser(
        "expire", parents=[common], help="give expired purses' balances back to their programs"
    )
    expire.add_argument("--date", help="YYYY-MM-DD (default: today's business date)")
    expire.set_defaults(func=_run(_purses_expire))

    programs = commands.add_parser("programs", help="funding programs")
    program_commands = programs.add_subparsers(dest="programs_command", required=True)
    disburse = program_commands.add_parser(
        "disburse", parents=[common], help="pay a program to members from a CSV file"
    )
    disburse.add_argument("--program", required=True)
    disburse.add_argument("--file", required=True, help="CSV: member_id,amount (header row)")
    disburse.add_argument("--batch-id", required=True, help="makes a rerun change nothing")
    disburse.add_argument("--purse", help="purse code (default: the one the program funds)")
    disburse.set_defaults(func=_run(_programs_disburse))

    demo = commands.add_parser("demo", help="demo and load-test data")
    demo_commands = demo.add_subparsers(dest="demo_command", required=True)
    synthetic = demo_commands.add_parser(
        "synthetic", parents=[common], help="synthetic members 1..N (spec/demo-data.md)"
    )
    synthetic.add_argument("--members", type=int, required=True)
    synthetic.set_defaults(func=_run(_demo_synthetic))


Command = Callable[[argparse.Namespace, Store, Hsm, Config], int]


def _run(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        config = load_config(args.config, ledger__url=args.ledger_url)
        try:
            with _ledger(config) as (store, hsm):
                return command(args, store, hsm, config)
        except LedgerError as error:
            print(f"honar {args.command}: {error}", file=sys.stderr)
            return 2

    return run


@contextmanager
def _ledger(config: Config) -> Iterator[tuple[Store, Hsm]]:
    hsm = Hsm(lmk=load_lmk(config))
    store = open_ledger(config, hsm)
    try:
        yield store, hsm
    finally:
        store.close()


def _clock(config: Config) -> tuple[str, str, date]:
    """(business date, now as UTC ISO 8601, today's business date as a date)."""
    now = datetime.now(UTC)
    calendar = BusinessCalendar(config.switch.business_zone, config.switch.cutover_time)
    today = calendar.business_date(now)
    return today.isoformat(), now.isoformat(timespec="seconds"), today


def _members_add(args: argparse.Namespace, store: Store, _hsm: Hsm, _config: Config) -> int:
    member = admin.add_member(store, args.member_id, args.name)
    print(f"member {member.id} added: {member.name}")
    return 0


def _members_list(args: argparse.Namespace, store: Store, _hsm: Hsm, _config: Config) -> int:
    found = admin.list_members(store, limit=args.limit, offset=args.offset)
    for member in found:
        print(f"{member.id:<20} {member.name}")
    print(f"({len(found)} shown of {store.member_count():,})")
    return 0


def _members_show(args: argparse.Namespace, store: Store, _hsm: Hsm, _config: Config) -> int:
    view = admin.member_view(store, args.member_id)
    print(f"member   {view.member.id}  {view.member.name}")
    for card in view.cards:
        print(
            f"card     {card.pan_masked}  expiry {card.expiry}  {card.state}  "
            f"PIN failures {card.pin_failures}/{card.pin_tries_max}"
        )
    for purse in view.purses:
        expires = purse.expires or "never"
        print(
            f"purse    {purse.code}  {purse.account.balance_credit:>16,} IRR  "
            f"available {purse.account.available_credit:>16,}  {purse.program_code}  "
            f"expires {expires}"
        )
    if not view.cards:
        print("no cards")
    return 0


def _cards_issue(args: argparse.Namespace, store: Store, hsm: Hsm, config: Config) -> int:
    _business_date, _now, today = _clock(config)
    card = issuance.issue_card(store, hsm, args.member, args.pin, today=today, expiry=args.expiry)
    print(f"card issued for member {card.member_id} (shown once; not stored in clear):")
    print(f"PAN           {card.pan}")
    print(f"expiry        {card.expiry[2:]}/{card.expiry[:2]} (YYMM {card.expiry})")
    print(f"service code  {card.service_code}")
    print(f"CVV2          {card.cvv2}")
    return 0


def _cards_state(args: argparse.Namespace, store: Store, hsm: Hsm, _config: Config) -> int:
    card = admin.set_card_state(store, hsm, args.pan, args.state)
    print(f"card {card.pan_masked} of member {card.member_id}: {args.state}")
    return 0


def _cards_reset_pin(args: argparse.Namespace, store: Store, hsm: Hsm, _config: Config) -> int:
    card = issuance.reset_pin(store, hsm, args.pan, args.pin)
    print(f"card {card.pan_masked} of member {card.member_id}: new PIN set, failures cleared")
    return 0


def _purses_expire(args: argparse.Namespace, store: Store, _hsm: Hsm, config: Config) -> int:
    business_date, now, _today = _clock(config)
    as_of = args.date or business_date
    try:
        date.fromisoformat(as_of)
    except ValueError:
        raise ValueError(f"--date {as_of!r}: expected YYYY-MM-DD") from None
    expired = store.expire_purses(as_of, business_date=business_date, now=now)
    for item in expired:
        print(f"{item.member_id:<20} {item.purse_code}  {item.amount:>16,} IRR back to program")
    total = sum(item.amount for item in expired)
    print(f"{len(expired)} purse(s) expired before {as_of}; {total:,} IRR returned")
    return 0


def _programs_disburse(args: argparse.Namespace, store: Store, _hsm: Hsm, config: Config) -> int:
    business_date, now, _today = _clock(config)
    started = time.monotonic()
    try:
        report = disburse_file(
            store,
            args.file,
            program_code=args.program,
            batch_id=args.batch_id,
            business_date=business_date,
            now=now,
            purse_code=args.purse,
            progress=ProgressBar(sys.stderr, "disbursing"),
        )
    except DisbursementError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        print(f"{len(error.problems)} error(s); nothing applied", file=sys.stderr)
        return 2
    record = report.record
    seconds = time.monotonic() - started
    if not report.applied:
        print(
            f"batch {record.batch_id} was applied on {record.created_at}: "
            f"{record.rows:,} rows, {record.amount_total:,} IRR; nothing changed"
        )
        return 0
    print(
        f"batch {record.batch_id}: {record.rows:,} members paid {record.amount_total:,} IRR "
        f"from {record.program_code} into purse {record.purse_code} "
        f"({record.purses_created:,} purses created) in {seconds:.1f} s"
    )
    return 0


def _demo_synthetic(args: argparse.Namespace, store: Store, hsm: Hsm, config: Config) -> int:
    business_date, now, _today = _clock(config)
    started = time.monotonic()
    bar = ProgressBar(sys.stderr, "funding")
    result = create_synthetic_members(
        store, hsm, args.members, business_date=business_date, now=now, progress=bar
    )
    seconds = time.monotonic() - started
    print(
        f"synthetic members: {result.created:,} created, {result.existing:,} existed "
        f"({seconds:.1f} s)"
    )
    return 0
