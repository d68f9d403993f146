"""What a program of the user's own costs on a board: heap and instructions per sample.

    python -m edgebp.host.bench.learner [--runtime unix] [--board cortex-m3] [--board rv32]
                                        [--icount]

Heap: gc.mem_alloc() after a fresh start (a new process on the unix port, a soft reset on a
board), then the imports and a loaded digits 64-32-10 net (tanh/softmax, integer inputs
0..16, SGD batch 1), collected, for each kernel set the runtime has and three footprints:
`predict` (edgebp.learner and the net, what `edgebp deploy --infer` installs), `learn` (that
and edgebp.ckpt, which the first checkpoint imports: `deploy --learner`) and `server` (the
training server, firmware/server.py, with the same net installed and its frame buffers at
their default size). The sources are compiled for the board (.mpy) on the emulated boards and
imported from .py on the unix port.

--icount: instructions per sample of Learner.learn, .learn with the first layer frozen,
.predict, .evaluate and the input map alone (Learner.inputs, 64 inputs) on the emulated
Cortex-M3 (qemu `-icount shift=0`, where
time.ticks_us() counts 1000 guest instructions: deterministic, not timed), raw integer
inputs through the net's input map included.
"""

from __future__ import annotations

import argparse
import sys

from edgebp.host.bench.kernels import _table
from edgebp.host.boards import mprun, qemu

SETS = ("python", "viper", "native")
FOOTPRINTS = ("predict", "learn", "server")

_HEAP = """
import gc
gc.collect()
BASE = gc.mem_alloc()
KIND = {kind!r}
SET = {kset!r}
try:
    from edgebp import kern
    K = kern.select(SET)
except ImportError:
    K = None
if K is None:
    print("HEAP", SET, KIND, "n/a")
else:
    if KIND == "server":
        from edgebp import ebp
        from edgebp.firmware.server import Server

        class Link:
            def readinto(self, b):
                return 0

            def write(self, b):
                return len(b)

        srv = Server(Link(), kernels=K)
        with open("net.ebp", "rb") as f:
            srv.install(ebp.load(f, K))
    else:
        from edgebp.learner import Learner
        ln = Learner("net.ebp", "", SET)
        if KIND == "learn":
            from edgebp import ckpt
    gc.collect()
    print("HEAP", SET, KIND, gc.mem_alloc() - BASE)
"""

_ICOUNT = """
import gc, time
from array import array
from edgebp import kern
from edgebp.learner import Learner

X = [((i * 7919) % 17) for i in range(64)]
OUT = array("h", [0] * 10)

def per_sample(fn, a, b, n):
    t0 = time.ticks_us()
    for _ in range(n):
        fn(a, b)
    return time.ticks_diff(time.ticks_us(), t0) / n

def nothing(a, b):
    pass

def inputs(a, b):
    ln.inputs(a)

for name, n in (("python", 2), ("viper", 10), ("native", 40)):
    try:
        kern.select(name)
    except ImportError:
        continue
    ln = Learner("net.ebp", "", name)
    e = per_sample(nothing, X, 3, n)
    row = [per_sample(ln.learn, X, 3, n) - e]
    ln.freeze(1)
    row.append(per_sample(ln.learn, X, 3, n) - e)
    row.append(per_sample(ln.predict, X, OUT, n) - e)
    row.append(per_sample(ln.evaluate, X, 3, n) - e)
    row.append(per_sample(inputs, X, 3, n) - e)
    print("I", name, " ".join("%.1f" % v for v in row))
    ln = None
    gc.collect()
"""


def digits_net() -> bytes:
    """The board part of a 64-32-10 tanh/softmax net on raw 0..16 pixels."""
    from edgebp.host.nets import ebpfile
    from edgebp.host.nets.quantize import quantize
    from edgebp.host.nets.spec import init_float_weights, make_spec

    spec = make_spec(sizes=[64, 32, 10], activations=["tanh", "softmax"], loss="softmax_ce",
                     input_range={"min": 0, "max": 16}, integer_inputs=True,
                     optimizer={"lr": 0.05})
    Ws, Bs = init_float_weights(spec)
    q = quantize(spec, Ws, Bs)
    return ebpfile.board_part(q, spec.hyper())


def heap(runtime: str, net: bytes) -> dict[tuple[str, str], int | None]:
    files: dict[str, str | bytes] = {**mprun.core_files(True), "net.ebp": net}
    out: dict[tuple[str, str], int | None] = {}
    for kset in SETS:
        for kind in FOOTPRINTS:
            r = mprun.run(runtime, _HEAP.format(kind=kind, kset=kset), files, timeout=120)
            if not r.ok:
                raise RuntimeError(f"{runtime} {kset} {kind}: {r.stdout[-2000:]}{r.stderr}")
            f = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("HEAP")][-1]
            out[(kset, kind)] = None if f[3] == "n/a" else int(f[3])
    return out


def icount(kind: str, net: bytes) -> dict[str, list[float]]:
    files: dict[str, str | bytes] = {**mprun.core_files(False), "net.ebp": net}
    native = mprun.native_module(kind)
    if native is not None:
        files[mprun.NATIVE_DEST] = native
    with qemu.QemuBoard(kind, icount=True) as board:
        code, text, timed_out = qemu.run_on(board, _ICOUNT, files, 1800)
    if code != 0 or timed_out:
        raise RuntimeError(f"icount on {kind} failed:\n{text[-3000:]}")
    return {f[1]: [float(v) for v in f[2:]] for f in (ln.split() for ln in text.splitlines())
            if f[:1] == ["I"]}


def heap_table(runtime: str, h: dict[tuple[str, str], int | None]) -> str:
    rows = []
    for kset in SETS:
        if all(h[(kset, k)] is None for k in FOOTPRINTS):
            continue
        rows.append([kset] + [f"{h[(kset, k)]:,}" if h[(kset, k)] is not None else "n/a"
                              for k in FOOTPRINTS])
    return (f"{runtime}: heap after import + a loaded 64-32-10 net (bytes, gc.mem_alloc)\n"
            + _table(["kernels", "predict (--infer)", "learn (--learner)", "server"], rows))


def icount_table(kind: str, r: dict[str, list[float]]) -> str:
    rows = [[k] + [f"{v * 1000:,.0f}" for v in r[k]] for k in SETS if k in r]
    return (f"{kind}: instructions per sample, 64-32-10 tanh/softmax, batch 1, raw inputs\n"
            + _table(["kernels", "learn", "learn, layer 1 frozen", "predict", "evaluate",
                      "input map alone"], rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runtime", action="append", choices=("unix",),
                        help="a host MicroPython (repeatable)")
    parser.add_argument("--board", action="append", choices=qemu.KINDS,
                        help="emulated board (repeatable)")
    parser.add_argument("--icount", action="store_true",
                        help="instructions per sample on the emulated cortex-m3")
    args = parser.parse_args(argv)
    net = digits_net()
    targets = (args.runtime or []) + (args.board or [])
    if not targets and not args.icount:
        targets = ["unix"]
    try:
        for name in targets:
            reason = mprun.find_runtime(name)
            if reason is not None:
                print(f"bench.learner: {name}: {reason}", file=sys.stderr)
                return 2
            print(heap_table(name, heap(name, net)))
            print()
        if args.icount:
            print(icount_table("cortex-m3", icount("cortex-m3", net)))
    except (RuntimeError, qemu.QemuError) as e:
        print(f"bench.learner: {e}", file=sys.stderr)
        return 1
    finally:
        qemu.stop_shared()
    return 0


if __name__ == "__main__":
    sys.exit(main())
