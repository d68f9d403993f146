"""The expected fleet, computed another way (for tests/test_fleet.py and the emulated-board
fleet in tests/test_boards_cli.py): each client's round trained on the integer twin
(edgebp.host.nets.twin, proven bit-identical to the boards elsewhere) and the replies averaged
here in exact fractions, rounded half up, rather than through Flower, the boards' links and
host/fleet/average.py."""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction

import numpy as np

from conftest import REPO
from edgebp.host.fleet import partition
from edgebp.host.fleet.config import Settings
from edgebp.host.fleet.workload import Workload, arrays_of, read_numbers
from edgebp.host.nets.quantize import quantize
from edgebp.host.nets.reference import epoch_order
from edgebp.host.nets.spec import init_float_weights, make_spec
from edgebp.host.nets.twin import TwinNet

DATA = REPO / "examples" / "data"


def round_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def exact_average(replies) -> list[np.ndarray]:
    total = sum(n for _, n in replies)
    out = []
    for t in range(len(replies[0][0])):
        flat = [a[t].reshape(-1).tolist() for a, _ in replies]
        vals = [round_half_up(Fraction(sum(n * f[i] for f, (_, n) in zip(flat, replies,
                                                                             strict=True)),
                                       total)) for i in range(len(flat[0]))]
        out.append(np.array(vals, np.int16).reshape(replies[0][0][t].shape))
    return out


def twin_fleet(wl: Workload, st: Settings, left_out=()) -> list[list[np.ndarray]]:
    """Global weights after each round, every client's round trained on the twin; (partition,
    round) pairs in `left_out` do not report."""
    parts = partition.split(wl.labels, st.clients, st.partition, st.seed, st.per)
    g = arrays_of(wl.qnet)
    out = [g]
    for r in range(1, st.rounds + 1):
        replies = []
        for p, idx in enumerate(parts):
            if (p, r) in left_out:
                continue
            seed = st.client_seed(r, p)
            twin = TwinNet.from_qnet(wl.net_with(g), replace(wl.hyper, seed=seed))
            for e in range(st.local_epochs):
                twin.reset_stats()
                twin.train_epoch(wl.Xq[idx], wl.Tq[idx], epoch_order(len(idx), seed, e))
                twin.update()
            replies.append((arrays_of(twin.to_qnet(wl.qnet)), len(idx)))
        g = exact_average(replies)
        out.append(g)
    return out


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def iris_workload(seed: int = 1) -> Workload:
    X, y = read_numbers(DATA / "iris_train.csv")
    Xt, yt = read_numbers(DATA / "iris_test.csv")
    spec = make_spec(sizes=[4, 8, 3], activations=["relu", "softmax"], loss="softmax_ce",
                     input_range={"min": [4, 2, 1, 0], "max": [8, 4.5, 7, 2.5]},
                     optimizer={"lr": 0.1, "momentum": 0.9, "batch": 8,
                                "rounding": "stochastic", "seed": seed},
                     batch_max=8, init_seed=seed)
    W, B = init_float_weights(spec)
    qnet = quantize(spec, W, B, X, y[:, 0])
    return Workload(qnet, spec.hyper(), qnet.quantize_inputs(X),
                    qnet.quantize_targets(y[:, 0]), qnet.quantize_inputs(Xt),
                    qnet.quantize_targets(yt[:, 0]), labels=y[:, 0])
