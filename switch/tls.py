"""TLS for the listeners (terminals and HSM) and an allow-list of client addresses.

Both are options: a switch on a private network of terminals may run plain TCP; one reachable
from elsewhere should run TLS and list the networks its terminals connect from.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable


class AccessError(ValueError):
    """A TLS or allow-list setting that cannot be used, with what and why."""


def server_tls_context(cert_file: str, key_file: str, client_ca_file: str = "") -> ssl.SSLContext:
    """A TLS 1.2+ server context; with ``client_ca_file`` clients must present a certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
        if client_ca_file:
            context.load_verify_locations(client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as error:
        raise AccessError(f"TLS certificate {cert_file} / key {key_file}: {error}") from None
    return context


class AllowList:
    """Client networks allowed to connect (empty: everyone).

    >>> allow = AllowList(["127.0.0.0/8", "10.20.0.0/16"])
    >>> allow.permits("127.0.0.1"), allow.permits("192.0.2.7")
    (True, False)
    """

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = []
        for text in networks:
            try:
                self.networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError as error:
                raise AccessError(f"allowed network {text!r}: {error}") from None

    def permits(self, address: str) -> bool:
        """True when ``address`` may connect."""
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        return any(ip in network for network in self.networks)
