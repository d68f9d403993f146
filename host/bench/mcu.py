"""Instructions per training step on an emulated microcontroller: deterministic, not timed.

    python -m edgebp.host.bench.mcu [--board cortex-m3] [--board rv32]

Starts the board under qemu with `-icount shift=0` (host/boards/qemu.py), where the board's
`time.ticks_us()` advances once per 1000 guest instructions whatever the host is doing, and
runs the 64-32-10 net's training step and each of its kernels there with every kernel set
the board can import (pure Python, viper, native). It prints instructions per call, per
multiply-accumulate (MAC) and per parameter. A step of 64-32-10 has 5,056 MACs: forward
64*32 + 32*10, backward 32*10 (the first layer sends no error back), weight gradients
64*32 + 32*10 (biases not counted). Figures are instructions, not cycles: a Cortex-M3 runs
about 1.1-1.5 cycles per instruction. Runs repeat to within a few per cent. For the native
set it also splits the step into the one native call (learn_net) and the engine's Python
around it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from edgebp.host.bench.kernels import _table
from edgebp.host.boards import mprun, qemu

MACS_PER_STEP = 64 * 32 + 32 * 10 + 32 * 10 + 64 * 32 + 32 * 10
PARAMS = 64 * 32 + 32 + 32 * 10 + 10

# (kernel, shape, unit count for the per-unit column, unit, call with the kernel module as K)
CALLS = [
    ("matvec", "64->32", 64 * 32, "MAC", "K.matvec(W0, B0, A0, 64, 32, 16384, 7, 13, Z0)"),
    ("matvec", "32->10", 32 * 10, "MAC", "K.matvec(W1, B1, A1, 32, 10, 16384, 6, 14, Z1)"),
    ("matvec_t", "32<-10", 32 * 10, "MAC", "K.matvec_t(W1, D1, 32, 10, 4, 14, E0)"),
    ("outer_acc", "64x32", 64 * 32, "MAC", "K.outer_acc(G0, GB0, D0, A0, 64, 32, 16384, 0)"),
    ("act_fwd tanh", "32", 32, "unit", "K.act_fwd(4, Z0, A1, 32, 41)"),
    ("act_fwd relu", "32", 32, "unit", "K.act_fwd(1, Z0, A1, 32, 41)"),
    ("act_fwd softmax", "10", 10, "unit", "K.act_fwd(5, Z1, A2, 10, 41)"),
    ("act_bwd tanh", "32", 32, "unit", "K.act_bwd(4, E0, Z0, A1, D0, 32, 41)"),
    ("update nearest", "2048", 2048, "param",
     "K.update(W0, G0, None, 2048, 128, 9, 0, 0, 0, 0, RNG)"),
    ("update momentum+decay+stoch.", "2048", 2048, "param",
     "K.update(W0, G0, V0, 2048, 128, 9, 230, 164, 8, 1, RNG)"),
]

# (hidden activation, batch): the training steps measured
STEPS = [("tanh", 1), ("relu", 1), ("tanh", 16), ("relu", 16)]

_PRELUDE = """
import time
from array import array
from edgebp import fixed, kernels
from edgebp.net import Net

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
print("SETS", " ".join(name for name, K in SETS))

def buf(t, n, m):
    # deterministic values in [-m, m]
    return array(t, [((i * 7919) % (2 * m + 1)) - m for i in range(n)])

W0 = buf("h", 2048, 2000)
B0 = buf("h", 32, 500)
W1 = buf("h", 320, 2000)
B1 = buf("h", 10, 500)
A0 = buf("h", 64, 200)
A1 = buf("h", 32, 200)
A2 = buf("h", 10, 200)
Z0 = buf("h", 32, 9000)
Z1 = buf("h", 10, 9000)
D0 = buf("h", 32, 200)
D1 = buf("h", 10, 200)
E0 = buf("h", 32, 200)
G0 = buf("i", 2048, 1 << 20)
GB0 = buf("i", 32, 1 << 20)
G1 = buf("i", 320, 1 << 20)
GB1 = buf("i", 10, 1 << 20)
V0 = buf("i", 2048, 1 << 20)
RNG = array("i", [fixed.seed30(1)])
BUDGET = 4000  # ticks (x1000 instructions) per measurement

