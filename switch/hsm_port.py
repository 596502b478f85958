"""The switch's view of the HSM: one async interface, in process (default) or over TCP.

Every PIN and MAC operation the switch needs goes through :class:`HsmPort`. Keys are passed as
LMK-encrypted strings; clear keys and PINs never leave the HSM. :class:`HsmUnavailable` means
the HSM did not answer in time: the switch answers ``91``.
"""

from __future__ import annotations

from typing import Protocol

from hsm_sim.hsm import Hsm, MacDirection, PinCheck, WorkingKey


class HsmUnavailable(RuntimeError):
    """The HSM could not be reached or did not answer in time."""


class HsmPort(Protocol):
    """What the switch asks of an HSM."""

    async def verify_mac(self, tak_lmk: str, data: bytes, mac: bytes) -> bool:
        """True when ``mac`` is the X9.19 MAC of ``data`` under the TAK."""
        ...

    async def generate_mac(self, tak_lmk: str, data: bytes) -> bytes:
        """The X9.19 MAC of ``data`` under the TAK (8 bytes)."""
        ...

    async def verify_mac_dukpt(
        self, bdk_lmk: str, ksn: bytes, data: bytes, mac: bytes, direction: MacDirection
    ) -> bool:
        """True when ``mac`` is the DUKPT MAC of ``data`` for this KSN."""
        ...

    async def generate_mac_dukpt(
        self, bdk_lmk: str, ksn: bytes, data: bytes, direction: MacDirection
    ) -> bytes:
        """The DUKPT MAC of ``data`` for this KSN (8 bytes)."""
        ...

    async def verify_pin_pvv(
        self, tpk_lmk: str, pvk_lmk: str, pin_block: bytes, pan: str, pvki: int, pvv: str
    ) -> PinCheck:
        """Verify a format-0 PIN block under the TPK against the card's PVV."""
        ...

    async def verify_pin_pvv_dukpt(
        self,
        bdk_lmk: str,
        ksn: bytes,
        pvk_lmk: str,
        pin_block: bytes,
        pan: str,
        pvki: int,
        pvv: str,
    ) -> PinCheck:
        """Verify a format-0 PIN block under the DUKPT PIN key against the card's PVV."""
        ...

    async def generate_working_key(self, tmk_lmk: str, key_type: str) -> WorkingKey:
        """A new TPK (002) or TAK (003): under the LMK, under the TMK, and its check value."""
        ...


class InProcessHsmPort:
    """:class:`HsmPort` calling :class:`hsm_sim.hsm.Hsm` directly (no I/O, microseconds)."""

    def __init__(self, hsm: Hsm) -> None:
        self.hsm = hsm

    async def verify_mac(self, tak_lmk: str, data: bytes, mac: bytes) -> bool:
        """See :meth:`HsmPort.verify_mac`."""
        return self.hsm.verify_mac(tak_lmk, data, mac)

    async def generate_mac(self, tak_lmk: str, data: bytes) -> bytes:
        """See :meth:`HsmPort.generate_mac`."""
        return self.hsm.generate_mac(tak_lmk, data)

    async def verify_mac_dukpt(
        self, bdk_lmk: str, ksn: bytes, data: bytes, mac: bytes, direction: MacDirection
    ) -> bool:
        """See :meth:`HsmPort.verify_mac_dukpt`."""
        return self.hsm.verify_mac_dukpt(bdk_lmk, ksn, data, mac, direction)

    async def generate_mac_dukpt(
        self, bdk_lmk: str, ksn: bytes, data: bytes, direction: MacDirection
    ) -> bytes:
        """See :meth:`HsmPort.generate_mac_dukpt`."""
        return self.hsm.generate_mac_dukpt(bdk_lmk, ksn, data, direction)

    async def verify_pin_pvv(
        self, tpk_lmk: str, pvk_lmk: str, pin_block: bytes, pan: str, pvki: int, pvv: str
    ) -> PinCheck:
        """See :meth:`HsmPort.verify_pin_pvv`."""
        return self.hsm.verify_pin_pvv(tpk_lmk, pvk_lmk, pin_block, pan, pvki, pvv)

    async def verify_pin_pvv_dukpt(
        self,
        bdk_lmk: str,
        ksn: bytes,
        pvk_lmk: str,
        pin_block: bytes,
        pan: str,
        pvki: int,
        pvv: str,
    ) -> PinCheck:
        """See :meth:`HsmPort.verify_pin_pvv_dukpt`."""
        return self.hsm.verify_pin_pvv_dukpt(bdk_lmk, ksn, pvk_lmk, pin_block, pan, pvki, pvv)

    async def generate_working_key(self, tmk_lmk: str, key_type: str) -> WorkingKey:
        """See :meth:`HsmPort.generate_working_key`."""
        return self.hsm.generate_working_key(tmk_lmk, key_type)
