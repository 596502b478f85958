"""The optional compiled build: a build older than its sources is found and refused, whatever
is wrong with it; ``--clean`` removes it. (The build itself runs in CI: .ci/run compiles and
runs the whole suite again against the compiled modules.)"""

from __future__ import annotations

import json
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from scripts import compiled as builder
from switch import cli, compiled
from switch.compiled import SHARED_LIBRARY, StaleBuild, require_current, state

SUFFIX = EXTENSION_SUFFIXES[0]  # what this interpreter imports first, e.g. .cpython-311-…so


def fake_build(root: Path, modules: tuple[str, ...] = ("switch.codec", "ledger.engine")) -> None:
    """Sources, extension files and a manifest that match, under ``root``."""
    for package in compiled.PACKAGES:
        (root / package).mkdir(parents=True, exist_ok=True)
    sources = {}
    for module in modules:
        source = compiled.source_path(module, root)
        source.write_text(f"# {module}\n")
        sources[module] = compiled.source_digest(source)
        source.with_name(source.stem + SUFFIX).write_bytes(b"\x7fELF")
    (root / "switch" / ("_native__mypyc" + SUFFIX)).write_bytes(b"\x7fELF")
    (root / "switch" / "_native.json").write_text(json.dumps({"sources": sources}))


def test_no_build_is_fine(tmp_path: Path) -> None:
    for package in compiled.PACKAGES:
        (tmp_path / package).mkdir()
    assert state(tmp_path) == compiled.BuildState((), ())
    assert require_current(tmp_path).compiled == ()


def test_a_current_build_is_accepted(tmp_path: Path) -> None:
    fake_build(tmp_path)
    found = require_current(tmp_path)
    assert found.compiled == ("ledger.engine", "switch.codec")
    assert found.problems == ()
    assert compiled.compiled_modules(tmp_path) == found.compiled  # what honar serve logs


def test_an_edited_source_makes_the_build_stale(tmp_path: Path) -> None:
    fake_build(tmp_path)
    (tmp_path / "ledger" / "engine.py").write_text("# ledger.engine, edited\n")
    with pytest.raises(StaleBuild) as caught:
        require_current(tmp_path)
    message = str(caught.value)
    assert "ledger.engine: its source changed since it was compiled" in message
    assert "switch.codec" not in message
    assert "run scripts/compile" in message and "scripts/compile --clean" in message


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda root: (root / "switch" / "_native.json").unlink(), "cannot be read"),
        (lambda root: (root / "switch" / "_native.json").write_text("{"), "cannot be read"),
        (
            lambda root: (root / "switch" / ("_native__mypyc" + SUFFIX)).unlink(),
            f"the shared library {SHARED_LIBRARY} is missing",
        ),
        (
            lambda root: (root / "switch" / ("codec" + SUFFIX)).unlink(),
            "switch.codec: in the manifest, but its extension file is missing",
        ),
        (
            lambda root: (root / "merchants" / ("discounts" + SUFFIX)).write_bytes(b""),
            "merchants.discounts: compiled, but not in the manifest",
        ),
        (
            lambda root: (root / "switch" / "codec.py").unlink(),
            "switch.codec: compiled, but its source is gone",
        ),
    ],
)
def test_every_kind_of_mismatch_is_named(tmp_path: Path, damage: object, problem: str) -> None:
    fake_build(tmp_path)
    damage(tmp_path)  # type: ignore[operator]
    found = state(tmp_path)
    assert any(problem in line for line in found.problems), found.problems
    with pytest.raises(StaleBuild):
        require_current(tmp_path)


def test_another_interpreters_extension_files_are_not_counted(tmp_path: Path) -> None:
    fake_build(tmp_path)
    (tmp_path / "switch" / "velocity.cpython-39-x86_64-linux-gnu.so").write_bytes(b"")
    assert require_current(tmp_path).compiled == ("ledger.engine", "switch.codec")


def test_clean_removes_the_build_and_leaves_the_sources(tmp_path: Path) -> None:
    fake_build(tmp_path)
    assert builder.clean(tmp_path) == 4  # two modules, the shared library, the manifest
    assert state(tmp_path) == compiled.BuildState((), ())
    assert (tmp_path / "switch" / "codec.py").is_file()


def test_honar_refuses_to_run_on_a_stale_build(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def stale() -> None:
        raise StaleBuild("the compiled modules do not match their sources (x): run scripts/compile")

    monkeypatch.setattr(compiled, "require_current", stale)
    assert cli.main(["ledger", "totals"]) == 2
    assert "honar: the compiled modules do not match their sources" in capsys.readouterr().err


def test_every_compiled_module_exists_and_logs_is_left_out() -> None:
    for module in compiled.MODULES:
        assert compiled.source_path(module).is_file(), module
    assert "switch.logs" not in compiled.MODULES  # crashed the suite's process when compiled
