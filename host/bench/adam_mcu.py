"""Instructions of one Adam step against one SGD step of a 64x32 tensor on an emulated board.

    python -m edgebp.host.bench.adam_mcu [--board cortex-m3] [--board rv32]

As edgebp.host.bench.mcu: the board runs under qemu with `-icount shift=0`, where
`time.ticks_us()` advances once per 1000 instructions. Each call gets fresh gradient sums
(and moments) copied in before it is timed, so that every call does a whole step's work: the
SGD update (nearest rounding, no momentum, no decay) and Adam (edgebp.adam.adam's arguments of
a net in training: count 3 of a sum of 4, stochastic rounding, decay) with the kernel set's
adam kernel (edgebp.adam._kernel). Prints instructions per call and per parameter.
"""

from __future__ import annotations

import sys

from edgebp.host.bench.kernels import _table
from edgebp.host.bench.mcu import board_main, run_icount

N = 64 * 32

_SCRIPT = """
import time
from array import array
from edgebp import adam, fixed, kernels

SETS = [("python", kernels)]
try:
    from edgebp import kernels_viper
    SETS.append(("viper", kernels_viper))
except (ImportError, SyntaxError, ValueError):
    pass
try:
    from edgebp import kernels_native
    SETS.append(("native", kernels_native))
except (ImportError, ValueError, OSError):
    pass

def buf(t, n, m, lo=0):
    # deterministic values in [lo - m, lo + m]
    return array(t, [lo + ((i * 7919) % (2 * m + 1)) - m for i in range(n)])

N = __N__
W = buf("h", N, 2000)
G0 = buf("i", N, 1 << 24)
M0 = buf("i", N, 1 << 20)
# second moments with exponents spread over -11..18 and mantissas of 2**22..2**25
V0 = array("i", [(((i * 13) % 30) << 25) | (0x400000 + (i * 7919) % 0x1C00000) for i in range(N)])
G = array("i", G0)
M = array("i", M0)
V = array("i", V0)
RNG = array("i", [fixed.seed30(1)])

def fresh():
    for i in range(N):
        G[i] = G0[i]
        M[i] = M0[i]
        V[i] = V0[i]

for name, K in SETS:
    A = adam._kernel(K)
    fresh()
    t0 = time.ticks_us()
    K.update(W, G, None, N, 128, 9, 0, 0, 0, 0, RNG)
    sgd = time.ticks_diff(time.ticks_us(), t0)
    fresh()
    t0 = time.ticks_us()
    A(W, G, M, V, N, 3, 2, 3277, 33, 20000, 12, 164, 16, 1, RNG)
    ad = time.ticks_diff(time.ticks_us(), t0)
    print("A", name, sgd, ad)
""".replace("__N__", str(N))


def measure(kind: str, timeout: float = 1800) -> list[tuple[str, int, int]]:
    """[(kernel set, SGD update kilo-instructions, Adam kilo-instructions)] on a fresh board."""
    out = run_icount(kind, _SCRIPT, ("adam_native",), timeout)
    rows = []
    for line in out.splitlines():
        f = line.split()
        if f[:1] == ["A"]:
            rows.append((f[1], int(f[2]), int(f[3])))
    return rows


def report(kind: str, rows: list[tuple[str, int, int]]) -> str:
    body = [[name, f"{sgd * 1000:,}", f"{sgd * 1000 / N:,.1f}", f"{ad * 1000:,}",
             f"{ad * 1000 / N:,.1f}", f"{ad / max(sgd, 1):.1f}"] for name, sgd, ad in rows]
    header = ["kernels", "SGD update instr", "/param", "Adam instr", "/param", "Adam/SGD"]
    return (f"{kind} (qemu -icount shift=0; instructions, +-1000), one step of a 64x32 tensor\n"
            + _table(header, body))


def main(argv: list[str] | None = None) -> int:
    return board_main("bench.adam_mcu", __doc__, lambda kind: report(kind, measure(kind)), argv)


if __name__ == "__main__":
    sys.exit(main())
