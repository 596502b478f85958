"""``honar``: the one command-line entry point, with subcommands.

    honar serve                     run the switch (embedded SQLite ledger, demo data)
    honar ledger totals             debits, credits and the journal, and whether they agree
    honar <tool> ...                every module in ``scripts/`` that defines ``register``

A tool module adds its subcommand with ``register(subparsers)`` and sets ``func`` (taking the
parsed arguments, returning an exit code) on its parser with ``set_defaults``. Errors in input
(config, arguments, files) are reported in one line naming what and where, with exit code 2;
they never show a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import pkgutil
import sys
from collections.abc import Sequence

import scripts
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
    serve.add_argument("--mqtt", help="publish events to this broker, e.g. mqtt://127.0.0.1:1883")
    serve.add_argument("--dialect", choices=["shetab87", "shetab93"])
    serve.set_defaults(func=_serve)

    ledger = commands.add_parser("ledger", help="ledger inspection")
    ledger_commands = ledger.add_subparsers(dest="ledger_command", required=True)
    totals = ledger_commands.add_parser("totals", help="debits, credits and the journal sum")
    totals.set_defaults(func=_ledger_totals)

    for module_info in sorted(pkgutil.iter_modules(scripts.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"scripts.{module_info.name}")
        except ImportError as error:
            # One broken tool must not take `honar serve` down with it: its command says why.
            broken = commands.add_parser(module_info.name, help=f"(unavailable: {error})")
            broken.set_defaults(func=functools.partial(_unavailable, module_info.name, error))
            continue
        register = getattr(module, "register", None)
        if register is not None:
            register(commands)
    return parser


def _unavailable(name: str, error: ImportError, _args: argparse.Namespace) -> int:
    print(f"honar {name}: this tool cannot be loaded: {error}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``honar``; return the process exit code."""
    args = _parser().parse_args(argv)
    from switch.compiled import StaleBuild, require_current
    from switch.logs import setup_logging

    try:
        require_current()  # a compiled module older than its source must never run
    except StaleBuild as error:
        print(f"honar: {error}", file=sys.stderr)
        return 2

    # the server writes its lines in bunches (switch.logs.BufferedLineHandler); tools at once
    setup_logging(args.log_level, buffered=args.command == "serve")
    try:
        result = args.func(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result)
    except ConfigError as error:
        print(f"honar: config error: {error}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as error:
        print(f"honar {args.command}: {error}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    from switch.app import serve

    config = load_config(
        args.config,
        switch__host=args.host,
        switch__port=args.port,
        switch__framing=args.framing,
        ledger__url=args.ledger_url,
        data_dir=args.data_dir,
        events__broker_url=args.mqtt,
        switch__dialect=args.dialect,
    )

    def ready(host: str, port: int) -> None:
        print(
            f"Honar Switch listening on {host}:{port} (dialect {config.switch.dialect}, "
            f"framing {config.switch.framing}); ledger {config.ledger_url}. Ctrl-C stops.",
            flush=True,
        )

    asyncio.run(serve(config, on_ready=ready, tune_gc=True))
    return 0


def _ledger_totals(args: argparse.Namespace) -> int:
    from ledger.store import Store

    config = load_config(args.config)
    store = Store(config.ledger_url)
    try:
        totals = store.totals()
    finally:
        store.close()
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
    return 0 if totals.balanced else 1


if __name__ == "__main__":
    sys.exit(main())
