"""`edgebp bench`: training speed, allocation, RAM and link efficiency, per runtime.

    python -m edgebp.host.bench.step [--port /dev/ttyACM0] [--steps 200] [--samples 300]

For the stated net, 64-32-10 (tanh hidden layer, softmax cross-entropy, batch 1), on every
runtime it can reach (CPython running the core, the WebAssembly MicroPython, the unix
MicroPython and the emulated boards with the pure, the viper and the native kernels where each
loads, and a board on a port whose REPL has the core deployed):
  us/step and MMAC/s   one learn() (forward, backward, update: MACS_PER_STEP multiply-
                       accumulates), the best of three timed loops of --steps steps
  B alloc/step         gc.mem_alloc() before and after a loop of steps, divided by the steps
                       (MicroPython only; it must be 0)
  state RAM            the net's training state on that heap (host/nets/planner.py), measured with
                       gc.mem_alloc() where the runtime allows, and its ratio to the least any
                       trainer could hold (int16 weights and biases)
Then the wire: payload efficiency of TRAIN frames (sample bytes / bytes on the wire), the
samples per second streamed through the in-process pseudo-terminal simulator, and the bound
the same frames meet on a 115200-baud UART (10 bits per byte, answers included).
On x64 the speeds measure interpreter overheads, not an MCU's.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np

from edgebp import fixed
from edgebp.host.bench.kernels import MACS_PER_STEP, _table
from edgebp.host.boards import heap, mprun
from edgebp.host.nets import ebpfile, planner

SIZES = [64, 32, 10]
BAUD = 115200

STEP_COLUMNS = ["runtime", "kernels", "us/step", "MMAC/s", "B alloc/step", "state RAM B",
                "measured B", "minimum B", "state/min"]
WIRE_COLUMNS = ["frame bytes", "samples/frame", "payload/wire", "sim samples/s",
                f"{BAUD} baud samples/s"]

# Runs unchanged under CPython and MicroPython: the net, then per kernel set
# "R <kernels> <ns per step> <bytes allocated in STEPS steps, or -1 off MicroPython>".
_STEPS = """
import gc, sys, time
from array import array
from edgebp import fixed, kernels as PURE
from edgebp.net import Net

KERNELS = [("pure", PURE)]
try:
    from edgebp import kernels_viper
    KERNELS.append(("viper", kernels_viper))
except (ImportError, SyntaxError, ValueError):
    pass
try:
    from edgebp import kernels_native  # where a build for this architecture is on the path
    KERNELS.append(("native", kernels_native))
except (ImportError, ValueError):
    pass

if hasattr(time, "ticks_us"):
    def now():
        return time.ticks_us()
    def since(t0):
        return time.ticks_diff(time.ticks_us(), t0)
else:
    def now():
        return time.perf_counter_ns() // 1000
    def since(t0):
        return now() - t0

def make(K):
    net = Net([64, 32, 10], [fixed.TANH, fixed.SOFTMAX], [14, 14, 14], [12, 12], [14, 14],
              fixed.SOFTMAX_CE, 1, False, 41, K)
    for l in range(2):
        w = net.W[l]
        for i in range(len(w)):
            w[i] = ((i * 7919) % 1001) - 500
    net.set_lr(128, 9)
    return net

X = array("h", [((i * 7919) % 20001) - 10000 for i in range(64)])
T = array("h", [3])

def loop(net, n):
    # a while loop: iterating a range would allocate its iterator
    i = 0
    t0 = now()
    while i < n:
        net.learn(X, T)
        i += 1
    return since(t0)

