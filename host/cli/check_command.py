"""`edgebp check`: a board's integer gradients against the float64 reference.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

import numpy as np

from edgebp import fixed
from edgebp.host.boards.session import Session
from edgebp.host.cli.data import Dataset
from edgebp.host.cli.workload import (
    declared_range,
    prepare,
    targets,
)
from edgebp.host.nets.qnet import Hyper, QuantNet
from edgebp.host.nets.reference import epoch_order
from edgebp.host.nets.validate import compare_gradients, core_gradients

if TYPE_CHECKING:
    pass



from edgebp.host.cli.common import (
    State,
    describe_board,
    describe_net,
    end_session,
    open_session,
)

# -- check --


def random_samples(qnet: QuantNet, n: int, seed: int) -> Dataset:
    """Inputs uniform over the declared range and random targets: gradients far from any
    minimum, where their errors are measured best (host/nets/validate.py)."""
    rng = np.random.default_rng(seed)
    lo, hi = declared_range(qnet)
    X = rng.uniform(lo, hi, (n, qnet.sizes[0]))
    n_out = qnet.sizes[-1]
    if qnet.loss == fixed.SOFTMAX_CE:
        y = rng.integers(0, n_out, (n, 1)).astype(np.float64)
    elif qnet.loss == fixed.BCE:
        y = rng.integers(0, 2, (n, n_out)).astype(np.float64)
    else:  # a quarter of what the output format holds: targets the net can reach
        lim = fixed.Q_MAX * 2.0 ** -qnet.shift_a[-1] / 4
        y = rng.uniform(-lim, lim, (n, n_out))
    return Dataset(X, y, f"random, in the declared input range, seed {seed}", [], [])


def board_gradients(session: Session, qnet: QuantNet, hyper: Hyper, Xq, Tq):
    """The board's gradient sums over all samples: accumulate-only TRAIN of batch_max samples
    at a time (what its sums are guarded for), read, then a fresh load to zero them."""
    GW = [np.zeros((qnet.sizes[l + 1], qnet.sizes[l]), np.int64) for l in range(qnet.L)]
    GB = [np.zeros(qnet.sizes[l + 1], np.int64) for l in range(qnet.L)]
    for i in range(0, len(Xq), qnet.batch_max):
        if i:
            session.load(qnet, hyper)
        session.train(Xq[i:i + qnet.batch_max], Tq[i:i + qnet.batch_max], accumulate=True)
        gw, gb = session.get_grads()
        for l in range(qnet.L):
            GW[l] += gw[l]
            GB[l] += gb[l]
    return GW, GB


def do_check(state: State, args: argparse.Namespace) -> int:
    p = prepare(args)
    qnet = p.qnet
    if args.data is None:
        ds = random_samples(qnet, args.samples, args.seed)
    else:
        ds = p.data.subset(epoch_order(len(p.data), args.seed, 0)[:args.samples])
        ds.name = f"{p.data.name}, chosen with seed {args.seed}"
    Xq, Tq = qnet.quantize_inputs(ds.X), targets(qnet, ds)

    session = open_session(state, args)
    board = describe_board(state)
    session.load(qnet, p.hyper)
    GW, GB = board_gradients(session, qnet, p.hyper, Xq, Tq)
    end_session(state, args)

    cw, cb, count, sides = core_gradients(qnet, Xq, Tq)
    differ = [l + 1 for l in range(qnet.L)
              if not (np.array_equal(GW[l], cw[l]) and np.array_equal(GB[l], cb[l]))]
    report = compare_gradients(qnet, GW, GB, count, Xq, Tq, sides)
    ok = report.ok and not differ
    if args.json:
        print(json.dumps({"board": board, "net": p.net_from, "data": ds.name,
                          "bit_identical_to_core": not differ, "layers_differing": differ,
                          "ok": ok, "validation": report.to_dict()}))
        return 0 if ok else 1
    print(f"board     {board}")
    print(f"net       {describe_net(qnet)} ({p.net_from})")
    print(f"data      {len(ds)} samples ({ds.name})")
    if differ:
        print(f"the board's gradient sums DIFFER from the core's (CPython) in layer "
              f"{', '.join(map(str, differ))}")
    else:
        print("the board's gradient sums equal the core's (CPython), bit for bit")
    print("against the float64 reference:")
    print(report.table())
    return 0 if ok else 1
