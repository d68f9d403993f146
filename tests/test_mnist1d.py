"""The MNIST-1D example: its committed data read as `edgebp` reads them, and the fixed-point
net learns them as the float reference does (the protocol of test_learning: same start, same
hyper-parameters, same sample order; fixed point on the twin, bit-identical to the core).

The hyper-parameters are those of examples/mnist1d.py. The example trains 100 epochs (about
13 s a seed); the test trains 10 (about 1.3 s a seed), where both nets are still climbing:
a shorter run than the example's, with its own measured bounds.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import REPO
from edgebp.host.cli import data
from edgebp.host.nets.quantize import quantize
from edgebp.host.nets.spec import init_float_weights, make_spec
from edgebp.host.nets.train import compare

DATA = REPO / "examples" / "data"
INPUT_RANGE = 6  # the example declares every input in [-6, 6]


def mnist1d_spec(seed: int):
    return make_spec(sizes=[40, 100, 10], activations=["relu", "softmax"], loss="softmax_ce",
                     input_range={"min": -INPUT_RANGE, "max": INPUT_RANGE},
                     optimizer={"lr": 0.1, "momentum": 0.9, "batch": 16,
                                "rounding": "stochastic", "seed": seed},
                     batch_max=16, init_seed=seed, weight_growth=32)  # the example's


@pytest.fixture(scope="module")
def mnist1d():
    return data.read(DATA / "mnist1d_train.csv"), data.read(DATA / "mnist1d_test.csv")


def test_the_committed_data_read_as_edgebp_reads_them(mnist1d):
    train, test = mnist1d
    assert train.X.shape == (4000, 40) and test.X.shape == (1000, 40)
    assert train.columns == [f"x{i}" for i in range(40)] + ["digit"]
    for ds in (train, test):
        assert set(np.unique(ds.y[:, 0])) == set(range(10))
        # inside the example's declared range: `edgebp train` takes them without clipping
        assert np.abs(ds.X).max() <= INPUT_RANGE
    # the package standardises all 5,000 signals together; two decimals keep that
    X = np.vstack([train.X, test.X])
    assert abs(X.mean()) < 0.01 and abs(X.std() - 1) < 0.01


@pytest.mark.parametrize("seed", range(2))
def test_mnist1d_fixed_point_learns_as_float_does(mnist1d, seed):
    # Measured at 10 epochs over seeds 0..9 (weight_growth 32, as the example): float
    # 57.3-61.4%, fixed 55.7-60.9%, gap (float - fixed) -1.3..+1.8 points. The bounds are
    # 1.5 times the largest gap and just under the lowest fixed-point accuracy (chance is 10%,
    # the published logistic regression 32%). With the quantiser's default room for weights
    # 4x their start the gap was -1.3..+3.0 here and 5.7 points on average over the
    # example's 100 epochs, as the second layer's weights piled up at the format's limit.
    train, test = mnist1d
    y, y_test = train.y[:, 0].astype(int), test.y[:, 0].astype(int)
    spec = mnist1d_spec(seed)
    W, B = init_float_weights(spec)
    q = quantize(spec, W, B, train.X, y)
    c = compare(q, spec.hyper(), train.X, y, test.X, y_test, epochs=10, order_seed=seed)
    assert c.fixed_accuracy >= 0.54
    assert abs(c.gap) <= 2.7
