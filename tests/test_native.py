"""The native kernels (edgebp/native/kernels.c as MicroPython native modules): built from the
source as committed, bit-identical to the pure kernels on x64 and both emulated boards, chosen
first by kern.select() where they load, and deployed for the board's architecture."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from combos import all_cases, edge_cases
from conftest import DEVICE, in_ci, require_runtime, run_device_module
from coredrive import parse_states, run_here, script, state_line
from edgebp.host.boards import board as mb, mprun

# the runtimes that load a native build: the unix port (x64) and the boards
NATIVES = ["unix", *mprun.BOARDS]


def _require_build_tools() -> None:
    if os.environ.get("MPY_DIR"):
        return
    why = "MPY_DIR is not set (a MicroPython tree whose py/ and tools/ build native modules)"
    if in_ci():
        pytest.fail(why, pytrace=False)
    pytest.skip(why)


def test_committed_modules_are_what_the_source_builds():
    # CI rebuilds every architecture from kernels.c and compares byte for byte
    _require_build_tools()
    done = subprocess.run([sys.executable, "-m", "edgebp.host.boards.natmod", "--check"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    for arch in mb.NATIVE_BUILD.values():
        assert f"{arch}" in done.stdout


def test_the_c_tables_are_edgebps_tables():
    done = subprocess.run([sys.executable, "-m", "edgebp.host.nets.ctables", "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", NATIVES)
def test_native_kernels_match_pure_kernels(name):
    require_runtime(name)
    result = run_device_module(name, "tests/device/test_native_dev.py", timeout=600)
    assert "SKIP" not in result.stdout, result.stdout


@pytest.mark.parametrize("name", NATIVES)
def test_native_core_matches_cpython_on_every_case(name):
    # every activation x loss x optimiser case and the edge-of-range nets, trained with the
    # native kernels, each step under heap_lock, against the pure kernels under CPython
    require_runtime(name)
    cases = all_cases() + edge_cases()
    expected = {c.name: state_line(c.name, run_here(c))[len("STATE "):] for c in cases}
    files = mprun.core_files()
    files["devtest.py"] = (DEVICE / "devtest.py").read_text()
    result = mprun.run(name, script(cases, "edgebp.kernels_native"), files, timeout=900)
    assert result.ok, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    got = parse_states(result.stdout)
    assert set(got) == set(expected)
    bad = [n for n in expected if got[n] != expected[n]]
    assert not bad, f"{len(bad)} cases differ from the pure kernels: {bad[:5]}"


SELECT = """
from edgebp import kern
print("default", kern.name(kern.select()))
for k in ("python", "viper", "native"):
    try:
        print(k, kern.name(kern.select(k)))
    except ImportError as e:
        print(k, "ImportError", str(e).split(":")[0])
"""


def test_select_prefers_native_then_viper(runtime):
    result = mprun.run(runtime, SELECT, mprun.core_files(), timeout=60)
    assert result.ok, result.stdout + result.stderr
    native = runtime in NATIVES
    viper = runtime in ("unix", *mprun.BOARDS)
    assert result.stdout.split("\n")[:4] == [
        "default " + ("native" if native else "viper" if viper else "python"),
        "python python",
        "viper viper" if viper else "viper ImportError viper kernels unavailable on this runtime",
        "native native" if native
        else "native ImportError native kernels unavailable on this runtime",
    ]


@pytest.mark.parametrize(("arch", "build"), [
    ("x64", "x64"), ("armv6m", "armv6m"), ("armv7m", "armv7m"),
    # a Cortex-M4/M7 MicroPython reports armv7em(sp/dp) and loads older Thumb builds
    ("armv7em", "armv7m"), ("armv7emsp", "armv7emsp"), ("armv7emdp", "armv7emsp"),
    ("rv32imc", "rv32imc"), ("xtensawin", None), (None, None),
])
def test_deploy_copies_the_build_for_the_boards_architecture(arch, build):
    plan = mb.plan_deploy(arch)
    natives = [i for i in plan.items if i.dest == mb.NATIVE_DEST]
    if build is None:
        assert not natives
        assert plan.kernels.startswith("viper" if arch else "python")
        return
    assert len(natives) == 1 and natives[0].source == f"edgebp/native/{build}"
    assert natives[0].data == (mb.Path(mb.__file__).parents[2] / "edgebp" / "native" / build
                               / "kernels_native.mpy").read_bytes()
    assert plan.kernels.startswith(f"native (the {build} build")


@pytest.mark.parametrize(("mpy", "arch"), [
    (6918, "armv7em"),  # the cortex-m3 board: .mpy 6.3, arch 6
    (77574, "rv32imc"),  # the rv32 board: arch 11 and the zba flag in bit 16
    (2822, "x64"),  # the unix port on x64
    (6, None),  # no native emitter
])
def test_facts_read_the_architecture_without_its_flags(mpy, arch):
    facts = mb.Facts((1, 28, 0), mpy, "", "", "/", 0, 0, 0, 0)
    assert facts.arch == arch
    assert facts.mpy_version == (6, 3) or mpy == 6
