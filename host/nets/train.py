"""Training a quantised net and its float64 reference the same way, side by side.

"The same way" means: the same initial point (the float net starts at the dequantised
initial weights of the quantised net), the same hyper-parameters (one `Hyper`), the same
sample order (`reference.epoch_order`, mini-batches of `hyper.batch`, a partial last batch
stepped with the mean over its samples) and the same number of epochs. What remains
different is the arithmetic: that is what a comparison of the two measures. The float net
takes the hyper-parameters as written; the core takes them as it can represent them (the
learning rate with an 8-bit mantissa, 0.05 -> 205 * 2**-12; momentum in Q8, 0.9 -> 230/256),
which is part of the arithmetic.

The float net works on normalised inputs (the declared input range mapped to [-1, 1], see
`edgebp.host.nets.quantize`), the fixed-point net on the int16 inputs `qnet.quantize_inputs`
makes of the same data: `prepare` gives both from raw data.

Fixed-point training runs on the integer twin (numpy, bit-identical to the core) or, with
engine="core", on the pure-Python core `edgebp.net.Net` itself (slow; the proof that the
twin's numbers are the core's).
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgebp import fixed, kernels
from edgebp.host.nets.qnet import Hyper, QuantNet
from edgebp.host.nets.reference import FloatNet, epoch_order, from_qnet, minibatches
from edgebp.host.nets.twin import TwinNet
from edgebp.net import Net

ENGINES = ("twin", "core")
LOSS_SCALE = 2.0**-fixed.LOSS_SHIFT  # the core reports losses in Q12


# A board's stand-in for train_fixed: (qnet, hyper, Xq, Tq, epochs, order_seed, (Xq_test,
# Tq_test)) -> (the run, the held-out accuracy the board measured).
BoardTrainer = Callable[[QuantNet, Hyper, Any, Any, int, int, tuple],
                        "tuple[FixedRun, float | None]"]


@dataclass
class History:
    """Per epoch: the mean training loss (in nats, as the float reference computes it) and
    the training accuracy, both measured during the epoch on each sample before the step
    its batch takes (as the core counts them)."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, loss_total: float, correct: int, n: int) -> None:
        self.loss.append(loss_total / n)
        self.accuracy.append(correct / n)


@dataclass
class FixedRun:
    net: TwinNet | Net  # the trained net (engine "twin" or "core")
    qnet: QuantNet  # the trained weights in the original formats
    history: History


@dataclass
class FloatRun:
    net: FloatNet
    history: History


Progress = Callable[[int, float, float], None]  # (epoch, loss, accuracy)


# -- data --


def stratified_split(y, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) index arrays: each class contributes round(test_fraction * its count)
    samples to the test set, chosen by a seeded permutation; both sorted."""
    y = np.asarray(y)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), not {test_fraction}")
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        k = int(np.floor(test_fraction * len(members) + 0.5))
        test.append(rng.permutation(members)[:k])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
    return train_idx, test_idx


def normalise(qnet: QuantNet, X) -> np.ndarray:
    """Raw inputs -> the float net's inputs: the declared range mapped to [-1, 1]."""
    X = np.asarray(X, np.float64)
    if qnet.in_offset is not None:
        X = X - qnet.in_offset
    if qnet.in_scale is not None:
        X = X * qnet.in_scale
    return X


