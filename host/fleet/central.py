"""Centralised training on the same samples, the yardstick of a fleet: one net trained on the
whole training set (the union of the partitions) for `local-epochs` epochs per round, as
`edgebp train` trains a board (each epoch in reference.epoch_order with the net's seed, an
update after its last sample, momentum carried on), measured on the held-out samples after
each round's worth. Run on the integer twin, bit-identical to a board."""

from __future__ import annotations

from edgebp.host.fleet.server import evaluate
from edgebp.host.fleet.workload import Workload, arrays_of
from edgebp.host.nets.reference import epoch_order
from edgebp.host.nets.twin import TwinNet


def central(workload: Workload, rounds: int, local_epochs: int) -> list[tuple[float, float]]:
    """Held-out (loss, accuracy) before training and after each round's worth of epochs."""
    twin = TwinNet.from_qnet(workload.qnet, workload.hyper)
    n = len(workload.Xq)
    out = [evaluate(workload, arrays_of(workload.qnet))]
    for r in range(rounds):
        for e in range(local_epochs):
            twin.reset_stats()
            twin.train_epoch(workload.Xq, workload.Tq,
                             epoch_order(n, workload.hyper.seed, r * local_epochs + e))
            twin.update()
        out.append(evaluate(workload, arrays_of(twin.to_qnet(workload.qnet))))
    return out
