"""The core, run on every runtime, against itself under CPython (and the numpy twin).

One process per runtime trains every activation x loss x optimiser case and the edge-of-range
cases with the pure kernels (edgebp.kernels, named: kern.select() would pick viper or native
where they load; tests/test_viper.py and tests/test_native.py test those); each learn() and
update() runs under heap_lock, which on wasm-MicroPython and the emulated boards (31-bit small
ints, like a 32-bit MCU) also proves that no intermediate leaves the small-int range.
"""

from __future__ import annotations

import pytest

from combos import all_cases, edge_cases
from coredrive import expected_states, run_cases, state_line
from edgebp.host.nets.twin import TwinNet

CASES = all_cases() + edge_cases()


@pytest.fixture(scope="module")
def expected() -> dict[str, str]:
    return expected_states(CASES)


def test_cases_cover_every_combination():
    names = {c.name for c in CASES}
    assert len(names) == len(CASES)
    # 7 hidden activations x 6 (loss, output) pairs x 7 optimisers, plus 42 edge nets and 6
    # each for Adam, SDLM and weight formats that follow the weights
    assert len(CASES) == 7 * 6 * 7 + 7 * 6 + 6 + 6 + 6


def test_twin_equals_core_on_every_case(expected):
    for c in CASES:
        tw = TwinNet.from_qnet(c.qnet, c.hyper)
        tw.train_epoch(c.Xq, c.Tq)
        tw.update()
        assert state_line(c.name, tw)[len("STATE "):] == expected[c.name], c.name


def test_core_bit_exact_and_allocation_free(runtime, expected):
    result, got = run_cases(runtime, CASES, "edgebp.kernels", timeout=600)
    assert result.ok, f"{runtime} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert set(got) == set(expected)
    bad = [name for name in expected if got[name] != expected[name]]
    assert not bad, f"{runtime}: {len(bad)} cases differ from the core on CPython: {bad[:5]}"
    print(f"[{runtime}] {len(got)} cases bit-identical to the core under CPython")
