"""The drift demo (examples/drift.py, examples/drift/): a program deployed once that learns on
the board with no host.

On the emulated cortex-m3 board: deployed, powered on with nothing attached, its power cut
between two checkpoints, powered on again with nothing attached, left to finish. Its log must
show that it went on from its checkpoint and kept learning: every evaluation it wrote, before
and after the cut, is the one the same program writes when it runs through without a cut
(under CPython, on the core's pure-Python kernels), its held-out errors fall while the frozen
copy's rise. The uninterrupted run is also checked on the unix and wasm MicroPython.
"""

from __future__ import annotations

import sys

import pytest

from conftest import REPO, require_runtime
from edgebp.host.boards import mprun

sys.path.insert(0, str(REPO / "examples"))
import drift  # noqa: E402

END = 9000  # examples/drift/main.py


def run_through(runtime: str) -> str:
    """The program's log when it runs without a power cut on `runtime`."""
    files: dict[str, str | bytes] = dict(mprun.core_files())
    ours = drift.board_files()
    files["drift.ebp"] = ours["drift.ebp"]
    files["sensor.py"] = ours["sensor.py"].decode()
    # run where its files are (the WebAssembly port starts at /), then show the log
    script = ("import os, sys\nos.chdir(sys.path[0] or '.')\n" + ours["main.py"].decode()
              + "\nprint(open('drift.log').read())\n")
    result = mprun.run(runtime, script, files, timeout=600)
    assert result.ok, result.stdout + result.stderr
    return result.stdout.split("drift: done", 1)[1]  # the log the program wrote


@pytest.fixture(scope="module")
def through() -> str:
    return run_through("cpython")


def evaluations(text: str) -> list[tuple[int, int, int, int]]:
    return drift.parse(text)[1]


def test_uninterrupted_the_learner_keeps_up_and_the_frozen_copy_falls_behind(through):
    boots, rows = drift.parse(through)
    assert boots == [0] and through.rstrip().endswith("done")
    assert [r[0] for r in rows] == list(range(0, END + 1, 500))
    learner = [r[1] for r in rows]
    frozen = [r[2] for r in rows]
    assert learner[0] == frozen[0]  # the same net at the start
    # the drift moves the rule across a third of the inputs: the frozen net misjudges more
    # and more, the one that learns fewer than at the start
    assert frozen[-1] > frozen[0] + 20
    assert max(learner[2:]) < learner[0] // 2
    assert learner[-1] < frozen[-1] // 4


@pytest.mark.parametrize("runtime", ["unix", "wasm"])
def test_the_program_runs_the_same_under_micropython(runtime, through):
    require_runtime(runtime)
    assert evaluations(run_through(runtime)) == evaluations(through)


def runs(text: str) -> list[tuple[int, list[tuple[int, int, int, int]]]]:
    """The log per power-on: (the reading it started from, its evaluations)."""
    out: list[tuple[int, list[tuple[int, int, int, int]]]] = []
    for line in text.splitlines():
        w = line.split()
        if len(w) == 2 and w[0] == "boot":
            out.append((int(w[1]), []))
        elif len(w) == 4:
            out[-1][1].append(tuple(map(int, w)))  # type: ignore[arg-type]
    return out


def test_alone_on_an_emulated_board_through_a_power_cut(through):
    require_runtime("cortex-m3")
    text = drift.power_cut_run("cortex-m3", log=lambda line: None)
    assert text.rstrip().endswith("done")
    expect = evaluations(through)
    (start, first), (again, second) = runs(text)
    # the first power-on ran from the start until the cut, after its evaluation at CUT_AT:
    # what it wrote is the uninterrupted run's
    assert start == 0 and first == expect[:len(first)] and first[-1][0] >= drift.CUT_AT
    # the second went on from a checkpoint it saved before the cut (one every 400 readings;
    # the last before the cut, which the host cannot time to the reading), not from the
    # start, and from there wrote what the uninterrupted run wrote
    assert again % 400 == 0 and again >= 400
    assert second == [r for r in expect if r[0] >= again] and second
