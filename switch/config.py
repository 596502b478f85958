"""Configuration: every setting and limit in one place, with defaults and validation.

A TOML file (``honar serve --config FILE``, or ``$HONAR_CONFIG``) may set any of the keys of
:class:`Config`, in sections named after the dataclasses (``[switch]``, ``[ledger]``,
``[hsm]``). Unknown keys and wrong types are errors that name the file, section and key.
Units come last in names: ``_s`` seconds, ``_max`` a cap.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_DATA_DIR = Path("var")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class SwitchConfig:
    """The terminal-facing server and its limits."""

    host: str = "127.0.0.1"
    port: int = 8583
    dialect: str = "shetab87"
    framing: str = "ascii4"
    frame_size_max: int = 4096
    connections_max: int = 1000
    in_flight_per_connection_max: int = 64
    idle_timeout_s: float = 300.0
    frame_timeout_s: float = 10.0  # a frame begun must arrive whole within this (slow loris)
    graceful_timeout_s: float = 10.0
    business_zone: str = "Asia/Tehran"
    cutover_time: str = "00:00"
    acquirer_id: str = "636214"
    tls_cert_file: str = ""  # PEM; with tls_key_file: terminals connect over TLS
    tls_key_file: str = ""
    tls_client_ca_file: str = ""  # when set, terminals must present a certificate it signed
    allowed_networks: tuple[str, ...] = ()  # CIDRs terminals may connect from; empty: any
    card_cache_max: int = 100_000  # cards kept by keyed PAN hash for PIN checks (LRU)
    hold_period_s: int = 7 * 24 * 3600  # a pre-authorization not completed by then is released
    hold_sweep_interval_s: float = 60.0  # how often expired holds are looked for


@dataclass(frozen=True)
class LedgerConfig:
    """The ledger database and its group commit."""

    url: str = ""  # empty: SQLite file var/honar.db
    batch_max: int = 256
    load_demo: bool = True


@dataclass(frozen=True)
class HsmConfig:
    """Where the switch's HSM is and which LMK it holds."""

    mode: str = "in-process"  # or "tcp"
    host: str = "127.0.0.1"
    port: int = 1500
    header_length: int = 4
    pool_size: int = 4  # TCP connections to the HSM
    timeout_s: float = 2.0  # an HSM answer later than this: the terminal gets 91
    lmk_file: str = ""  # empty: the Thales test LMK set


@dataclass(frozen=True)
class TraceConfig:
    """Frame tracing (spec/trace-format.md); SIGUSR1 switches it on and off at run time."""

    enabled: bool = False
    directory: str = ""  # empty: <data_dir>/trace
    file_size_max: int = 64 * 1024 * 1024
    files_max: int = 20


@dataclass(frozen=True)
class EventsConfig:
    """The MQTT events publisher (docs/observability.md); no broker_url: the outbox keeps events."""

    broker_url: str = ""  # mqtt://host:port or mqtts://host:port (TLS)
    username: str = ""
    password: str = ""
    tls_ca_file: str = ""  # empty with mqtts://: the system's CA certificates
    environment: str = "dev"  # topics are honar/v1/{environment}/...
    client_id: str = ""  # empty: honar-publisher-{environment}-{pid}
    batch_max: int = 500  # outbox rows read (and published in order) per round
    poll_interval_s: float = 0.2  # wait between rounds when the outbox is empty
    publish_timeout_s: float = 10.0  # a PUBACK not received by then: reconnect
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0  # the backoff doubles up to this


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus /metrics over HTTP (off unless enabled)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9108


@dataclass(frozen=True)
class VelocityConfig:
    """Velocity alert rules (switch/velocity.py), per card, held in memory."""

    enabled: bool = True
    pin_declines_max: int = 3  # more than this many 55 declines on one card ...
    pin_declines_window_s: float = 900.0  # ... within this window: an alert
    amount_hour_max: int = 500_000_000  # more than this many IRR approved on one card in an hour
    cards_max: int = 100_000  # cards tracked; the least recently seen is forgotten beyond it


