"""``honar``: the one command-line entry point, with subcommands.

    honar serve                     run the switch (embedded SQLite ledger, demo data)
    honar pos purchase|balance|echo|signon|signoff|keyexchange ...   POS simulator
    honar ledger totals             debits, credits and the journal, and whether they agree

Errors in input (config, arguments) are reported in one line naming what and where, with exit
code 2; they never show a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from switch.config import ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="honar", description="Honar Switch")
    parser.add_argument("--config", help="TOML config file (default: $HONAR_CONFIG or defaults)")
    parser.add_argument("--log-level", default="INFO")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the switch until Ctrl-C / SIGTERM")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--framing", choices=["ascii4", "binary2"])
    serve.add_argument("--ledger-url", help="SQLAlchemy URL (default sqlite:///var/honar.db)")
    serve.add_argument("--data-dir", help="where the embedded database lives (default var)")

    pos = commands.add_parser("pos", help="POS simulator: send one message, print the answer")
    pos_commands = pos.add_subparsers(dest="pos_command", required=True)
    for name, text in (
        ("purchase", "0200 purchase"),
        ("balance", "0200 balance inquiry"),
        ("echo", "0800 echo"),
        ("signon", "0800 sign-on"),
        ("signoff", "0800 sign-off"),
        ("keyexchange", "0800 key exchange"),
    ):
        sub = pos_commands.add_parser(name, help=text)
        sub.add_argument("--terminal", default="HNR00004", help="demo terminal id")
        sub.add_argument("--host", default="127.0.0.1")
        sub.add_argument("--port", type=int, default=8583)
        sub.add_argument("--framing", default="ascii4", choices=["ascii4", "binary2"])
        sub.add_argument("--timeout", type=float, default=10.0)
        sub.add_argument(
            "--state",
            default="var/pos-state.json",
            help="terminal state file (working keys, STAN, KSN)",
        )
        sub.add_argument("--tamper-mac", action="store_true", help="flip a bit of the MAC")
        if name in ("purchase", "balance"):
            sub.add_argument("--pan", required=True)
            sub.add_argument("--pin", help="PIN entered on the PIN pad")
            sub.add_argument("--expiry", help="YYMM (default: the demo card's)")
        if name == "purchase":
            sub.add_argument("--amount", type=int, required=True, help="IRR")

    ledger = commands.add_parser("ledger", help="ledger inspection")
    ledger_commands = ledger.add_subparsers(dest="ledger_command", required=True)
    ledger_commands.add_parser("totals", help="debits, credits and the journal sum")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``honar``; return the process exit code."""
    args = _parser().parse_args(argv)
    from switch.logs import setup_logging

    setup_logging(args.log_level)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "pos":
            from scripts import pos

            return asyncio.run(pos.run_command(args))
        if args.command == "ledger":
            return _ledger(args)
    except ConfigError as error:
        print(f"honar: config error: {error}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as error:
        print(f"honar {args.command}: {error}", file=sys.stderr)
        return 2
    return 2  # pragma: no cover - argparse requires a command


def _serve(args: argparse.Namespace) -> int:
    from switch.app import serve

    config = load_config(
        args.config,
        switch__host=args.host,
        switch__port=args.port,
        switch__framing=args.framing,
        ledger__url=args.ledger_url,
        data_dir=args.data_dir,
    )

    def ready(host: str, port: int) -> None:
        print(
            f"Honar Switch listening on {host}:{port} (dialect {config.switch.dialect}, "
            f"framing {config.switch.framing}); ledger {config.ledger_url}. Ctrl-C stops.",
            flush=True,
        )

    asyncio.run(serve(config, on_ready=ready))
    return 0


def _ledger(args: argparse.Namespace) -> int:
    from ledger.store import Store

    config = load_config(args.config)
    store = Store(config.ledger_url)
    totals = store.totals()
    rows = [
        ("debits posted", totals.debits_posted),
        ("credits posted", totals.credits_posted),
        ("journal posted", totals.journal_posted),
        ("debits pending", totals.debits_pending),
        ("credits pending", totals.credits_pending),
    ]
    for name, value in rows:
        print(f"{name:<16}{value:>20,}")
    print(f"{'balanced':<16}{totals.balanced!s:>20}")
    store.close()
    return 0 if totals.balanced else 1


if __name__ == "__main__":
    sys.exit(main())
