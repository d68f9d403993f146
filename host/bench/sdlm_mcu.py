"""Instructions of one SDLM step and one curvature pass of a 64-32-10 net against SGD's step
on an emulated board.

    python -m edgebp.host.bench.sdlm_mcu [--board cortex-m3] [--board rv32]

As edgebp.host.bench.adam_mcu: the board runs under qemu with `-icount shift=0`, where
`time.ticks_us()` advances once per 1000 instructions. The net is edgebp.host.bench.mcu's
(tanh, softmax cross-entropy, 2,410 parameters), one sample's gradient sums pending before
each timed step, both with stochastic rounding and weight decay. Per kernel set: SGD's
backward pass (delta and gradient sums) and its step (Net.update, no momentum), SDLM's
curvature pass (Sdlm.curvature: the output curvature, sq_t and act_bwd twice down the net,
curv_acc into every parameter's estimate) and its step (Sdlm.update: the sdlm kernel per
tensor; mu 0.1, gamma 0.05 as tests/combos.py's "sdlm" case). Prints instructions per call
and per parameter.
"""

from __future__ import annotations

import sys

from edgebp.host.bench.kernels import _table
from edgebp.host.bench.mcu import board_main, run_icount
from edgebp.host.nets.qnet import sdlm_q

SIZES = (64, 32, 10)
N = SIZES[0] * SIZES[1] + SIZES[1] + SIZES[1] * SIZES[2] + SIZES[2]
MU, GAMMA, FC, FH = 0.1, 0.05, (18, 14), (14, 14)

_SCRIPT = """
import time
from array import array
from edgebp import fixed, kernels, sdlm
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

def make_net(K, opt):
    net = Net([64, 32, 10], [fixed.TANH, fixed.SOFTMAX], [14, 14, 14], [12, 12], [14, 14],
              fixed.SOFTMAX_CE, 1, False, 41, K)
    for l in range(2):
        w = net.W[l]
        for i in range(len(w)):
            w[i] = ((i * 7919) % 1001) - 500
    net.set_lr(128, 9)
    net.set_batch(1)
    net.set_decay(164, 16)
    net.set_rounding(1)
    if opt:
        sdlm.attach(net, __SDLM__)
    return net

X = array("h", [((i * 7919) % 20001) - 10000 for i in range(64)])
T = array("h", [3])

def dt(t0):
    return time.ticks_diff(time.ticks_us(), t0)

for name, K in SETS:
    net = make_net(K, False)
    net.forward(X)
    t0 = time.ticks_us()
    net.backward(T)
    bw = dt(t0)
    t0 = time.ticks_us()
    net.update()
    sgd = dt(t0)
    net = make_net(K, True)
    net.forward(X)
    net.backward(T)  # the first sample of the sum: its curvature too
    t0 = time.ticks_us()
    net.opt.curvature(net)  # the same pass again, timed
    cv = dt(t0)
    t0 = time.ticks_us()
    net.update()
    st = dt(t0)
    print("S", name, bw, sgd, cv, st)
"""


def script() -> str:
    mu_m, mu_e, g, fc, fh = sdlm_q(MU, GAMMA, FC, FH)
    return _SCRIPT.replace("__SDLM__", f"{mu_m}, {mu_e}, {g}, {list(fc)}, {list(fh)}")


def measure(kind: str, timeout: float = 1800) -> list[tuple[str, int, int, int, int]]:
    """[(kernel set, SGD backward, SGD step, SDLM curvature, SDLM step)] in kilo-instructions
    on a fresh board."""
    out = run_icount(kind, script(), ("sdlm_native",), timeout)
    rows = []
    for line in out.splitlines():
        f = line.split()
        if f[:1] == ["S"]:
            rows.append((f[1], int(f[2]), int(f[3]), int(f[4]), int(f[5])))
    return rows


def report(kind: str, rows: list[tuple[str, int, int, int, int]]) -> str:
    body = []
    for name, bw, sgd, cv, st in rows:
        body.append([name, f"{bw * 1000:,}", f"{sgd * 1000:,}", f"{sgd * 1000 / N:,.1f}",
                     f"{cv * 1000:,}", f"{cv * 1000 / N:,.1f}", f"{st * 1000:,}",
                     f"{st * 1000 / N:,.1f}", f"{st / max(sgd, 1):.1f}"])
    header = ["kernels", "SGD backward", "SGD step", "/param", "SDLM curvature", "/param",
              "SDLM step", "/param", "step SDLM/SGD"]
    return (f"{kind} (qemu -icount shift=0; instructions, +-1000), a 64-32-10 net "
            f"({N:,} parameters), one sample pending\n" + _table(header, body))


def main(argv: list[str] | None = None) -> int:
    return board_main("bench.sdlm_mcu", __doc__, lambda kind: report(kind, measure(kind)), argv)


if __name__ == "__main__":
    sys.exit(main())
