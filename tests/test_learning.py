"""Learning works in fixed point: XOR is learned, iris generalises, digits matches float.

Fixed-point training runs on the integer twin, which test_twin proves bit-identical to the
core; test_core_and_twin_train_alike ties these results to the core itself. Float and fixed
point start from the same weights and see the same samples in the same order with the same
hyper-parameters (edgebp.host.nets.train), so their accuracies differ by the arithmetic alone.
The hyper-parameters are those of the examples (examples/*.py), chosen as a user would.
"""

from __future__ import annotations

from array import array

import numpy as np
import pytest

from edgebp import kernels
from edgebp.host.nets.quantize import quantize
from edgebp.host.nets.reference import epoch_order, from_qnet
from edgebp.host.nets.spec import init_float_weights, make_spec
from edgebp.host.nets.train import (
    accuracy,
    compare,
    prepare,
    stratified_split,
    train_fixed,
    train_float,
)

XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
XOR_T = np.array([[0], [1], [1], [0]], dtype=float)


def xor_spec(seed: int):
    return make_spec(sizes=[2, 4, 1], activations=["tanh", "sigmoid"], loss="bce",
                     input_range={"min": 0, "max": 1}, optimizer={"lr": 0.5, "seed": seed},
                     init_seed=seed)


def iris_spec(seed: int, X: np.ndarray, act: str = "relu"):
    return make_spec(sizes=[4, 16, 3], activations=[act, "softmax"], loss="softmax_ce",
                     input_range={"min": X.min(axis=0).tolist(), "max": X.max(axis=0).tolist()},
                     optimizer={"lr": 0.05, "momentum": 0.9, "batch": 8,
                                "rounding": "stochastic", "seed": seed},
                     batch_max=8, init_seed=seed)


def digits_spec(seed: int, act: str):
    return make_spec(sizes=[64, 32, 10], activations=[act, "softmax"], loss="softmax_ce",
                     input_range={"min": 0, "max": 16},
                     optimizer={"lr": 0.05, "momentum": 0.9, "batch": 16,
                                "rounding": "stochastic", "seed": seed},
                     batch_max=16, init_seed=seed)


def quantized(spec, X, T):
    W, B = init_float_weights(spec)
    return quantize(spec, W, B, X, T)


@pytest.fixture(scope="module")
def iris():
    from sklearn.datasets import load_iris

    return load_iris(return_X_y=True)


# -- the protocol --


def test_stratified_split_keeps_class_shares():
    y = np.repeat([0, 1, 2], [50, 30, 7])
    train, test = stratified_split(y, 0.3, seed=4)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(y)))
    assert [int((y[test] == c).sum()) for c in range(3)] == [15, 9, 2]
    again = stratified_split(y, 0.3, seed=4)
    assert np.array_equal(again[1], test)
    assert not np.array_equal(stratified_split(y, 0.3, seed=5)[1], test)


def test_float_starts_at_the_dequantised_weights(iris):
    X, y = iris
    spec = iris_spec(0, X)
    q = quantized(spec, X, y)
    Xf, Tf, _, _ = prepare(q, X, y)
    run = train_float(q, spec.hyper(), Xf, Tf, epochs=0)
    Ws, Bs = q.float_weights()
    for l in range(q.L):
        assert np.array_equal(run.net.W[l], Ws[l]) and np.array_equal(run.net.B[l], Bs[l])


def test_float_training_is_the_reference_training(iris):
    X, y = iris
    spec = iris_spec(1, X)
    q = quantized(spec, X, y)
    Xf, Tf, _, _ = prepare(q, X, y)
    run = train_float(q, spec.hyper(), Xf, Tf, epochs=3, order_seed=7)
    ref = from_qnet(q)
    losses = ref.train(Xf, Tf, spec.hyper(), epochs=3, order_seed=7)
    assert run.history.loss == losses
    for l in range(q.L):
        assert np.array_equal(run.net.W[l], ref.W[l])


def test_core_and_twin_train_alike(iris):
    # the core driven by hand (learn over epoch_order, update at the end of each epoch), the
    # core through train_fixed and the twin through train_fixed end in the same state
    X, y = iris
    train, test = stratified_split(y, 0.3, seed=2)
    spec = iris_spec(2, X)
    q = quantized(spec, X[train], y[train])
    _, _, Xq, Tq = prepare(q, X[train], y[train])
    hyper = spec.hyper()
    epochs = 3

    net = q.build(hyper, kernels)
    for epoch in range(epochs):
        for i in epoch_order(len(Xq), 5, epoch):
            net.learn(array("h", Xq[i].tobytes()), array("h", Tq[i].tobytes()))
        net.update()
    by_hand = q.with_weights(net)

    core = train_fixed(q, hyper, Xq, Tq, epochs, order_seed=5, engine="core")
    twin = train_fixed(q, hyper, Xq, Tq, epochs, order_seed=5, engine="twin")
    for run in (core, twin):
        for l in range(q.L):
            assert np.array_equal(run.qnet.W[l], by_hand.W[l])
            assert np.array_equal(run.qnet.B[l], by_hand.B[l])
    assert core.history.loss == twin.history.loss
    assert core.history.accuracy == twin.history.accuracy
    _, _, Xq_test, Tq_test = prepare(q, X[test], y[test])
    assert accuracy(core.net, Xq_test, Tq_test) == accuracy(twin.net, Xq_test, Tq_test)


# -- the learning criteria --


@pytest.mark.parametrize("seed", range(5))
def test_xor_is_learned(seed):
    spec = xor_spec(seed)
    q = quantized(spec, XOR_X, XOR_T)
    _, _, Xq, Tq = prepare(q, XOR_X, XOR_T)
    run = train_fixed(q, spec.hyper(), Xq, Tq, epochs=500, order_seed=seed)
    assert accuracy(run.net, Xq, Tq) == 1.0
    assert run.history.loss[-1] < run.history.loss[0]


def test_iris_held_out_accuracy(iris):
    # held-out accuracy over ten stratified 70/30 splits; a single split of 45 flowers
    # moves in steps of 2.2 points, and some splits are hard for any model
    X, y = iris
    held_out = []
    for seed in range(10):
        train, test = stratified_split(y, 0.3, seed)
        spec = iris_spec(seed, X)
        q = quantized(spec, X[train], y[train])
        _, _, Xq, Tq = prepare(q, X[train], y[train])
        run = train_fixed(q, spec.hyper(), Xq, Tq, epochs=100, order_seed=seed)
        _, _, Xq_test, Tq_test = prepare(q, X[test], y[test])
        held_out.append(accuracy(run.net, Xq_test, Tq_test))
    assert np.mean(held_out) >= 0.95


@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize("seed", range(3))
def test_digits_matches_float(act, seed):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    train, test = stratified_split(y, 0.2, seed)
    spec = digits_spec(seed, act)
    q = quantized(spec, X[train], y[train])
    c = compare(q, spec.hyper(), X[train], y[train], X[test], y[test], epochs=30,
                order_seed=seed)
    assert abs(c.gap) <= 1.5
