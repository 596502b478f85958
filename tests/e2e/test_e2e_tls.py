"""TLS on the terminal listener, and the allow-list of terminal addresses."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from scripts.pos import PosTerminal
from switch.config import ConfigError, load_config
from switch.dialects.base import Framing
from switch.framing import Framer, frame
from switch.tls import AccessError, AllowList, server_tls_context

from conftest import make_config, running_switch
from helpers import ask


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_purchase_over_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    config = make_config(tmp_path, tls_cert_file=str(cert), tls_key_file=str(key))
    with running_switch(config) as s:
        t = PosTerminal.demo("HNR00004")
        payload = t.purchase(pan="6362149173324546", pin="4321", amount=100)

        async def run() -> bytes:
            context = ssl.create_default_context(cafile=str(cert))
            reader, writer = await asyncio.open_connection(
                s.host, s.port, ssl=context, server_hostname="localhost"
            )
            writer.write(frame(payload, Framing.ASCII4))
            await writer.drain()
            framer = Framer(Framing.ASCII4, frame_size_max=4096)
            while (answer := framer.next_frame()) is None:
                framer.receive_data(await asyncio.wait_for(reader.read(4096), 10))
            writer.close()
            return answer

        response, ok = t.check_response(asyncio.run(run()))
        assert response.get(39) == "00" and ok is True

        async def plain() -> bytes:
            reader, writer = await asyncio.open_connection(s.host, s.port)
            writer.write(frame(payload, Framing.ASCII4))
            await writer.drain()
            try:
                return await asyncio.wait_for(reader.read(4096), 5)
            finally:
                writer.close()

        assert not asyncio.run(plain()).startswith(b"0"), "plain TCP gets no ISO 8583 answer"


def test_allow_list_refuses_other_addresses(tmp_path: Path) -> None:
    with running_switch(make_config(tmp_path, allowed_networks=("10.0.0.0/8",))) as s:

        async def run() -> bytes:
            reader, writer = await asyncio.open_connection(s.host, s.port)
            try:
                return await asyncio.wait_for(reader.read(100), 5)
            finally:
                writer.close()

        assert asyncio.run(run()) == b""
        assert s.app.server.refused == 1
    with running_switch(make_config(tmp_path / "b", allowed_networks=("127.0.0.0/8",))) as s:
        t = PosTerminal.demo("HNR00004")
        assert ask(t, s.host, s.port, t.network("301"))[0].get(39) == "00"


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(AccessError, match="not-a-net"):
        AllowList(["not-a-net"])
    with pytest.raises(AccessError, match=r"missing\.pem"):
        server_tls_context(str(tmp_path / "missing.pem"), str(tmp_path / "missing.key"))
    config = tmp_path / "c.toml"
    config.write_text('[switch]\nallowed_networks = ["300.1.1.1/8"]\n')
    with pytest.raises(ConfigError, match=r"300\.1\.1\.1"):
        load_config(config)
    config.write_text('[switch]\ntls_cert_file = "x.pem"\n')
    with pytest.raises(ConfigError, match="go together"):
        load_config(config)