a0 = alloc = best = 0  # made before the measuring: a new global may grow the dict
for name, K in KERNELS:
    net = make(K)
    loop(net, 3)
    alloc = -1
    if hasattr(gc, "mem_alloc"):
        gc.collect()
        a0 = gc.mem_alloc()
        loop(net, STEPS)
        alloc = gc.mem_alloc() - a0
    best = min(loop(net, STEPS) for i in range(3))
    print("R %s %d %d" % (name, best * 1000 // STEPS, alloc))
"""


def steps_script(steps: int) -> str:
    return f"STEPS = {int(steps)}\n" + _STEPS


def _parse_steps(stdout: str, steps: int) -> list[tuple[str, float, float]]:
    rows = []
    for line in stdout.splitlines():
        f = line.split()
        if f[:1] == ["R"]:
            alloc = int(f[3])
            rows.append((f[1], int(f[2]) / 1000, alloc / steps if alloc >= 0 else -1.0))
    return rows


def _net_file() -> bytes:
    from edgebp.host.nets.qnet import QuantNet

    L = len(SIZES) - 1
    W = [np.zeros((SIZES[l + 1], SIZES[l]), np.int16) for l in range(L)]
    B = [np.zeros(SIZES[l + 1], np.int16) for l in range(L)]
    q = QuantNet(list(SIZES), [fixed.TANH, fixed.SOFTMAX], [14, 14, 14], [12, 12], [14, 14],
                 fixed.SOFTMAX_CE, W, B)
    return ebpfile.board_part(q)


_KERN = {"pure": "python"}  # the bench's names for kern.name()'s


def _step_rows(label: str, stdout: str, steps: int, measured: int | None,
               word: int | None, measured_with: str = "") -> list[list[str]]:
    # measured_with: the kernel set the runtime loads a net with (kern.select()), whose row
    # the measured bytes belong to; the native kernels' fused step keeps tables of its own
    rows = []
    for kernels, us, alloc in _parse_steps(stdout, steps):
        p = planner.plan(SIZES, word=word, fused=kernels == "native") if word else None
        rows.append([
            # a step shorter than the runtime's clock resolution reads as 0 (a few steps on
            # a board whose ticks_us moves in coarse steps): no rate from that
            label, kernels, f"{us:.1f}" if us > 0 else "n/a",
            f"{MACS_PER_STEP / us:.2f}" if us > 0 else "n/a",
            "n/a" if alloc < 0 else f"{alloc:g}",
            str(p.net) if p else "n/a",
            str(measured) if measured is not None and _KERN.get(kernels, kernels) == measured_with
            else "n/a",
            str(p.minimum) if p else "n/a",
            f"{p.net / p.minimum:.2f}x" if p else "n/a",
        ])
    return rows


def bench_runtime(runtime: str, steps: int) -> list[list[str]]:
    """Rows of the step table for one runtime of host/boards/mprun.py."""
    r = mprun.run(runtime, steps_script(steps), mprun.core_files(False), timeout=600)
    if not r.ok:
        raise RuntimeError(f"{runtime}: {r.stdout}{r.stderr}")
    measured = word = None
    measured_with = ""
    if runtime != "cpython":
        use = heap.measure_load(runtime, _net_file())
        measured, word, measured_with = use.net, use.word, use.kernels
    return _step_rows(runtime, r.stdout, steps, measured, word, measured_with)


def bench_port(port: str, steps: int) -> list[list[str]]:
    """Rows of the step table for a board on `port` whose filesystem holds the core: the
    same script, run through its raw REPL (mpremote's transport)."""
    from mpremote.transport_serial import SerialTransport

    t = SerialTransport(port, baudrate=BAUD)
    try:
        t.enter_raw_repl()
        out = t.exec(steps_script(steps)).decode("utf-8", "replace")
        word = int(t.eval("8 if __import__('sys').maxsize > 0x7FFFFFFF else 4"))
        t.exit_raw_repl()
    finally:
        t.close()
    return _step_rows(f"board {port}", out, steps, None, word)


def bench_wire(samples: int, frame_bytes: int = 512, port: str = "sim://") -> list[str]:
    """One row of the wire table: TRAIN frames of at most `frame_bytes` streamed through
    `port`."""
    from edgebp.host.boards.session import Session
    from edgebp.host.nets.qnet import Hyper

    qnet, _ = ebpfile.from_bytes(_net_file())
    rng = np.random.default_rng(0)
    X = rng.integers(-16384, 16385, (samples, SIZES[0])).astype(np.int16)
    T = rng.integers(0, SIZES[-1], (samples, 1)).astype(np.int16)
    with Session(port, frame_bytes=frame_bytes) as s:
        s.load(qnet, Hyper(lr=0.01))
        c = s.counters
        assert c is not None
        # train() asks for STATS before and after its stream: measure one, take two out
        out0, in0 = c.bytes_out, c.bytes_in
        s.stats()
        stats_out, stats_in = c.bytes_out - out0, c.bytes_in - in0
        out0, in0 = c.bytes_out, c.bytes_in
        t0 = time.perf_counter()
        s.train(X, T)
        dt = time.perf_counter() - t0
        frame_bytes = min(s.info.max_payload, s.frame_bytes)
        wire_out = c.bytes_out - out0 - 2 * stats_out
        wire_in = c.bytes_in - in0 - 2 * stats_in
    per = min(255, (frame_bytes - 2) // (2 * (SIZES[0] + 1)))
    payload = samples * 2 * (SIZES[0] + 1)
    per_sample = (wire_out + wire_in) / samples
    return [str(frame_bytes), str(per), f"{payload / wire_out:.3f}", f"{samples / dt:.0f}",
            f"{BAUD / 10 / per_sample:.0f}"]


def run(runtimes: list[str] | None = None, port: str | None = None, steps: int = 200,
        samples: int = 300, out: Callable[[str], object] = print) -> str:
    """Bench every reachable runtime (and the board on `port`); print and return the
    tables. Runtimes that cannot run here are named in a note instead."""
    rows: list[list[str]] = []
    notes = []
    for name in runtimes if runtimes is not None else list(mprun.RUNTIMES):
        reason = mprun.find_runtime(name)
        if reason is not None:
            notes.append(f"{name}: not run ({reason})")
            continue
        rows += bench_runtime(name, steps)
    if port:
        rows += bench_port(port, steps)
    wire_rows = [bench_wire(samples, n) for n in (256, 512, 1024)]
    p4 = planner.plan(SIZES, word=4)
    text = "\n".join([
        f"Training step of {'-'.join(map(str, SIZES))} (tanh, softmax cross-entropy, batch 1; "
        f"{MACS_PER_STEP} MACs per step)",
        _table(STEP_COLUMNS, rows),
        *notes,
        f"On a 32-bit MCU: {p4.net} B of training state for {p4.minimum} B of int16 weights "
        f"({p4.net / p4.minimum:.2f}x).",
        "",
        f"TRAIN frames through the in-process pseudo-terminal simulator ({samples} samples)",
        _table(WIRE_COLUMNS, wire_rows),
    ])
    out(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgebp.host.bench.step",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--port", help="also bench the board on this port (core deployed)")
    ap.add_argument("--runtime", action="append", choices=mprun.RUNTIMES,
                    help="bench only these runtimes (repeatable; default: all reachable)")
    ap.add_argument("--steps", type=int, default=200, help="training steps per timed loop")
    ap.add_argument("--samples", type=int, default=300, help="samples streamed over the link")
    args = ap.parse_args(argv)
    run(args.runtime, args.port, args.steps, args.samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
