"""What a fleet trains: the global net's start and hyper-parameters, and the data.

A `Workload` holds the quantised net (its int16 weights are the first global weights), the
hyper-parameters every client trains with, the training samples (quantised, as the board takes
them) that the clients split between them, and the held-out samples the server measures the
global net on. The command line builds one from its own checked readers; a deployment
(host/fleet/app.py) from the files its run config names, read here: a .ebp net and CSV or
NPZ data of numbers (CSV: an optional header line, the target in the last column; NPZ: arrays
X and y).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgebp import fixed
from edgebp.ebp import EbpError
from edgebp.host.nets import ebpfile
from edgebp.host.nets.qnet import Hyper, QuantNet


class FleetError(Exception):
    """What stops a fleet, in one line for the user."""


@dataclass
class Workload:
    qnet: QuantNet
    hyper: Hyper
    Xq: np.ndarray  # (N, n_in) int16: training inputs, quantised
    Tq: np.ndarray  # (N, n_t) int16: training targets as the core takes them
    Xt: np.ndarray | None = None  # held-out inputs and targets, the same way
    Tt: np.ndarray | None = None
    labels: np.ndarray | None = None  # (N,) the class of each training sample, for splits

    def __post_init__(self) -> None:
        if self.labels is None:
            self.labels = np.asarray(self.Tq)[:, 0]

    def net_with(self, arrays: list[np.ndarray]) -> QuantNet:
        """The global net holding `arrays` ([W0, B0, W1, B1, ...], int16)."""
        return replace(self.qnet, W=[np.asarray(a, np.int16) for a in arrays[0::2]],
                       B=[np.asarray(a, np.int16) for a in arrays[1::2]])


def arrays_of(qnet: QuantNet) -> list[np.ndarray]:
    """A net's weights as the fleet sends them: W0, B0, W1, B1, ... (int16)."""
    out = []
    for W, B in zip(qnet.W, qnet.B, strict=True):
        out += [np.asarray(W, np.int16), np.asarray(B, np.int16)]
    return out


def read_numbers(path: str | Path, n_targets: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) float64 from a CSV of numbers (optional header; targets the last columns) or
    an NPZ with X and y."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path) as z:
                X, y = np.asarray(z["X"], np.float64), np.asarray(z["y"], np.float64)
            return X, y.reshape(len(y), -1)
        lines = [ln for ln in path.read_text().splitlines()
                 if ln.strip() and not ln.lstrip().startswith("#")]
    except (OSError, KeyError, ValueError) as e:
        raise FleetError(f"{path}: {e}") from None
    if lines:
        try:
            [float(v) for v in lines[0].split(",")]
        except ValueError:
            lines = lines[1:]  # a header
    rows = []
    for i, ln in enumerate(lines):
        try:
            rows.append([float(v) for v in ln.split(",")])
        except ValueError:
            raise FleetError(f"{path}: data row {i + 1} holds a value that is not a number "
                             "(edgebp train reads class names; the fleet's files hold "
                             "numbers)") from None
    if not rows or len({len(r) for r in rows}) != 1 or len(rows[0]) <= n_targets:
        raise FleetError(f"{path}: expected rows of equal length, inputs then "
                         f"{n_targets} target column(s)")
    a = np.array(rows)
    if not np.isfinite(a).all():
        raise FleetError(f"{path}: holds a value that is not finite")
    return a[:, :-n_targets], a[:, -n_targets:]


def quantized(qnet: QuantNet, X: np.ndarray, y: np.ndarray, what: str
              ) -> tuple[np.ndarray, np.ndarray]:
    if X.shape[1] != qnet.sizes[0]:
        raise FleetError(f"{what}: {X.shape[1]} inputs per sample, the net takes "
                         f"{qnet.sizes[0]}")
    if qnet.loss == fixed.SOFTMAX_CE:
        c = y[:, 0]
        if (c != np.round(c)).any() or c.min() < 0 or c.max() >= qnet.sizes[-1]:
            raise FleetError(f"{what}: targets must be class indices 0..{qnet.sizes[-1] - 1}")
        return qnet.quantize_inputs(X), qnet.quantize_targets(c)
    return qnet.quantize_inputs(X), qnet.quantize_targets(y)


def from_files(net: str | Path, train: str | Path, test: str | Path | None = None
               ) -> Workload:
    """The workload a deployment's run config names."""
    try:
        qnet, hyper = ebpfile.read(net)
    except (EbpError, OSError) as e:
        raise FleetError(f"{net}: {e}") from None
    if hyper is None:
        raise FleetError(f"{net} holds no hyper-parameters (edgebp quantize writes them)")
    n_t = 1 if qnet.loss == fixed.SOFTMAX_CE else qnet.sizes[-1]
    X, y = read_numbers(train, n_t)
    Xq, Tq = quantized(qnet, X, y, str(train))
    Xt = Tt = None
    if test:
        Xt, Tt = quantized(qnet, *read_numbers(test, n_t), str(test))
    return Workload(qnet, hyper, Xq, Tq, Xt, Tt, labels=y[:, 0])
