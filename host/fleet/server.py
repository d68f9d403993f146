"""The fleet's server: the Flower ServerApp, its exact averaging strategy and the report.

`ExactFedAvg` is Flower's FedAvg (every connected client trains each round, none evaluates)
with the aggregation replaced by host/fleet/average.py: the int16 weights of the clients that
replied, weighted by their sample counts, averaged in integers and rounded half up. A reply
is counted only if it carries no error, answers this round, comes from a partition not yet
counted in it and holds int16 weights of the net's shapes with a positive count; the others
are left out of the round, with the reason kept. A round nobody answered leaves the global
net as it was.

After every round (and before the first) the server measures the global net on the held-out
samples with the integer twin (edgebp.host.nets.twin, bit-identical to a board) and reports a
`Row`: round, clients that reported, held-out loss and accuracy, link bytes and wall time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgebp import fixed
from edgebp.host.fleet.average import AverageError, check, weighted_average
from edgebp.host.fleet.config import Settings
from edgebp.host.fleet.workload import FleetError, Workload, arrays_of
from edgebp.host.nets.twin import TwinNet


@dataclass
class Row:
    round: int
    reported: list[int]  # partitions counted in the average
    left_out: list[str]  # why each other reply (or failure) was not counted
    loss: float  # held-out, of the global net after the round
    accuracy: float
    samples: int = 0  # samples behind the average
    bytes_out: float = 0.0  # host to board, per reporting board
    bytes_in: float = 0.0
    seconds: float = 0.0  # wall time of the round


@dataclass
class History:
    rows: list[Row] = field(default_factory=list)
    arrays: list[np.ndarray] | None = None  # the final global weights


def evaluate(workload: Workload, arrays: list[np.ndarray]) -> tuple[float, float]:
    """Held-out (mean loss, accuracy) of the global net holding `arrays`; nan without data."""
    if workload.Xt is None or workload.Tt is None or not len(workload.Xt):
        return float("nan"), float("nan")
    twin = TwinNet.from_qnet(workload.net_with(arrays), workload.hyper)
    ev = twin.evaluate(workload.Xt, workload.Tt)
    n = len(workload.Xt)
    accuracy = float("nan") if workload.qnet.loss == fixed.MSE else int(ev.correct.sum()) / n
    return int(ev.loss.sum()) / 4096 / n, accuracy


def head(central: bool = False) -> str:
    return (f"{'round':>5}  {'clients':>7}  {'held-out loss':>13}  {'accuracy':>8}  "
            + (f"{'central':>8}  " if central else "")
            + f"{'bytes/board':>11}  {'seconds':>7}  left out")


def line(row: Row, clients: int | None = None, central: float | None = None) -> str:
    """The row as head() lays it out; `central`: centralised training's accuracy."""
    of = f"{len(row.reported)}/{clients}" if clients else f"{len(row.reported)}"
    if row.round == 0:
        of = "start"
    acc = "" if np.isnan(row.accuracy) else f"{100 * row.accuracy:7.2f}%"
    base = "" if central is None else f"{100 * central:7.2f}%  "
    traffic = f"{row.bytes_out + row.bytes_in:11,.0f}" if row.reported else f"{'':>11}"
    why = "; ".join(row.left_out)
    loss = f"{row.loss:13.4f}" if not np.isnan(row.loss) else f"{'-':>13}"
    return (f"{row.round:5}  {of:>7}  {loss}  {acc:>8}  {base}{traffic}  "
            f"{row.seconds:7.1f}  {why}").rstrip()


