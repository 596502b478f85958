"""``honar settle``: close business dates, export the signed settlement files, report the day.

    honar settle cutover [--date D]          close D (default: the date before the current one)
    honar settle export --date D [--out DIR] write DIR/D/ (transactions, merchants, programs,
                                             camt.053, manifest, signature)
    honar settle public-key [--out FILE]     the Ed25519 public key (PEM) auditors verify with
    honar settle report --date D [--html F]  the day per program, merchant and city

The ledger comes from ``--ledger-url`` or the config; the signing key lives under the data
directory (``--data-dir`` or the config), generated on first use with mode 0600.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from ledger.report import render_html, render_table
from ledger.settlement import (
    SettlementError,
    close_business_date,
    export_day,
    figures_for_report,
    jalali,
    last_closed_date,
    public_key_pem,
    signing_key,
)
from ledger.store import Store
from switch.calendar import BusinessCalendar
from switch.config import Config, load_config


def software_version() -> str:
    """The installed honar-switch version ("unknown" when run from a bare checkout)."""
    try:
        return importlib.metadata.version("honar-switch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _config(args: argparse.Namespace) -> Config:
    return load_config(
        args.config,
        ledger__url=getattr(args, "ledger_url", None),
        data_dir=getattr(args, "data_dir", None),
    )


def _store(config: Config) -> Store:
    store = Store(config.ledger_url)
    store.migrate()
    return store


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ledger-url", help="SQLAlchemy URL (default: from the config)")
    parser.add_argument("--data-dir", help="where the database and signing key live")


def register(commands: Any) -> None:
    """Add ``honar settle``."""
    settle = commands.add_parser("settle", help="cutover, settlement files, daily report")
    sub = settle.add_subparsers(dest="settle_command", required=True)

    cutover = sub.add_parser("cutover", help="close a business date (once)")
    cutover.add_argument("--date", type=_date, help="default: the date before the current one")
    cutover.add_argument(
        "--now",
        action="store_true",
        help="close the current business date now, before its cutover time (end of day by "
        "hand, demos); later requests count in the next date",
    )
    _common(cutover)
    cutover.set_defaults(func=run_cutover)

    export = sub.add_parser("export", help="write the signed files of a closed date")
    export.add_argument("--date", type=_date, required=True)
    export.add_argument("--out", default="settlement", help="parent folder (default settlement)")
    _common(export)
    export.set_defaults(func=run_export)

    public = sub.add_parser("public-key", help="print (or write) the signing public key PEM")
    public.add_argument("--out", help="write to this file instead of standard output")
    _common(public)
    public.set_defaults(func=run_public_key)

    report = sub.add_parser("report", help="the day per program, merchant and city")
    report.add_argument("--date", type=_date, required=True)
    report.add_argument("--html", help="also write an HTML page (offline, with charts)")
    _common(report)
    report.set_defaults(func=run_report)


def run_cutover(args: argparse.Namespace) -> int:
    """Close a business date; refuse an open date or a second close."""
    config = _config(args)
    s = config.switch
    now = datetime.now(UTC)
    current = BusinessCalendar(s.business_zone, s.cutover_time).business_date(now)
    store = _store(config)
    try:
        calendar_date = current
        closed = last_closed_date(store)
        if closed is not None and closed >= current:
            current = closed + timedelta(days=1)  # dates closed early: the open one is later
        if args.date is not None:
            business_date = args.date
        elif args.now:
            business_date = current
        else:
            business_date = calendar_date - timedelta(days=1)  # the nightly step
        close_business_date(
            store, business_date, current=current, now=now.isoformat(), early=args.now
        )
    except SettlementError as error:
        print(f"honar settle cutover: {error}", file=sys.stderr)
        return 1
    finally:
        store.close()
    open_date = max(current, business_date + timedelta(days=1))
    print(
        f"closed business date {business_date} ({jalali(business_date)}); the open date is "
        f"{open_date}. Requests arriving now, late advices included, count in {open_date}."
    )
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Export a closed business date's files."""
    config = _config(args)
    store = _store(config)
    try:
        key = signing_key(Path(config.data_dir))
        result = export_day(
            store,
            args.date,
            Path(args.out),
            key=key,
            zone=config.switch.business_zone,
            cutover=config.switch.cutover_time,
            now=datetime.now(UTC).isoformat(),
            software_version=software_version(),
        )
    except SettlementError as error:
        print(f"honar settle export: {error}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"{result.folder}: manifest sha256 {result.manifest_sha256}")
    for f in result.files:
        print(f"  {f.name:<18}{f.rows:>10} rows  {f.sha256}")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def run_public_key(args: argparse.Namespace) -> int:
    """Print or write the public key of the settlement signing key."""
    config = _config(args)
    try:
        pem = public_key_pem(signing_key(Path(config.data_dir)))
    except SettlementError as error:
        print(f"honar settle public-key: {error}", file=sys.stderr)
        return 1
    if args.out:
        Path(args.out).write_bytes(pem)
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(pem.decode())
    return 0


def run_report(args: argparse.Namespace) -> int:
    """Print the day's figures as tables; write the HTML page when asked."""
    config = _config(args)
    store = _store(config)
    try:
        figures = figures_for_report(store, args.date)
    except SettlementError as error:
        print(f"honar settle report: {error}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(render_table(figures))
    if args.html:
        Path(args.html).write_text(render_html(figures), encoding="utf-8")
        print(f"wrote {args.html}")
    return 0
