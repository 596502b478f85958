"""``honar hsm serve``: run the simulated payShield HSM on TCP until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

from hsm_sim.commands import HostCommands
from hsm_sim.keys import Lmk
from hsm_sim.server import HOST_DEFAULT, PORT_DEFAULT, HsmServer, ServerLimits


def register(commands: Any) -> None:
    """Add ``hsm serve`` to the ``honar`` subcommands."""
    hsm = commands.add_parser("hsm", help="the simulated payShield HSM")
    hsm_commands = hsm.add_subparsers(dest="hsm_command", required=True)
    serve = hsm_commands.add_parser("serve", help="answer host commands on TCP")
    serve.add_argument("--host", default=HOST_DEFAULT)
    serve.add_argument("--port", type=int, default=PORT_DEFAULT)
    serve.add_argument("--header-length", type=int, default=4)
    serve.add_argument("--lmk-file", help="20 lines of 32 hex (default: the Thales test LMK)")
    serve.add_argument("--connections-max", type=int, default=ServerLimits.connections_max)
    serve.add_argument("--idle-timeout-s", type=float, default=ServerLimits.idle_timeout_s)
    serve.set_defaults(func=serve_command)


def serve_command(args: argparse.Namespace) -> Any:
    """Build the server from the arguments; returns the coroutine that runs it."""
    lmk = Lmk.from_file(args.lmk_file) if args.lmk_file else Lmk.test()
    limits = ServerLimits(connections_max=args.connections_max, idle_timeout_s=args.idle_timeout_s)
    server = HsmServer(
        HostCommands(lmk),
        host=args.host,
        port=args.port,
        header_length=args.header_length,
        limits=limits,
    )
    return _run(server, lmk)


async def _run(server: HsmServer, lmk: Lmk) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal_number, stop.set)
    await server.start()
    print(
        f"HSM simulator listening on {server.host}:{server.port} "
        f"(header {server.header_length}, LMK check value {lmk.check_value()}). Ctrl-C stops.",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await server.stop()
    return 0
