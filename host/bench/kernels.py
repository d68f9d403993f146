"""Speed of the viper kernels against the pure-Python kernels, on the unix MicroPython.

    python -m edgebp.host.bench.kernels [--target-ms 40]

Prints microseconds per call of each kernel at the shapes of a 64-32-10 net, then a whole
training step of that net (learn() with batch 1: forward, backward, update; softmax
cross-entropy output, tanh or ReLU hidden layer) with its phases and multiply-accumulates
per second. A step has 64*32 + 32*10 MACs forward, 32*10 backward (layer 0 sends no error)
and 64*32 + 32*10 in the gradient outer products: 5056 in all (biases not counted).
Each figure is the best of five timed loops, each loop sized to take about --target-ms.
On x64 this measures the emitter and interpreter overheads, not an MCU's speed.
"""

from __future__ import annotations

import argparse
import sys

from edgebp.host.boards import mprun

MACS_PER_STEP = 64 * 32 + 32 * 10 + 32 * 10 + 64 * 32 + 32 * 10

# (kernel, shape, call with the kernel module as K): the calls one learn() of the net makes
CALLS = [
    ("matvec", "64->32", "K.matvec(W0, B0, A0, 64, 32, 16384, 7, 13, Z0)"),
    ("matvec", "32->10", "K.matvec(W1, B1, A1, 32, 10, 16384, 6, 14, Z1)"),
    ("act_fwd tanh", "32", "K.act_fwd(4, Z0, A1, 32, 41)"),
    ("act_fwd relu", "32", "K.act_fwd(1, Z0, A1, 32, 41)"),
    ("act_fwd softmax", "10", "K.act_fwd(5, Z1, A2, 10, 41)"),
    ("matvec_t", "32<-10", "K.matvec_t(W1, D1, 32, 10, 4, 14, E0)"),
    ("act_bwd tanh", "32", "K.act_bwd(4, E0, Z0, A1, D0, 32, 41)"),
    ("act_bwd relu", "32", "K.act_bwd(1, E0, Z0, A1, D0, 32, 41)"),
    ("outer_acc", "64x32", "K.outer_acc(G0, GB0, D0, A0, 64, 32, 16384, 0)"),
    ("outer_acc", "32x10", "K.outer_acc(G1, GB1, D1, A1, 32, 10, 16384, 0)"),
    ("update nearest", "2048", "K.update(W0, G0, None, 2048, 128, 9, 0, 0, 0, 0, RNG)"),
    ("update momentum+decay+stoch.", "2048",
     "K.update(W0, G0, V0, 2048, 128, 9, 230, 164, 8, 1, RNG)"),
]

_PRELUDE = """
import time
from array import array
from edgebp import fixed, kernels as PURE, kernels_viper as VIPER
from edgebp.net import Net

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

def best_us(loop, K, target_us):
    # calls per loop sized to the target time; the best of five loops
    n = 1
    while True:
        dt = loop(K, n)
        if dt * 4 >= target_us or n >= 1 << 20:
            break
        n *= 4
    n = max(1, n * target_us // max(dt, 1))
    return min(loop(K, n) for i in range(5)) / n

def make_net(K, hidden):
    sa1 = 14 if hidden == fixed.TANH else 12
    net = Net([64, 32, 10], [hidden, fixed.SOFTMAX], [14, sa1, 14], [12, 12], [14, 14],
              fixed.SOFTMAX_CE, 1, False, 41, K)
    for l in range(2):
        w = net.W[l]
        for i in range(len(w)):
            w[i] = ((i * 7919) % 1001) - 500
    net.set_lr(128, 9)
    return net

X = buf("h", 64, 10000)
T = array("h", [3])

def learn_loop(net, n):
    t0 = time.ticks_us()
    for i in range(n):
        net.learn(X, T)
    return time.ticks_diff(time.ticks_us(), t0)

def phase_loop(net, n):
    # learn() spelled out (batch 1), timing each phase
    f = b = u = 0
    for i in range(n):
        t0 = time.ticks_us()
        net.forward(X)
        t1 = time.ticks_us()
        net.backward(T)
        t2 = time.ticks_us()
        net.update()
        t3 = time.ticks_us()
        f += time.ticks_diff(t1, t0)
        b += time.ticks_diff(t2, t1)
        u += time.ticks_diff(t3, t2)
    return f / n, b / n, u / n
"""

