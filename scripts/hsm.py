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
from switch.tls import AllowList, server_tls_context


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
    serve.add_argument("--tls-cert", help="PEM certificate: clients connect over TLS")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve.add_argument("--tls-client-ca", help="clients must present a certificate it signed")
    serve.add_argument(
        "--allow",
        action="append",
        default=[],
        help="a network (CIDR) clients may connect from; repeatable",
    )
    serve.set_defaults(func=serve_command)


def serve_command(args: argparse.Namespace) -> Any:
    """Build the server from the arguments; returns the coroutine that runs it."""
    lmk = Lmk.from_file(args.lmk_file) if args.lmk_file else Lmk.test()
    limits = ServerLimits(connections_max=args.connections_max, idle_timeout_s=args.idle_timeout_s)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    tls = (
        server_tls_context(args.tls_cert, args.tls_key, args.tls_client_ca or "")
        if args.tls_cert
        else None
    )
    allow = AllowList(args.allow)
    server = HsmServer(
        HostCommands(lmk),
        host=args.host,
        port=args.port,
        header_length=args.header_length,
        limits=limits,
        tls=tls,
        allow=allow.permits if args.allow else None,
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
