"""The bench runs end to end with tiny counts and prints its tables (no timing is asserted)."""

import pytest

from edgebp.host.bench import step as bench
from edgebp.host.boards import mprun, qemu


@pytest.fixture(autouse=True, scope="module")
def _blank_boards():
    """The bench measures the heap of a board that holds only what it sends: the boards
    start on a blank flash, whatever the modules run before it in this process left there
    (after some of them the emulated Cortex-M3 could not build the bench's net)."""
    for kind in mprun.BOARDS:
        qemu.forget(kind)


def test_bench_prints_its_tables():
    lines: list[str] = []
    text = bench.run(steps=2, samples=4, out=lines.append)
    assert lines == [text]
    for column in bench.STEP_COLUMNS + bench.WIRE_COLUMNS:
        assert column in text
    rows = {tuple(line.split()[:2]) for line in text.splitlines()}
    for runtime in mprun.RUNTIMES:
        if mprun.find_runtime(runtime) is None:
            assert (runtime, "pure") in rows
            if runtime in mprun.NATIVE_ARCH:  # a native build for its architecture is sent
                assert (runtime, "native") in rows
    # where MicroPython can count it: a training step allocates nothing, with every kernel set
    counted = [r for r in mprun.RUNTIMES if r != "cpython"]
    for line in text.splitlines():
        f = line.split()
        if f[:1] and f[0] in counted:
            assert f[4] == "0", line