def make_strategy(workload: Workload, settings: Settings, history: History,
                  report: Callable[[Row], None]):
    from flwr.app import ArrayRecord, Message, MetricRecord
    from flwr.serverapp.strategy import FedAvg

    shapes = [a.shape for a in arrays_of(workload.qnet)]

    class ExactFedAvg(FedAvg):
        """FedAvg with the exact integer average of int16 weights (host/fleet/average.py)."""

        def __init__(self) -> None:
            super().__init__(fraction_train=1.0, fraction_evaluate=0.0,
                             min_train_nodes=settings.min_nodes,
                             min_available_nodes=settings.min_nodes)
            self.pending: Row | None = None
            self.clock = time.monotonic()

        def aggregate_train(self, server_round: int, replies: Iterable[Message]
                            ) -> tuple[ArrayRecord | None, MetricRecord | None]:
            counted: list[tuple[list[np.ndarray], int]] = []
            parts: list[int] = []
            left: list[str] = []
            traffic = [0.0, 0.0]
            for msg in replies:
                node = msg.metadata.src_node_id
                if msg.has_error():
                    why = _reason(msg.error.reason or "failed")
                    left.append(why if why.startswith("partition ") else f"node {node}: {why}")
                    continue
                try:
                    m: Any = msg.content["metrics"]
                    record: Any = msg.content["arrays"]
                    p, r = int(m["partition-id"]), int(m["server-round"])
                    if r != server_round:
                        raise AverageError(f"answers round {r}, not {server_round}")
                    if p in parts:
                        raise AverageError(f"partition {p} already counted in this round")
                    arrays = check(record.to_numpy_ndarrays(),
                                   int(m["num-examples"]), shapes, f"partition {p}")
                except (AverageError, KeyError, TypeError, ValueError) as e:
                    left.append(f"node {node}: {e}")
                    continue
                counted.append((arrays, int(m["num-examples"])))
                parts.append(p)
                traffic[0] += float(m["bytes-out"])
                traffic[1] += float(m["bytes-in"])
            order = np.argsort(parts, kind="stable")
            parts = [parts[i] for i in order]
            row = Row(server_round, parts, sorted(left), float("nan"), float("nan"),
                      samples=sum(n for _, n in counted))
            if counted:
                row.bytes_out, row.bytes_in = traffic[0] / len(counted), traffic[1] / len(counted)
            self.pending = row
            if not counted:
                return None, None
            avg = weighted_average(counted)
            return ArrayRecord(avg), MetricRecord({"num-examples": row.samples,
                                                   "clients": len(counted)})

        def evaluate_global(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
            a = arrays.to_numpy_ndarrays()
            loss, acc = evaluate(workload, a)
            now = time.monotonic()
            row = self.pending if self.pending is not None and server_round else \
                Row(server_round, [], [], loss, acc)
            row.loss, row.accuracy = loss, acc
            row.seconds = now - self.clock if server_round else 0.0
            self.clock = now
            self.pending = None
            history.rows.append(row)
            history.arrays = [np.asarray(x, np.int16) for x in a]
            report(row)
            return MetricRecord({"loss": loss, "accuracy": 0.0 if np.isnan(acc) else acc})

    return ExactFedAvg()


def _reason(text: str) -> str:
    # Flower wraps a ClientApp's exception in its own words: keep the last line of ours
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else "failed"
    for mark in ("Message: ",):
        if mark in last:
            last = last.split(mark, 1)[1]
    return last[:-2] if last.endswith("'>") else last


def run_rounds(grid, workload: Workload, settings: Settings,
               report: Callable[[Row], None]) -> History:
    """The ServerApp's body: the rounds of exact FedAvg from the workload's net."""
    from flwr.app import ArrayRecord

    history = History()
    strategy = make_strategy(workload, settings, history, report)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(arrays_of(workload.qnet)),
                   num_rounds=settings.rounds, timeout=settings.round_timeout,
                   evaluate_fn=strategy.evaluate_global)
    if history.arrays is None:
        raise FleetError("the fleet ended before its first evaluation")
    return history


def make_server_app(resolve: Callable[[object], tuple[Workload, Settings]],
                    done: Callable[[History, Workload, Settings], None],
                    report: Callable[[Row], None]):
    """The Flower ServerApp; `report` gets each row as it comes, `done` the history."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        workload, settings = resolve(context)
        done(run_rounds(grid, workload, settings, report), workload, settings)

    return app
