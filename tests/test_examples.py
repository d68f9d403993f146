"""Each example runs as its README line says, on the twin and on a simulated board, and the
board's fixed-point accuracy is the twin's (the board runs the same bit-identical arithmetic)."""

import re
import subprocess
import sys

import pytest

from conftest import REPO, require_runtime

# (script, arguments small enough for a test)
RUNS = {
    "xor": ["--seeds", "1", "--epochs", "200"],
    "iris": ["--seeds", "1", "--epochs", "10"],
    "digits": ["--seeds", "1", "--epochs", "1"],
    "mnist1d": ["--seeds", "1", "--epochs", "1"],
}


def run(name, *extra):
    cmd = [sys.executable, str(REPO / "examples" / f"{name}.py"), *RUNS[name], *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    # the seed's row: seed, float %, fixed %, gap, float s, fixed s
    row = re.search(r"^ +0 +([\d.]+) +([\d.]+) +[-+][\d.]+ ", done.stdout, re.M)
    assert row, done.stdout
    return float(row[1]), float(row[2])


@pytest.mark.parametrize("name", sorted(RUNS))
def test_example_on_the_twin_and_on_a_simulated_board(name):
    twin = run(name)
    board = run(name, "--sim")
    assert board == twin


def test_example_on_the_micropython_board():
    require_runtime("unix")
    assert run("xor", "--sim", "micropython") == run("xor")
