"""The optional compiled build: which modules it covers, and whether it matches the sources.

``scripts/compile`` (:mod:`scripts.compiled`) compiles :data:`MODULES` with mypyc, the mypy
project's compiler of type-annotated Python to C extension modules. The extension modules land
next to their ``.py`` files, and Python then imports them instead of the sources. That makes a
stale build dangerous: after a source is edited, the old compiled code would still run. So the
build writes :data:`MANIFEST` (each module's source SHA-256), and :func:`problems` compares it
with the sources and the extension files present; ``honar`` and the test suite refuse to run on
a mismatch (:func:`require_current`). ``scripts/compile --clean`` removes the build.

Not compiled: everything else, and ``switch/logs.py`` in particular, whose compiled form made
the test suite's process crash in the garbage collector: mypyc's generated ``clear`` of a
compiled ``logging.StreamHandler`` subclass releases a weak reference that the logging module's
``WeakSet`` still holds (docs/operations.md).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "switch" / "_native.json"
GROUP = "switch._native"  # the mypyc group: its shared library is switch/_native__mypyc.*.so
SHARED_LIBRARY = "switch._native__mypyc"
MODULES = (
    "switch.codec",
    "switch.message",
    "switch.requests",
    "switch.authorize",
    "switch.flows",
    "switch.calendar",
    "switch.velocity",
    "switch.metrics",
    "switch.service",
    "hsm_sim.des",
    "hsm_sim.mac",
    "hsm_sim.pin",
    "hsm_sim.pinblock",
    "hsm_sim.hsm",
    "ledger.domain",
    "ledger.model",
    "ledger.engine",
    "merchants.discounts",
    "merchants.directory",
)
PACKAGES = ("switch", "hsm_sim", "ledger", "merchants")


class StaleBuild(RuntimeError):
    """The compiled modules do not match their sources."""


@dataclass(frozen=True)
class BuildState:
    """What is on disk: the compiled modules found and what is wrong with them."""

    compiled: tuple[str, ...]  # modules with an extension file for this interpreter
    problems: tuple[str, ...]


def source_path(module: str, root: Path = ROOT) -> Path:
    """The ``.py`` file of a dotted module name."""
    return root.joinpath(*module.split(".")).with_suffix(".py")


def source_digest(path: Path) -> str:
    """The SHA-256 of a source file, hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_path(root: Path = ROOT) -> Path:
    """Where the build's manifest is under ``root``."""
    return root / MANIFEST.relative_to(ROOT)


def built_files(root: Path = ROOT) -> list[Path]:
    """Every extension file under the packages (they hold no native code but this build's)."""
    return sorted(path for package in PACKAGES for path in (root / package).rglob("*.so"))


def compiled_modules(root: Path = ROOT) -> tuple[str, ...]:
    """The modules this interpreter imports compiled, the shared library aside (no digests
    checked: :func:`state` does that)."""
    return tuple(m for m in _found(root) if m != SHARED_LIBRARY)


def _found(root: Path) -> list[str]:
    """The modules of the extension files this interpreter would import, sorted."""
    modules = (_module_of(path, root) for path in built_files(root))
    return sorted(module for module in modules if module is not None)


def state(root: Path = ROOT) -> BuildState:
    """Compare the extension files and the manifest with the sources under ``root``."""
    found = _found(root)
    if not found:
        return BuildState((), ())
    compiled = tuple(m for m in found if m != SHARED_LIBRARY)
    problems: list[str] = []
    manifest = manifest_path(root)
    try:
        recorded: dict[str, str] = dict(json.loads(manifest.read_text(encoding="utf-8"))["sources"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        return BuildState(compiled, (f"{manifest}: cannot be read ({error})",))
    if SHARED_LIBRARY not in found:
        problems.append(f"the shared library {SHARED_LIBRARY} is missing")
    for module in sorted(set(recorded) | set(compiled)):
        if module not in recorded:
            problems.append(f"{module}: compiled, but not in the manifest")
        elif module not in compiled:
            problems.append(f"{module}: in the manifest, but its extension file is missing")
        elif not source_path(module, root).is_file():
            problems.append(f"{module}: compiled, but its source is gone")
        elif source_digest(source_path(module, root)) != recorded[module]:
            problems.append(f"{module}: its source changed since it was compiled")
    return BuildState(compiled, tuple(problems))


def _module_of(path: Path, root: Path) -> str | None:
    """The module an extension file stands for, if this interpreter would import it."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        stem = path.name[: -len(suffix)]
        if path.name.endswith(suffix) and stem.isidentifier():  # not velocity.cpython-39-….so
            return ".".join([*path.parent.relative_to(root).parts, stem])
    return None


def require_current(root: Path = ROOT) -> BuildState:
    """Raise :class:`StaleBuild` (naming every problem and the fix) when the build is stale."""
    found = state(root)
    if found.problems:
        listed = "; ".join(found.problems)
        raise StaleBuild(
            f"the compiled modules do not match their sources ({listed}): run scripts/compile "
            "to build them again, or scripts/compile --clean to run the sources"
        )
    return found