_KERNEL_LOOP = """
def loop_{i}(K, n):
    t0 = time.ticks_us()
    for i in range(n):
        {call}
    return time.ticks_diff(time.ticks_us(), t0)
print("K {i} %.3f %.3f" % (best_us(loop_{i}, PURE, TARGET), best_us(loop_{i}, VIPER, TARGET)))
"""

_STEP = """
for hidden in (fixed.TANH, fixed.RELU):
    out = []
    for K in (PURE, VIPER):
        net = make_net(K, hidden)
        step = best_us(lambda K, n: learn_loop(net, n), K, TARGET)
        n = max(10, int(TARGET // step))
        f, b, u = min((phase_loop(net, n) for i in range(5)), key=sum)
        out.append("%.3f %.3f %.3f %.3f" % (step, f, b, u))
    print("S %s %s" % (fixed.ACT_NAMES[hidden], " ".join(out)))
"""


def device_script(target_ms: float) -> str:
    parts = [_PRELUDE, f"TARGET = {int(target_ms * 1000)}\n"]
    for i, (_, _, call) in enumerate(CALLS):
        parts.append(_KERNEL_LOOP.format(i=i, call=call))
    parts.append(_STEP)
    return "".join(parts)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(r[0].ljust(widths[0]) if c == 0 else r[c].rjust(widths[c])
                         for c in range(len(r)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def report(stdout: str) -> str:
    kernel_rows = []
    step_rows = []
    phase_rows = []
    for text in stdout.splitlines():
        f = text.split()
        if f[:1] == ["K"]:
            name, shape, _ = CALLS[int(f[1])]
            pure, viper = float(f[2]), float(f[3])
            kernel_rows.append([name, shape, f"{pure:.1f}", f"{viper:.2f}", f"{pure / viper:.1f}x"])
        elif f[:1] == ["S"]:
            hidden = f[1]
            p_step, p_f, p_b, p_u, v_step, v_f, v_b, v_u = map(float, f[2:10])
            step_rows.append([
                f"64-{hidden}32-softmax10", f"{p_step:.1f}", f"{v_step:.1f}",
                f"{p_step / v_step:.1f}x", f"{MACS_PER_STEP / p_step:.2f}",
                f"{MACS_PER_STEP / v_step:.1f}",
            ])
            for phase, p, v in (("forward", p_f, v_f), ("backward", p_b, v_b),
                                ("update", p_u, v_u)):
                phase_rows.append([f"{hidden} {phase}", f"{p:.1f}", f"{v:.1f}", f"{p / v:.1f}x"])
    out = [
        "Kernels at the shapes of a 64-32-10 net (us per call)",
        _table(["kernel", "shape", "pure", "viper", "speed-up"], kernel_rows),
        "",
        f"Training step, batch 1 ({MACS_PER_STEP} MACs per step)",
        _table(["net", "pure us/step", "viper us/step", "speed-up", "pure MMAC/s",
                "viper MMAC/s"], step_rows),
        "",
        "Phases of the step (us; the phase timers add a little to each)",
        _table(["phase", "pure", "viper", "speed-up"], phase_rows),
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target-ms", type=float, default=40.0,
                        help="length of each timed loop (default 40)")
    args = parser.parse_args(argv)
    reason = mprun.find_runtime("unix")
    if reason is not None:
        print(f"bench_kernels: {reason}", file=sys.stderr)
        return 2
    result = mprun.run("unix", device_script(args.target_ms), mprun.core_files(False),
                       timeout=600)
    if not result.ok:
        print(result.stdout + result.stderr, file=sys.stderr)
        return 1
    print(report(result.stdout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
