"""Gradient validation on every runtime: the gradient script of edgebp.host.nets.validate, for every
activation x loss pair, run under CPython, wasm-MicroPython (31-bit small ints, like a 32-bit
MCU), unix MicroPython and the emulated boards (with the kernels kern.select() picks there:
viper or native), one process per runtime.

Each runtime's integer gradient sums must be bit-identical to the core's under CPython in this
process (edgebp.host.nets.validate.core_gradients), and must pass compare_gradients' thresholds
against the float64 reference.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgebp.host.boards import mprun
from edgebp.host.nets import validate as V
from edgebp.host.nets.quantize import quantize
from edgebp.host.nets.spec import init_float_weights, make_spec
from floatinit import random_case, sample_batch

HIDDEN = ["identity", "relu", "leaky_relu", "sigmoid", "tanh"]
OUTPUTS = [  # (output activation, loss): every pairing the core accepts
    ("identity", "mse"),
    ("relu", "mse"),
    ("leaky_relu", "mse"),
    ("sigmoid", "mse"),
    ("tanh", "mse"),
    ("softmax", "softmax_ce"),
    ("sigmoid", "bce"),
]
COMBOS = [(h, o, lo) for h, (o, lo) in itertools.product(HIDDEN, OUTPUTS)]


def _quantised(hidden, out, loss):
    # the user's path: a spec, its float init, the quantiser calibrated on the batch;
    # 32 samples in gradient sums of batch_max 8, so the script adds up four chunks
    sizes = [5, 8, 6, 3]
    fields = dict(sizes=sizes, activations=[hidden, hidden, out], loss=loss,
                  input_range={"min": -1, "max": 1}, optimizer={"lr": 0.05}, batch_max=8)
    if loss == "mse":
        fields["target_range"] = {"min": 0 if out in ("relu", "sigmoid") else -1, "max": 1}
    spec = make_spec(**fields)
    X, T = sample_batch(sizes, spec.acts, spec.loss_code, 32, np.random.default_rng(1))
    q = quantize(spec, *init_float_weights(spec), X, T)
    return q, q.quantize_inputs(X), q.quantize_targets(T)


def _calibrated(hidden, out, loss, seed):
    # formats calibrated apart from the quantiser; batch_max 1: every sample its own sum
    q, X, T = random_case(hidden, out, loss, seed, sizes=(4, 7, 2), n=12)
    return q, q.quantize_inputs(X), q.quantize_targets(T)


CASES = [(f"{h}-{o}-{lo}-quantised", *_quantised(h, o, lo)) for h, o, lo in COMBOS] + [
    (f"{h}-{o}-{lo}-calibrated", *_calibrated(h, o, lo, seed))
    for seed, (h, o, lo) in enumerate(COMBOS)]


@pytest.fixture(scope="module")
def expected():
    """The core's gradient sums under CPython, in this process, per case."""
    return [V.core_gradients(q, Xq, Tq) for _, q, Xq, Tq in CASES]


def _blocks(text: str) -> list[str]:
    # the output of the scripts run one after another: one gradient block per case
    blocks, current = [], []
    for line in text.splitlines():
        current.append(line)
        if line.strip() == "EDGEBP-END":
            blocks.append("\n".join(current))
            current = []
    return blocks


def test_cases_cover_every_pair():
    assert len(COMBOS) == 35 and len({c[0] for c in CASES}) == 70


def test_gradients_on_every_runtime(runtime, expected):
    # one script, the routine in it once (core_gradient_script per net, 70 times over, is
    # 77 KB compiled: more than a 192 KiB board holds beside the core)
    script = V.core_gradient_script_many([(q, Xq, Tq) for _, q, Xq, Tq in CASES])
    # the kernels first, as the firmware imports them (edgebp/imports.py): the native
    # module's one block of 23 KB comes before the script's 28 KB, not into what that leaves
    files = {**mprun.core_files(), "gradnets.py": script}
    main = "from edgebp import kern\nkern.select()\nimport gradnets\n"
    result = mprun.run(runtime, main, files, timeout=300)
    assert result.ok, f"{runtime} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    blocks = _blocks(result.stdout)
    assert len(blocks) == len(CASES), result.stdout[-2000:]
    differ, fail = [], []
    for (name, q, Xq, Tq), block, (GW, GB, count, sides) in zip(CASES, blocks, expected,
                                                                strict=True):
        gw, gb, n, zs = V.parse_gradient_output(block)
        same = n == count and all(np.array_equal(a, b) for a, b in zip(gw + gb, GW + GB,
                                                                        strict=True))
        same = same and all((a is None and b is None) or np.array_equal(a, b)
                            for a, b in zip(zs, sides, strict=True))
        if not same:
            differ.append(name)
        report = V.compare_gradients(q, gw, gb, n, Xq, Tq, zs)
        if not report.ok:
            fail.append(f"{name}\n{report.table()}")
    assert not differ, f"{runtime}: sums differ from the core under CPython: {differ}"
    assert not fail, f"{runtime}: gradients disagree with the reference:\n" + "\n".join(fail)
