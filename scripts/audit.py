"""``honar audit verify DIR --public-key FILE``: check one day's settlement folder.

Checks, in order, and stops at the first that fails (exit 1, naming it): the Ed25519 signature
of ``manifest.json``; each file's SHA-256, rows and sums against the manifest; that merchants
and the statement agree; that the folder holds nothing unlisted; the manifest chain back to the
first day (previous days' folders beside ``DIR``); the ledger's journal hash chain and the entry
that the manifest names. Prints one ``OK`` line per check otherwise (exit 0).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ledger.settlement import load_public_key, verify_folder
from ledger.store import Store
from switch.config import load_config


def register(commands: Any) -> None:
    """Add ``honar audit``."""
    audit = commands.add_parser("audit", help="verify settlement files")
    sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = sub.add_parser("verify", help="check a day's folder, its chain and the journal")
    verify.add_argument("folder", help="the day's folder, e.g. settlement/2026-12-03")
    verify.add_argument("--public-key", required=True, help="PEM from `honar settle public-key`")
    verify.add_argument("--ledger-url", help="the ledger (default: from the config)")
    verify.add_argument("--data-dir", help="where the embedded database lives")
    verify.add_argument(
        "--no-ledger", action="store_true", help="skip the journal check (files only)"
    )
    verify.set_defaults(func=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    """Run every check; 0 when all hold, 1 at the first failure."""
    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"FAIL folder: {folder} is not a folder")
        return 1
    public_key = load_public_key(Path(args.public_key).read_bytes())
    store = None
    if not args.no_ledger:
        config = load_config(args.config, ledger__url=args.ledger_url, data_dir=args.data_dir)
        store = Store(config.ledger_url)
    try:
        for check in verify_folder(folder, public_key, store):
            print(check, flush=True)
            if not check.ok:
                return 1
    finally:
        if store is not None:
            store.close()
    print(f"OK {folder}: verified")
    return 0


if __name__ == "__main__":
    from switch.cli import main

    sys.exit(main(["audit", *sys.argv[1:]]))
