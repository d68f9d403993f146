"""One client of a fleet: a round of local training on one board, and the Flower ClientApp.

A round on a board: open a session (a simulated board is started for it; a real board's
server is started from its REPL, and it is left at its REPL afterwards), load the global net
with the round's hyper-parameters (the client's own seed: a fresh optimiser state, momentum
zero), train `local-epochs` epochs over the client's partition, each epoch in
reference.epoch_order(n, seed, epoch) with an update after its last sample (as `edgebp
train`), read the int16 weights back. The reply is those weights and the sample count
(samples per epoch: the weight in the average); the board's link traffic comes in the metrics.

A board that resets or drops away mid-round fails the session: the ClientApp raises, Flower
turns that into an error reply and the server leaves the client out of the round. The next
round opens a new session, so the client rejoins with the new global net.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgebp.host.boards.session import Session, SessionError
from edgebp.host.fleet.config import SIM, Settings
from edgebp.host.fleet.partition import split
from edgebp.host.fleet.workload import FleetError, Workload, arrays_of
from edgebp.host.nets.reference import epoch_order

CONNECT_TIMEOUT = 30.0


@dataclass
class LocalResult:
    arrays: list[np.ndarray]  # W0, B0, W1, B1, ... int16, as trained
    samples: int  # the partition's size: the weight of this reply
    loss: float  # mean training loss of the last local epoch
    accuracy: float
    bytes_out: int  # host to board, this round
    bytes_in: int  # board to host
    seconds: float


def port_of(board: str) -> tuple[str, bool]:
    """(Session port, whether the server is started from the board's REPL)."""
    if board == SIM:
        return "sim://", False
    if board.startswith("sim://"):
        return board, False
    return board, True


def train_local(workload: Workload, settings: Settings, partition: int, partitions: int,
                arrays: list[np.ndarray], server_round: int, board: str) -> LocalResult:
    """One round of local training of partition `partition` of `partitions` on `board`."""
    parts = split(workload.labels, partitions, settings.partition, settings.seed,
                  settings.per, settings.dominant)
    idx = parts[partition]
    Xq, Tq = workload.Xq[idx], workload.Tq[idx]
    qnet = workload.net_with(arrays)
    seed = settings.client_seed(server_round, partition)
    hyper = replace(workload.hyper, seed=seed)
    port, start = port_of(board)
    t0 = time.monotonic()
    # patient at the start: a board simulated in a worker that is still starting up, on a busy
    # machine, can take longer to say HELLO than a session's usual 5 s
    with Session(port, start=start, connect_timeout=CONNECT_TIMEOUT) as s:
        s.load(qnet, hyper)
        fault = _fault(s, len(idx)) if settings.fault_in(partition, server_round) else None
        for epoch in range(settings.local_epochs):
            r = s.train(Xq, Tq, epoch_order(len(idx), seed, epoch), update=True,
                        progress=fault if epoch == 0 else None)
        trained = s.pull()
        counters = s.counters
        s.bye()
    assert counters is not None
    return LocalResult(arrays_of(trained), len(idx), r.loss, r.accuracy, counters.bytes_out,
                       counters.bytes_in, time.monotonic() - t0)


def _fault(s: Session, n: int) -> Callable[[int, int], None]:
    """Progress hook that resets the session's simulated board halfway through the epoch."""
    board = s.board
    if board is None or not hasattr(board, "reset"):
        raise FleetError("faults are injected only into simulated boards (sim, "
                         "sim://micropython)")
    done = [False]

    def tick(sent: int, _total: int) -> None:
        if not done[0] and sent >= n // 2:
            done[0] = True
            board.reset()

    return tick


def make_client_app(resolve: Callable[[object], tuple[Workload, Settings]]):
    """The Flower ClientApp; resolve(context) gives the workload and settings (baked in for
    a simulation, read from the run config in a deployment)."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        workload, settings = resolve(context)
        node = context.node_config
        try:
            partition, partitions = int(node["partition-id"]), int(node["num-partitions"])
        except (KeyError, TypeError, ValueError):
            raise FleetError("this SuperNode's node config names no partition: give it "
                             '--node-config "partition-id=P num-partitions=N"') from None
        if not 0 <= partition < partitions:
            raise FleetError(f"partition-id {partition} outside 0..{partitions - 1}")
        board = str(node.get("board", "") or settings.board_for(partition))
        record: Any = msg.content["arrays"]
        config: Any = msg.content["config"]
        arrays = record.to_numpy_ndarrays()
        server_round = int(config["server-round"])
        try:
            r = train_local(workload, settings, partition, partitions, arrays, server_round,
                            board)
        except SessionError as e:
            raise FleetError(f"partition {partition} ({board}): {e}") from e
        metrics = MetricRecord({"num-examples": r.samples, "partition-id": partition,
                                "server-round": server_round, "train-loss": r.loss,
                                "train-accuracy": r.accuracy, "bytes-out": r.bytes_out,
                                "bytes-in": r.bytes_in, "seconds": r.seconds})
        return Message(RecordDict({"arrays": ArrayRecord(r.arrays), "metrics": metrics}),
                       reply_to=msg)

    return app
