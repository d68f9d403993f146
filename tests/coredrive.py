"""Drive the core over a list of cases: in this process, or as a script for any runtime.

The script trains each case sample by sample (learn, then update() for a partial last batch),
every step under heap_lock on MicroPython, and prints one line of state per case, so that
runs on different runtimes can be compared line for line.
"""

from __future__ import annotations

import numpy as np

from combos import Case
from edgebp.net import Net

STATE_PREFIX = "STATE "


def state_line(name: str, net) -> str:
    parts = [name]
    for l in range(net.L):
        parts.append(" ".join(str(int(v)) for v in np.ravel(net.W[l])))
        parts.append(" ".join(str(int(v)) for v in np.ravel(net.B[l])))
        if net.VW[l] is not None:
            parts.append(" ".join(str(int(v)) for v in np.ravel(net.VW[l])))
            parts.append(" ".join(str(int(v)) for v in np.ravel(net.VB[l])))
    parts.append(f"{int(net.rng[0])} {net.loss_sum} {net.correct} {net.seen}")
    return STATE_PREFIX + "|".join(parts)


def run_here(case: Case, kernels=None) -> Net:
    from array import array

    net = case.qnet.build(case.hyper, kernels)
    for x, t in zip(case.Xq, case.Tq, strict=True):
        net.learn(array("h", x.astype("<i2").tobytes()), array("h", t.astype("<i2").tobytes()))
    net.update()
    return net


_DRIVER = '''
import devtest
from array import array

def state_line(name, net):
    parts = [name]
    for l in range(net.L):
        parts.append(" ".join(str(v) for v in net.W[l]))
        parts.append(" ".join(str(v) for v in net.B[l]))
        if net.VW[l] is not None:
            parts.append(" ".join(str(v) for v in net.VW[l]))
            parts.append(" ".join(str(v) for v in net.VB[l]))
    parts.append("%d %d %d %d" % (net.rng[0], net.loss_sum, net.correct, net.seen))
    return "STATE " + "|".join(parts)

def drive(name, make, X, T, n_in, n_t, n):
    net = make()
    x = array("h", bytes(2 * n_in))
    t = array("h", bytes(2 * n_t))
    for s in range(n):
        for i in range(n_in):
            x[i] = X[s * n_in + i]
        for i in range(n_t):
            t[i] = T[s * n_t + i]
        devtest.no_alloc(net.learn, x, t)
    devtest.no_alloc(net.update)
    print(state_line(name, net))
'''


def script(cases: list[Case], kernels: str | None = None) -> str:
    """Source that runs every case on a runtime (needs devtest.py and the core files)."""
    out = [_DRIVER]
    for i, c in enumerate(cases):
        src = c.qnet.device_source(c.hyper, kernels).replace("def make():", f"def make_{i}():")
        out.append(src)
        X = np.asarray(c.Xq, "<i2")
        T = np.asarray(c.Tq, "<i2")
        out.append(
            f"drive({c.name!r}, make_{i}, array('h', {X.tobytes()!r}), "
            f"array('h', {T.tobytes()!r}), {X.shape[1]}, {T.shape[1]}, {X.shape[0]})"
        )
    out.append('print("DONE")')
    return "\n".join(out) + "\n"


def parse_states(stdout: str) -> dict[str, str]:
    states = {}
    for line in stdout.splitlines():
        if line.startswith(STATE_PREFIX):
            body = line[len(STATE_PREFIX):]
            states[body.split("|", 1)[0]] = body
    return states