@dataclass(frozen=True)
class Config:
    """All settings."""

    switch: SwitchConfig = field(default_factory=SwitchConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    hsm: HsmConfig = field(default_factory=HsmConfig)
    trace: TraceConfig = field(default_factory=TraceConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    velocity: VelocityConfig = field(default_factory=VelocityConfig)
    data_dir: str = str(DEFAULT_DATA_DIR)

    @property
    def ledger_url(self) -> str:
        """The SQLAlchemy URL of the ledger (SQLite under ``data_dir`` when not set)."""
        return self.ledger.url or f"sqlite:///{Path(self.data_dir) / 'honar.db'}"

    @property
    def trace_directory(self) -> Path:
        """Where trace files go (``trace`` under ``data_dir`` when not set)."""
        return Path(self.trace.directory or Path(self.data_dir) / "trace")


_POSITIVE = {
    "port",
    "frame_size_max",
    "connections_max",
    "in_flight_per_connection_max",
    "idle_timeout_s",
    "frame_timeout_s",
    "graceful_timeout_s",
    "batch_max",
    "hold_period_s",
    "card_cache_max",
    "hold_sweep_interval_s",
    "timeout_s",
    "pool_size",
    "file_size_max",
    "files_max",
    "poll_interval_s",
    "publish_timeout_s",
    "reconnect_initial_s",
    "reconnect_max_s",
    "pin_declines_max",
    "pin_declines_window_s",
    "amount_hour_max",
    "cards_max",
}


def _build(cls: type[Any], values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}; known keys: {', '.join(known)}")
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{key}] must be a table")
            kwargs[key] = _build(type(default), value, f"{where} [{key}]")
            continue
        expected = type(default)
        if expected is tuple and isinstance(value, list):
            if not all(isinstance(item, str) for item in value):
                raise ConfigError(f"{where}: {key} must be a list of strings")
            value = tuple(value)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(
                f"{where}: {key} must be {expected.__name__}, got {type(value).__name__} {value!r}"
            )
        if key in _POSITIVE and value <= 0:
            raise ConfigError(f"{where}: {key} must be greater than 0, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


def validate(config: Config, where: str = "config") -> Config:
    """Check values that types alone cannot; return the config unchanged."""
    from switch.dialects import DIALECTS
    from switch.tls import AccessError, AllowList

    s = config.switch
    try:
        AllowList(s.allowed_networks)
    except AccessError as error:
        raise ConfigError(f"{where}: switch.{error}") from None
    if bool(s.tls_cert_file) != bool(s.tls_key_file):
        raise ConfigError(f"{where}: switch.tls_cert_file and tls_key_file go together")
    if s.dialect not in DIALECTS:
        raise ConfigError(f"{where}: switch.dialect {s.dialect!r} unknown; known: {list(DIALECTS)}")
    if s.framing not in ("ascii4", "binary2"):
        raise ConfigError(f"{where}: switch.framing must be ascii4 or binary2, got {s.framing!r}")
    if not 0 < s.port < 65536:
        raise ConfigError(f"{where}: switch.port must be 1-65535, got {s.port}")
    limit = 9999 if s.framing == "ascii4" else 65535
    if s.frame_size_max > limit:
        raise ConfigError(
            f"{where}: switch.frame_size_max {s.frame_size_max} > {limit} ({s.framing})"
        )
    if not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", s.cutover_time, flags=re.ASCII):
        raise ConfigError(f"{where}: switch.cutover_time must be HH:MM, got {s.cutover_time!r}")
    if config.hsm.mode not in ("in-process", "tcp"):
        raise ConfigError(f"{where}: hsm.mode must be in-process or tcp, got {config.hsm.mode!r}")
    events = config.events
    if events.broker_url and not re.fullmatch(r"mqtts?://[^/:]+(:\d{1,5})?/?", events.broker_url):
        raise ConfigError(f"{where}: events.broker_url must be mqtt[s]://host[:port]")
    if not re.fullmatch(r"[a-z0-9_-]{1,32}", events.environment, flags=re.ASCII):
        raise ConfigError(f"{where}: events.environment must be 1-32 of a-z 0-9 _ -")
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(s.business_zone)
    except (KeyError, ValueError, OSError) as error:
        raise ConfigError(f"{where}: switch.business_zone {s.business_zone!r}: {error}") from None
    return config


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Config:
    """Load ``path`` (or ``$HONAR_CONFIG``, or defaults) and apply dotted ``overrides``.

    ``overrides`` use section__key names, e.g. ``switch__port=9000``; None values are ignored.
    """
    values: dict[str, Any] = {}
    chosen = path or os.environ.get("HONAR_CONFIG")
    where = "defaults"
    if chosen:
        where = str(chosen)
        try:
            with open(chosen, "rb") as handle:
                values = tomllib.load(handle)
        except OSError as error:
            raise ConfigError(f"{where}: cannot read: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{where}: not valid TOML: {error}") from None
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition("__")
        if key:
            values.setdefault(section, {})[key] = value
        else:
            values[section] = value
    return validate(_build(Config, values, where), where)
