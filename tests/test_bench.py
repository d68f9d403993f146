"""The bench runs end to end with tiny counts and prints its tables (no timing is asserted)."""

from edgebp.host.bench import step as bench
from edgebp.host.boards import mprun


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
    # where MicroPython can count it: a training step allocates nothing
    for line in text.splitlines():
        f = line.split()
        if f[:1] in (["wasm"], ["unix"]):
            assert f[4] == "0", line
