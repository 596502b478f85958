"""Dependencies point inward: the pure core imports no I/O, clock, randomness or storage.

The checks read the source (``ast``), so they see every import statement, including imports
inside functions and under ``if TYPE_CHECKING``, without importing anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("switch", "hsm_sim", "ledger", "merchants", "scripts")

# Modules that decide or compute from values only; the transport, storage and tools wrap them.
PURE_FILES = (
    "switch/codec.py",
    "switch/framing.py",
    "switch/requests.py",
    "switch/authorize.py",
    "switch/flows.py",
    "switch/calendar.py",
    "ledger/model.py",
    "ledger/domain.py",
    "ledger/jsonenc.py",
    "merchants/directory.py",
    "merchants/discounts.py",
)
PURE_GLOBS = ("switch/dialects/*.py", "hsm_sim/*.py")
# The HSM's network face, when it exists, is transport and may use sockets.
HSM_TRANSPORT = {"hsm_sim/server.py", "hsm_sim/client.py"}
FORBIDDEN_IN_PURE = {"asyncio", "socket", "sqlalchemy", "aiomqtt", "time", "random", "threading"}

SQLALCHEMY_FREE_PACKAGES = ("switch", "hsm_sim", "merchants", "scripts")
ISO8583_ALLOWED = {"switch/codec.py"}
ISO8583_ALLOWED_DIRS = ("switch/dialects/",)


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def pure_modules() -> list[Path]:
    paths = [ROOT / name for name in PURE_FILES]
    for pattern in PURE_GLOBS:
        paths += sorted(p for p in ROOT.glob(pattern) if relative(p) not in HSM_TRANSPORT)
    return paths


def package_modules(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports (``a.b`` for ``from a.b import c``)."""
    return imports_in_source(path.read_text(encoding="utf-8"), relative(path))


def imports_in_source(source: str, name: str) -> set[str]:
    """The imports of ``source``, the text of the module at ``name`` (``switch/codec.py``)."""
    tree = ast.parse(source, filename=name)
    names: set[str] = set()
    package = name.rsplit("/", 1)[0].replace("/", ".")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                assert node.module is not None
                module = node.module
            names.add(module)
            # ``from pkg import mod`` may import a submodule.
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value))
    return names


def top_levels(names: set[str]) -> set[str]:
    return {name.split(".", 1)[0] for name in names}


def project_file(module: str) -> Path | None:
    """The source file of a project module, or None for third-party and standard modules."""
    if module.split(".", 1)[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def reachable_project_files(start: Path) -> set[Path]:
    """``start`` and every project module it imports, directly or through others."""
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            parts = name.split(".")
            # Importing a.b.c runs a/__init__.py and a/b/__init__.py too.
            for end in range(1, len(parts) + 1):
                found = project_file(".".join(parts[:end]))
                if found is not None:
                    todo.append(found)
    return seen


def test_every_listed_pure_module_exists() -> None:
    missing = [name for name in PURE_FILES if not (ROOT / name).is_file()]
    assert missing == []
    assert len(pure_modules()) > len(PURE_FILES) + 5  # the globs found the dialects and hsm_sim


@pytest.mark.parametrize("path", pure_modules(), ids=relative)
def test_pure_module_imports_no_io_clock_or_storage(path: Path) -> None:
    found = top_levels(imported_modules(path)) & FORBIDDEN_IN_PURE
    assert found == set(), f"{relative(path)} imports {sorted(found)}"


@pytest.mark.parametrize("path", pure_modules(), ids=relative)
def test_pure_module_reaches_no_io_clock_or_storage_through_project_imports(path: Path) -> None:
    offenders = {
        relative(reached): sorted(top_levels(imported_modules(reached)) & FORBIDDEN_IN_PURE)
        for reached in reachable_project_files(path)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_sqlalchemy_is_imported_only_by_ledger_storage() -> None:
    offenders = [
        relative(path)
        for path in package_modules(*SQLALCHEMY_FREE_PACKAGES)
        if "sqlalchemy" in top_levels(imported_modules(path))
    ]
    assert offenders == []
    users = {
        relative(path)
        for path in package_modules("ledger")
        if "sqlalchemy" in top_levels(imported_modules(path))
    }
    # The storage modules do use it (so this check is looking at the right thing) ...
    assert {"ledger/store.py", "ledger/schema.py"} <= users
    # ... and the ledger's pure model does not.
    assert users.isdisjoint({"ledger/model.py", "ledger/domain.py"})


def test_iso8583_is_imported_only_behind_the_codec_and_dialects() -> None:
    users = {
        relative(path)
        for path in package_modules(*PACKAGES)
        if "iso8583" in top_levels(imported_modules(path))
    }
    offenders = {
        name
        for name in users
        if name not in ISO8583_ALLOWED and not name.startswith(ISO8583_ALLOWED_DIRS)
    }
    assert offenders == set()
    assert "switch/codec.py" in users  # the codec does wrap pyiso8583


def test_import_walker_sees_every_form_of_import() -> None:
    """The walker finds imports hidden in functions, ``from`` imports and relative imports."""
    source = (
        "from __future__ import annotations\n"
        "import os.path as p\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from sqlalchemy import Engine\n"
        "def f():\n"
        "    import socket\n"
        "    from .dialects import base\n"
        "    return __import__('time')\n"
    )
    names = imports_in_source(source, "switch/probe.py")
    assert {"os.path", "sqlalchemy", "socket", "time", "switch.dialects"} <= names
    assert "switch.dialects.base" in names
    assert top_levels(names) & FORBIDDEN_IN_PURE == {"sqlalchemy", "socket", "time"}
