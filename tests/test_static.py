"""Lint and type checks, run as tests so that one pytest command covers them.

The core (`edgebp/`) and the firmware (`firmware/`) are type-checked against MicroPython's
standard library (micropython-stdlib-stubs plus a port's stubs, merged into one custom typeshed),
so using a module or function MicroPython lacks is an error. The host (`host/`) is checked
against CPython. mypy cannot follow setuptools' package-dir mapping, so both checks run on a tree
of symlinks laid out as the installed package: edgebp/, edgebp/firmware/, edgebp/host/.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# mypy's cache remembers file paths, so the shadow trees live at fixed places next to it.
CACHE = REPO / ".mypy_cache"
STDLIB_STUBS = "micropython-stdlib-stubs"
# The RP2040's port: a real 32-bit MCU, with `machine` and `micropython` stubs.
PORT_STUBS = "micropython-rp2-stubs"


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)


def _workdir(name: str) -> Path:
    work = CACHE / f"shadow-{name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def _shadow_package(root: Path, with_host: bool) -> Path:
    pkg = root / "edgebp"
    pkg.mkdir(parents=True)
    for entry in (REPO / "edgebp").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    (pkg / "firmware").symlink_to(REPO / "firmware")
    if with_host:
        (pkg / "host").symlink_to(REPO / "host")
    return pkg


def _repo_paths(output: str, pkg: Path) -> str:
    """mypy's messages with shadow-tree paths turned back into repository paths."""
    for prefix in (pkg, pkg.relative_to(REPO)):
        for sub, real in (("host/", "host/"), ("firmware/", "firmware/"), ("", "edgebp/")):
            output = output.replace(f"{prefix}/{sub}", real)
    return output


def _micropython_typeshed(root: Path) -> Path:
    """A typeshed whose stdlib is MicroPython's: the stdlib stubs plus the port's modules."""
    stdlib = root / "stdlib"
    stdlib.mkdir(parents=True)
    versions: list[str] = []
    for dist_name in (STDLIB_STUBS, PORT_STUBS):
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{dist_name} is not installed (pip install -e '.[test]')")
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in sorted(tops):
            src = Path(str(dist.locate_file(top)))
            if top == "stdlib":
                for entry in src.iterdir():
                    if entry.name == "VERSIONS":
                        versions += entry.read_text().splitlines()
                    else:
                        (stdlib / entry.name).symlink_to(entry)
            elif top == "stubs":
                (root / "stubs").symlink_to(src)
            elif top == "__builtins__.pyi":
                continue  # for pyright; mypy takes MicroPython's builtins from stdlib/
            elif top.endswith(".pyi") or (src.is_dir() and any(src.rglob("*.pyi"))):
                # Stubs found this way are not checked themselves, as with typeshed.
                if not (stdlib / top).exists():
                    (stdlib / top).symlink_to(src)
                    versions.append(f"{top.removesuffix('.pyi')}: 3.0-")
    (stdlib / "VERSIONS").write_text("\n".join(versions) + "\n")
    return root


def test_ruff():
    done = _run([sys.executable, "-m", "ruff", "check", "--no-cache", "."])
    assert done.returncode == 0, done.stdout + done.stderr


def test_types_device_against_micropython():
    work = _workdir("device")
    pkg = _shadow_package(work / "src", with_host=False)
    typeshed = _micropython_typeshed(work / "typeshed")
    config = work / "mypy.ini"
    config.write_text("[mypy]\npython_version = 3.10\ncheck_untyped_defs = True\n")
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(config)]
    cmd += ["--custom-typeshed-dir", str(typeshed), "--no-site-packages"]
    cmd += ["--cache-dir", str(CACHE / "device")]
    done = subprocess.run(
        [*cmd, "-p", "edgebp"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "MYPYPATH": str(pkg.parent)},
    )
    assert done.returncode == 0, _repo_paths(done.stdout + done.stderr, pkg)


def test_types_host_against_cpython():
    pkg = _shadow_package(_workdir("host") / "src", with_host=True)
    files = sorted(str(p) for p in (pkg / "host").rglob("*.py"))
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml")]
    # The core is checked against MicroPython above; here only how the host uses it matters.
    cmd += ["--follow-imports", "silent", "--cache-dir", str(CACHE / "host")]
    done = subprocess.run(
        [*cmd, *files],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "MYPYPATH": str(pkg.parent)},
    )
    assert done.returncode == 0, _repo_paths(done.stdout + done.stderr, pkg)
