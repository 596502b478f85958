"""``scripts/compile`` / ``python -m scripts.compiled``: build, check or remove the optional
compiled modules (mypyc).

The switch runs as plain Python. This build compiles the modules on the request path
(:data:`switch.compiled.MODULES`) with mypyc, which needs mypy (the test extras), a C compiler
and the Python headers. It takes about half a minute; the switch then spends about a quarter
less CPU per purchase (docs/benchmarks.md, run 8). The extension modules are written next to
their sources with a manifest of the sources' digests; ``honar`` and the test suite refuse to
run when a source changed since (:func:`switch.compiled.require_current`).

    scripts/compile            build (replacing any earlier build)
    scripts/compile --check    say whether a build is present and current (exit 1 if stale)
    scripts/compile --clean    remove the build: the sources run again
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from switch.compiled import (
    GROUP,
    MODULES,
    PACKAGES,
    ROOT,
    built_files,
    manifest_path,
    require_current,
    source_digest,
    source_path,
    state,
)

BUILD_TIMEOUT_S = 900.0

SETUP = """\
from mypyc.build import mypycify
from setuptools import setup

setup(
    name="honar-switch-native",
    ext_modules=mypycify({paths!r}, group_name={group!r}, opt_level="3"),
)
"""


def clean(root: Path = ROOT) -> int:
    """Remove the extension files and the manifest; return how many files went."""
    removed = 0
    for path in built_files(root):
        path.unlink()
        removed += 1
    manifest = manifest_path(root)
    if manifest.exists():
        manifest.unlink()
        removed += 1
    return removed


def build(root: Path = ROOT) -> float:
    """Compile :data:`MODULES` in place; return the seconds it took. Raises RuntimeError."""
    try:
        import mypy.version
    except ImportError:
        raise RuntimeError(
            "mypy is not installed here: run scripts/compile, which installs the test extras"
        ) from None
    started = time.perf_counter()
    clean(root)
    digests = {module: source_digest(source_path(module, root)) for module in MODULES}
    with tempfile.TemporaryDirectory(prefix="honar-compile-") as directory:
        work = Path(directory)
        # setuptools reads the pyproject.toml of its working directory, and the project's is
        # not for it: build in a directory of links to the packages instead. The extension
        # files are written through the links, next to their sources.
        for package in PACKAGES:
            os.symlink(root / package, work / package)
        paths = [source_path(module, Path()).as_posix() for module in MODULES]
        (work / "setup.py").write_text(SETUP.format(paths=paths, group=GROUP), encoding="utf-8")
        try:
            done = subprocess.run(
                [sys.executable, "setup.py", "build_ext", "--inplace"],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            clean(root)
            raise RuntimeError(f"the build took over {BUILD_TIMEOUT_S:g} s; removed") from None
        if done.returncode != 0:
            clean(root)
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
            raise RuntimeError(f"mypyc failed (exit {done.returncode}); nothing kept:\n{tail}")
    if {module: source_digest(source_path(module, root)) for module in MODULES} != digests:
        clean(root)
        raise RuntimeError("a source changed during the build; nothing kept, run it again")
    manifest = {
        "sources": digests,
        "mypy": mypy.version.__version__,
        "python": platform.python_version(),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    manifest_path(root).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Build (default), check or clean; print what was done."""
    parser = argparse.ArgumentParser(
        prog="scripts/compile",
        description="Build (default), check or remove the optional compiled modules (mypyc).",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="is a build present and current?")
    action.add_argument("--clean", action="store_true", help="remove the build")
    args = parser.parse_args(argv)
    if args.clean:
        print(f"removed {clean()} files; the switch runs from its sources")
        return 0
    if args.check:
        found = state()
        if found.problems:
            print("stale build:\n  " + "\n  ".join(found.problems))
            return 1
        if not found.compiled:
            print("no compiled modules: the switch runs from its sources")
        else:
            print(f"{len(found.compiled)} compiled modules, current with their sources")
        return 0
    try:
        seconds = build()
    except RuntimeError as error:
        print(f"scripts/compile: {error}", file=sys.stderr)
        return 1
    found = require_current()
    print(f"compiled {len(found.compiled)} modules in {seconds:.0f} s: {', '.join(found.compiled)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