def ticks(loop, K, n):
    t0 = time.ticks_us()
    loop(K, n)
    return time.ticks_diff(time.ticks_us(), t0)

def per_call(loop, empty, K):
    # kilo-instructions per call: calls enough to fill the budget, less the empty loop's
    n = 1
    while True:
        dt = ticks(loop, K, n)
        if dt >= BUDGET // 8 or n >= 1 << 16:
            break
        n *= 4
    n = max(n, n * BUDGET // max(dt, 1))
    return (ticks(loop, K, n) - ticks(empty, K, n)) / n

def empty(K, n):
    for i in range(n):
        pass

def make_net(K, hidden, batch):
    sa1 = 14 if hidden == fixed.TANH else 12
    net = Net([64, 32, 10], [hidden, fixed.SOFTMAX], [14, sa1, 14], [12, 12], [14, 14],
              fixed.SOFTMAX_CE, batch, False, 41, K)
    for l in range(2):
        w = net.W[l]
        for i in range(len(w)):
            w[i] = ((i * 7919) % 1001) - 500
    net.set_lr(128, 9 + fixed.ceil_log2(batch))
    net.set_batch(batch)
    return net

X = buf("h", 64, 10000)
T = array("h", [3])
"""

_KERNEL = """
def loop_{i}(K, n):
    for i in range(n):
        {call}
print("K {i} " + " ".join("%.3f" % per_call(loop_{i}, empty, K) for name, K in SETS))
"""

_STEP = """
for hidden, batch in {steps}:
    code = fixed.TANH if hidden == "tanh" else fixed.RELU
    out = []
    inner = None
    for name, K in SETS:
        net = make_net(K, code, batch)
        def learn(K, n):
            for i in range(n):
                net.learn(X, T)
        # whole updates only: a multiple of the batch
        n = batch
        while ticks(learn, K, n) < BUDGET // 4:
            n *= 2
        n *= 2
        out.append("%.3f" % ((ticks(learn, K, n) - ticks(empty, K, n)) / n))
        if name == "native" and hasattr(K, "learn_net"):
            # the same steps with learn_net called directly: net.learn less this is the
            # engine's Python around the native call
            def direct(K, n):
                for i in range(n):
                    K.learn_net(net, X, T)
            inner = (ticks(direct, K, n) - ticks(empty, K, n)) / n
    print("S %s %d %s" % (hidden, batch, " ".join(out)))
    if inner is not None:
        print("N %s %d %.3f" % (hidden, batch, inner))
"""


def device_script() -> str:
    parts = [_PRELUDE]
    for i, (_, _, _, _, call) in enumerate(CALLS):
        parts.append(_KERNEL.format(i=i, call=call))
    parts.append(_STEP.format(steps=repr(STEPS)))
    return "".join(parts)


def measure(kind: str, timeout: float = 1800) -> dict:
    """{"sets": [...], "kernels": {i: [kilo-instructions per call per set]}, "steps":
    {(hidden, batch): [...]}} measured on a fresh `kind` board with icount."""
    out = run_icount(kind, device_script(), timeout=timeout)
    result: dict = {"sets": [], "kernels": {}, "steps": {}, "inner": {}}
    for line in out.splitlines():
        f = line.split()
        if f[:1] == ["SETS"]:
            result["sets"] = f[1:]
        elif f[:1] == ["K"]:
            result["kernels"][int(f[1])] = [float(v) for v in f[2:]]
        elif f[:1] == ["S"]:
            result["steps"][(f[1], int(f[2]))] = [float(v) for v in f[3:]]
        elif f[:1] == ["N"]:
            result["inner"][(f[1], int(f[2]))] = float(f[3])
    return result


def report(kind: str, r: dict) -> str:
    sets = r["sets"]
    krows = []
    for i, (name, shape, units, unit, _) in enumerate(CALLS):
        ki = r["kernels"][i]
        krows.append([name, shape, *(f"{k * 1000:,.0f}" for k in ki),
                      *(f"{k * 1000 / units:,.1f}" for k in ki), unit])
    kheader = ["kernel", "shape", *(f"{s} instr" for s in sets),
               *(f"{s} /unit" for s in sets), "unit"]
    srows = []
    for (hidden, batch), ks in r["steps"].items():
        srows.append([f"64-32-10 {hidden}, batch {batch}", *(f"{k * 1000:,.0f}" for k in ks),
                      *(f"{k * 1000 / MACS_PER_STEP:,.1f}" for k in ks)])
    sheader = ["training step (per sample)", *(f"{s} instr" for s in sets),
               *(f"{s} /MAC" for s in sets)]
    parts = [
        f"{kind} (qemu -icount shift=0; instructions, not cycles)",
        f"Training step of 64-32-10, softmax cross-entropy, {MACS_PER_STEP:,} MACs per sample",
        _table(sheader, srows),
        "",
    ]
    if r.get("inner"):
        native = sets.index("native")
        nrows = []
        for key, inner in r["inner"].items():
            step = r["steps"][key][native]
            nrows.append([f"64-32-10 {key[0]}, batch {key[1]}", f"{step * 1000:,.0f}",
                          f"{inner * 1000:,.0f}", f"{(step - inner) * 1000:,.0f}",
                          f"{inner * 1000 / MACS_PER_STEP:,.1f}"])
        parts += [
            "Native step: inside the one native call (learn_net: C and the attribute reads and "
            "writes it makes) and the engine's Python around it (the method call of Net.learn)",
            _table(["training step (per sample)", "native instr", "in learn_net", "engine",
                    "learn_net /MAC"], nrows),
            "",
        ]
    return "\n".join(parts + [
        "Kernels at the shapes of that net",
        _table(kheader, krows),
    ])


def run_icount(kind: str, script: str, native: tuple[str, ...] = (),
               timeout: float = 1800) -> str:
    """The output of `script` on a fresh `kind` board with icount, the core beside it and
    the native kernels, with the native modules `native` (e.g. "adam_native") too where the
    board loads them. RuntimeError if it fails or times out."""
    files: dict[str, str | bytes] = {**mprun.core_files(False)}
    for module in ("kernels_native", *native):
        data = mprun.native_module(kind, module)
        if data is not None:
            files[f"edgebp/{module}.mpy"] = data
    with qemu.QemuBoard(kind, icount=True) as board:
        code, out, timed_out = qemu.run_on(board, script, files, timeout)
    if code != 0 or timed_out:
        why = "timed out" if timed_out else f"exit {code}"
        raise RuntimeError(f"benchmark on {kind} failed ({why}):\n{out[-3000:]}")
    return out


def board_main(prog: str, doc: str | None, table: Callable[[str], str],
               argv: list[str] | None = None) -> int:
    """The command line of a board benchmark: `table(kind)` printed for each --board."""
    parser = argparse.ArgumentParser(description=(doc or prog).split("\n")[0])
    parser.add_argument("--board", action="append", choices=qemu.KINDS,
                        help="emulated board (repeatable; default: cortex-m3)")
    args = parser.parse_args(argv)
    for kind in args.board or ["cortex-m3"]:
        reason = qemu.find(kind)
        if reason is not None:
            print(f"{prog}: {kind}: {reason}", file=sys.stderr)
            return 2
        try:
            print(table(kind))
        except (RuntimeError, qemu.QemuError) as e:
            print(f"{prog}: {e}", file=sys.stderr)
            return 1
        print()
    return 0


def main(argv: list[str] | None = None) -> int:
    return board_main("bench.mcu", __doc__, lambda kind: report(kind, measure(kind)), argv)


if __name__ == "__main__":
    sys.exit(main())
