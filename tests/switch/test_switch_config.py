"""Configuration: defaults, TOML overrides, and errors that name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from switch.config import Config, ConfigError, HsmConfig, LedgerConfig, SwitchConfig, load_config
from switch.config import validate as validate_config


@pytest.fixture(autouse=True)
def no_config_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HONAR_CONFIG", raising=False)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "honar.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_validate() -> None:
    config = load_config()
    assert config == Config()
    assert validate_config(Config()) == Config()
    assert config.switch.port == 8583
    assert config.switch.host == "127.0.0.1"
    assert config.switch.framing == "ascii4"
    assert config.switch.frame_size_max == 4096
    assert config.switch.idle_timeout_s == 300.0
    assert config.switch.business_zone == "Asia/Tehran"
    assert config.switch.cutover_time == "00:00"
    assert config.ledger_url == "sqlite:///var/honar.db"


def test_toml_overrides_load(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
data_dir = "/srv/honar"

[switch]
port = 9000
framing = "binary2"
frame_size_max = 8192
idle_timeout_s = 60
cutover_time = "02:30"

[ledger]
batch_max = 16

[hsm]
mode = "tcp"
timeout_s = 0.5
""",
    )
    config = load_config(path)
    assert config.switch == SwitchConfig(
        port=9000,
        framing="binary2",
        frame_size_max=8192,
        idle_timeout_s=60.0,
        cutover_time="02:30",
    )
    assert isinstance(config.switch.idle_timeout_s, float)
    assert config.ledger == LedgerConfig(batch_max=16)
    assert config.hsm == HsmConfig(mode="tcp", timeout_s=0.5)
    assert config.ledger_url == "sqlite:////srv/honar/honar.db"


def test_keyword_overrides_win_over_the_file_and_none_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "[switch]\nport = 9000\nhost = '0.0.0.0'\n")
    config = load_config(path, switch__port=9001, switch__host=None, ledger__url="sqlite://")
    assert config.switch.port == 9001
    assert config.switch.host == "0.0.0.0"
    assert config.ledger_url == "sqlite://"


def test_environment_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[switch]\nport = 9100\n")
    monkeypatch.setenv("HONAR_CONFIG", str(path))
    assert load_config().switch.port == 9100


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[switch]\nprot = 9000\n", "prot"),  # unknown key
        ("[swtich]\nport = 9000\n", "swtich"),  # unknown section
        ("switch = 5\n", "switch"),  # a section that is not a table
        ("[switch]\nport = '9000'\n", "port"),  # wrong type
        ("[switch]\nport = true\n", "port"),  # bool is not int
        ("[switch]\nframe_size_max = 4096.0\n", "frame_size_max"),  # float is not int
        ("[ledger]\nload_demo = 1\n", "load_demo"),  # int is not bool
        ("[switch]\nidle_timeout_s = '300'\n", "idle_timeout_s"),
        ("data_dir = 7\n", "data_dir"),
        ("[switch]\nport = 0\n", "port"),
        ("[switch]\nport = -1\n", "port"),
        ("[switch]\nport = 65536\n", "port"),
        ("[switch]\nidle_timeout_s = -1\n", "idle_timeout_s"),
        ("[switch]\ngraceful_timeout_s = -0.5\n", "graceful_timeout_s"),
        ("[switch]\nidle_timeout_s = 0\n", "idle_timeout_s"),
        ("[hsm]\ntimeout_s = -2.0\n", "timeout_s"),
        ("[switch]\nframe_size_max = 0\n", "frame_size_max"),
        ("[switch]\nconnections_max = 0\n", "connections_max"),
        ("[switch]\nin_flight_per_connection_max = -3\n", "in_flight_per_connection_max"),
        ("[ledger]\nbatch_max = 0\n", "batch_max"),
        ("[switch]\nframing = 'ascii2'\n", "framing"),
        ("[switch]\nframing = 'ASCII4'\n", "framing"),
        ("[switch]\ndialect = 'iso93'\n", "dialect"),
        ("[switch]\ncutover_time = '24:00'\n", "cutover_time"),
        ("[switch]\ncutover_time = '12:60'\n", "cutover_time"),
        ("[switch]\ncutover_time = '1230'\n", "cutover_time"),
        ("[switch]\ncutover_time = 'noon'\n", "cutover_time"),
        ("[switch]\ncutover_time = '-1:00'\n", "cutover_time"),
        ("[switch]\ncutover_time = '12:00:00'\n", "cutover_time"),
        ("[switch]\nbusiness_zone = 'Mars/Olympus'\n", "business_zone"),
        ("[switch]\nbusiness_zone = 'asia/tehran'\n", "business_zone"),
        ("[switch]\nbusiness_zone = '../etc/passwd'\n", "business_zone"),
        ("[switch]\nbusiness_zone = ''\n", "business_zone"),
        ("[switch]\nframe_size_max = 10000\n", "frame_size_max"),  # past 4 ASCII digits
        ("[switch]\nframing = 'binary2'\nframe_size_max = 65536\n", "frame_size_max"),
        ("[hsm]\nmode = 'remote'\n", "mode"),
    ],
)
def test_bad_value_raises_config_error_naming_file_and_key(
    tmp_path: Path, text: str, key: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert key in message


@pytest.mark.parametrize(
    "text",
    [
        "[switch]\nframe_size_max = 9999\n",
        "[switch]\nframing = 'binary2'\nframe_size_max = 65535\n",
        "[switch]\nport = 65535\n",
        "[switch]\nport = 1\n",
        "[switch]\ncutover_time = '23:59'\n",
        "[switch]\nbusiness_zone = 'UTC'\n",
    ],
)
def test_values_at_the_edge_are_accepted(tmp_path: Path, text: str) -> None:
    assert isinstance(load_config(write(tmp_path, text)), Config)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[switch\nport = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML") as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="cannot read") as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_bad_keyword_override_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="port"):
        load_config(switch__port=0)
    with pytest.raises(ConfigError, match="color"):
        load_config(switch__color="red")


def test_superscript_digit_in_cutover_time_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[switch]\ncutover_time = '\u00b23:00'\n")
    with pytest.raises(ConfigError, match="cutover_time"):
        load_config(path)


def test_zone_naming_a_directory_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[switch]\nbusiness_zone = 'Asia'\n")
    with pytest.raises(ConfigError, match="business_zone"):
        load_config(path)