def prepare(qnet: QuantNet, X, T) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X_float, T_float, X_q, T_q): one data set as the float net and the core take it
    (targets after the net's target normalisation, if it has one)."""
    return (normalise(qnet, X), qnet.net_targets(T), qnet.quantize_inputs(X),
            qnet.quantize_targets(T))


# -- regression --


@dataclass
class Fit:
    """How well a regression net fits, in the targets' own units: the root of the mean
    squared error over every target value, and R^2 = 1 - SSE / SST, with SST the squared
    deviations of each output's targets from their mean (pooled over the outputs, which is
    scikit-learn's "variance_weighted" R^2; the usual one for a single output)."""

    rmse: float
    r2: float


def _sst(T) -> float:
    T = np.asarray(T, np.float64).reshape(len(T), -1)
    return float(((T - T.mean(axis=0)) ** 2).sum())


def regression_fit(Y, T) -> Fit:
    """Fit of predictions Y against targets T, both (N, n_out) in the targets' units."""
    T = np.asarray(T, np.float64).reshape(len(T), -1)
    Y = np.asarray(Y, np.float64).reshape(T.shape)
    sse = float(((Y - T) ** 2).sum())
    sst = _sst(T)
    return Fit(math.sqrt(sse / T.size), 1 - sse / sst if sst > 0 else math.nan)


def fit_from_loss(mean_loss: float, qnet: QuantNet, T) -> Fit:
    """The Fit that a mean per-sample MSE loss in the net's units (what the core reports:
    1/2 the sum of squared errors of a sample's outputs) means for targets T in the user's
    units: errors in the net's units are the user's times out_scale."""
    T = np.asarray(T, np.float64).reshape(len(T), -1)
    scale = qnet.out_scale if qnet.out_scale is not None else 1.0
    sse = 2 * mean_loss * len(T) / scale**2
    sst = _sst(T)
    return Fit(math.sqrt(max(sse, 0.0) / T.size), 1 - sse / sst if sst > 0 else math.nan)


# -- accuracy --


def accuracy(net: FloatNet | TwinNet | Net, X, T) -> float:
    """Fraction of samples right, by the core's rule (Net.score): the argmax for softmax-CE
    and multi-output MSE, every output on the target's side of 1/2 for BCE and for a single
    MSE output. X, T: float inputs and targets for a FloatNet, else int16 ones."""
    if isinstance(net, FloatNet):
        return float(float_correct(net, X, T).mean())
    if isinstance(net, TwinNet):
        return float(net.evaluate(X, T).correct.mean())
    return core_correct(net, X, T) / len(X)


def float_correct(net: FloatNet, X, T) -> np.ndarray:
    """Per-sample correctness of a float net, by the core's rule."""
    y = net.forward(X)
    return _float_correct(net, y, T)


def _float_correct(net: FloatNet, y: np.ndarray, T) -> np.ndarray:
    T = np.asarray(T)
    if net.loss_kind == fixed.SOFTMAX_CE:
        return y.argmax(axis=1) == T.reshape(-1)
    t = np.asarray(T, np.float64).reshape(y.shape)
    if net.loss_kind == fixed.BCE or y.shape[1] == 1:
        return ((y >= 0.5) == (t >= 0.5)).all(axis=1)
    return y.argmax(axis=1) == t.argmax(axis=1)


def core_correct(net: Net, Xq, Tq) -> int:
    """Samples the core net gets right (forward and score only: no gradients)."""
    good = 0
    for x, t in zip(_rows(Xq), _rows(Tq), strict=True):
        net.forward(x)
        net.score(t)
        good += net.good
    return good


def _rows(A) -> list[array]:
    # int16 rows as the core reads them
    return [array("h", np.asarray(r, "<i2").tobytes()) for r in np.asarray(A)]


# -- training --


def train_fixed(qnet: QuantNet, hyper: Hyper, Xq, Tq, epochs: int, order_seed: int = 1,
                engine: str = "twin", progress: Progress | None = None) -> FixedRun:
    """Train `qnet` from its current weights with `hyper` for `epochs` epochs, visiting the
    samples in reference.epoch_order(N, order_seed, epoch), updating after every
    `hyper.batch` samples and after the last (partial) batch of an epoch."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    Xq = np.asarray(Xq)
    Tq = np.asarray(Tq)
    N = len(Xq)
    history = History()
    start = time.perf_counter()
    if engine == "twin":
        net: TwinNet | Net = TwinNet.from_qnet(qnet, hyper)
    else:
        net = qnet.build(hyper, kernels)  # the pure-Python kernels: the definition
        xs, ts = _rows(Xq), _rows(Tq)
    for epoch in range(epochs):
        order = epoch_order(N, order_seed, epoch)
        net.reset_stats()
        if isinstance(net, TwinNet):
            loss_total = int(net.train_epoch(Xq, Tq, order).sum())
        else:
            loss_total = 0
            for i in order:
                loss_total += net.learn(xs[i], ts[i])
        net.update()  # the epoch's partial last batch, as the float reference steps it
        history.add(loss_total * LOSS_SCALE, net.correct, N)
        if progress is not None:
            progress(epoch, history.loss[-1], history.accuracy[-1])
    history.seconds = time.perf_counter() - start
    trained = net.to_qnet(qnet) if isinstance(net, TwinNet) else qnet.with_weights(net)
    return FixedRun(net, trained, history)


def train_float(start: QuantNet | FloatNet, hyper: Hyper, X, T, epochs: int,
                order_seed: int = 1, progress: Progress | None = None) -> FloatRun:
    """Mini-batch SGD in float64 from `start` (a FloatNet, copied, or a QuantNet, whose
    dequantised weights are used), in the same order and with the same steps as
    train_fixed. X are the float net's (normalised) inputs."""
    net = from_qnet(start) if isinstance(start, QuantNet) else start.copy()
    X = np.asarray(X, np.float64).reshape(-1, net.sizes[0])
    T = np.asarray(T)
    N = len(X)
    history = History()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        loss_total = 0.0
        correct = 0
        for idx in minibatches(N, hyper.batch, order_seed, epoch):
            loss_total += float(net.losses(X[idx], T[idx]).sum())
            correct += int(_float_correct(net, net.a[-1].T, T[idx]).sum())
            dW, dB = net.backward(T[idx])  # reuses the forward pass of losses()
            net.step(dW, dB, hyper.lr, hyper.momentum, hyper.weight_decay)
        history.add(loss_total, correct, N)
        if progress is not None:
            progress(epoch, history.loss[-1], history.accuracy[-1])
    history.seconds = time.perf_counter() - t0
    return FloatRun(net, history)


# -- float and fixed point from one start --


@dataclass
class Comparison:
    float_run: FloatRun
    fixed_run: FixedRun
    float_accuracy: float  # on the held-out data
    fixed_accuracy: float

    @property
    def gap(self) -> float:
        """float minus fixed held-out accuracy, in percentage points."""
        return 100.0 * (self.float_accuracy - self.fixed_accuracy)


def compare(qnet: QuantNet, hyper: Hyper, X_train, T_train, X_test, T_test, epochs: int,
            order_seed: int = 1, engine: str = "twin", board: BoardTrainer | None = None
            ) -> Comparison:
    """Train the float reference and the fixed-point net from qnet's weights on the raw
    training data; report both accuracies on the raw held-out data. With `board` (see
    edgebp.host.boards.trainer) the fixed-point net trains on a board, which measures its
    held-out accuracy itself."""
    Xf, Tf, Xq, Tq = prepare(qnet, X_train, T_train)
    Xf_test, Tf_test, Xq_test, Tq_test = prepare(qnet, X_test, T_test)
    fl = train_float(qnet, hyper, Xf, Tf, epochs, order_seed)
    if board is not None:
        fx, held_out = board(qnet, hyper, Xq, Tq, epochs, order_seed, (Xq_test, Tq_test))
        assert held_out is not None
        return Comparison(fl, fx, accuracy(fl.net, Xf_test, Tf_test), held_out)
    fx = train_fixed(qnet, hyper, Xq, Tq, epochs, order_seed, engine)
    return Comparison(fl, fx, accuracy(fl.net, Xf_test, Tf_test),
                      accuracy(fx.net, Xq_test, Tq_test))


def table(comparisons: list[Comparison], seeds: list[int]) -> str:
    """One row per seed (held-out accuracy of float and fixed point, the gap, the training
    time of each), then the mean and the minimum over the seeds."""
    rows = ["seed   float %   fixed %   gap pp   float s   fixed s"]
    for seed, c in zip(seeds, comparisons, strict=True):
        rows.append(f"{seed:4}   {100 * c.float_accuracy:7.2f}   {100 * c.fixed_accuracy:7.2f}   "
                    f"{c.gap:+6.2f}   {c.float_run.history.seconds:7.2f}   "
                    f"{c.fixed_run.history.seconds:7.2f}")
    fl = np.array([c.float_accuracy for c in comparisons]) * 100
    fx = np.array([c.fixed_accuracy for c in comparisons]) * 100
    gap = fl - fx
    rows.append(f"mean   {fl.mean():7.2f}   {fx.mean():7.2f}   {gap.mean():+6.2f}")
    rows.append(f"min    {fl.min():7.2f}   {fx.min():7.2f}   max |gap| {np.abs(gap).max():.2f}")
    return "\n".join(rows)
