"""The float64 reference: gradients against finite differences, the optimiser against its
formula and against the core's update, and the shared sample order."""

from __future__ import annotations

import dataclasses
import itertools
from array import array

import numpy as np
import pytest

from edgebp import fixed
from edgebp.host.nets.qnet import Hyper
from edgebp.host.nets.reference import (
    FloatNet,
    act_forward,
    epoch_order,
    from_qnet,
    minibatches,
)
from floatinit import random_case

HIDDEN = ["identity", "relu", "leaky_relu", "sigmoid", "tanh"]
OUTPUTS = [  # (output activation, loss): every pairing the core accepts
    ("identity", "mse"),
    ("relu", "mse"),
    ("leaky_relu", "mse"),
    ("sigmoid", "mse"),
    ("tanh", "mse"),
    ("softmax", "softmax_ce"),
    ("sigmoid", "bce"),
]

# Central differences with step H: truncation h**2/6 |C'''| plus round-off eps |C| / h per
# component (two evaluations, each off by ~eps |C|, over 2h). With eps = 2.2e-16 and |C|,
# |C'''| of order 10 on these small nets both terms are ~2e-10 at h = 1e-5 (the step that
# balances them), i.e. ~1e-8 relative to layer gradients of norm ~0.1 with ~50 components.
# A tolerance of 1e-6 keeps two orders of margin and still catches any wrong derivative,
# whose error is of the order of the gradient itself.
H = 1e-5
FD_TOL = 1e-6


def _net(hidden, out, loss, rng, sizes=(3, 5, 4, 3)):
    L = len(sizes) - 1
    Ws = [rng.normal(0, 1 / np.sqrt(sizes[l]), (sizes[l + 1], sizes[l])) for l in range(L)]
    Bs = [rng.normal(0, 0.3, sizes[l + 1]) for l in range(L)]
    return FloatNet(sizes, [hidden] * (L - 1) + [out], loss, Ws, Bs, alpha=0.1)


def _targets(out, loss, rng, N, n):
    if loss == "softmax_ce":
        return rng.integers(0, n, N)
    if loss == "bce":
        return rng.uniform(0, 1, (N, n))
    return rng.uniform(-1, 1, (N, n))


@pytest.mark.parametrize("seed,hidden,out,loss", [(i, h, o, lo) for i, (h, (o, lo))
                                                  in enumerate(itertools.product(HIDDEN, OUTPUTS))])
def test_gradients_match_central_differences(seed, hidden, out, loss):
    rng = np.random.default_rng(seed)
    net = _net(hidden, out, loss, rng)
    X = rng.normal(0, 1, (12, 3))
    T = _targets(out, loss, rng, 12, 3)
    # central differences are only valid away from the ReLU kinks: a step moves any z by
    # less than 100 H here, so keep the samples whose kinked units are all farther away
    net.forward(X)
    kinked = [l for l, a in enumerate(net.acts) if a in (fixed.RELU, fixed.LEAKY)]
    far = np.ones(12, bool)
    for l in kinked:
        far &= np.abs(net.z[l]).min(axis=0) > 100 * H
    X, T = X[far][:6], T[far][:6]
    assert len(X) == 6
    dW, dB = net.gradients(X, T)
    for l in range(net.L):
        for P, G in ((net.W[l], dW[l]), (net.B[l], dB[l])):
            fd = np.zeros_like(P)
            for idx in np.ndindex(P.shape):
                keep = P[idx]
                P[idx] = keep + H
                up = net.loss(X, T)
                P[idx] = keep - H
                down = net.loss(X, T)
                P[idx] = keep
                fd[idx] = (up - down) / (2 * H)
            err = np.linalg.norm(fd - G) / np.linalg.norm(G)
            assert err < FD_TOL, f"layer {l + 1}: relative error {err:.2e}"


def test_losses_are_the_textbook_formulas():
    rng = np.random.default_rng(3)
    X = rng.normal(0, 1, (4, 3))
    mse = _net("tanh", "identity", "mse", rng)
    T = rng.normal(0, 1, (4, 3))
    assert np.allclose(mse.losses(X, T), 0.5 * ((mse.forward(X) - T) ** 2).sum(axis=1))
    ce = _net("relu", "softmax", "softmax_ce", rng)
    c = rng.integers(0, 3, 4)
    p = ce.forward(X)
    assert np.allclose(p.sum(axis=1), 1)
    assert np.allclose(ce.losses(X, c), -np.log(p[np.arange(4), c]))
    bce = _net("sigmoid", "sigmoid", "bce", rng)
    t = rng.integers(0, 2, (4, 3)).astype(float)
    p = bce.forward(X)
    assert np.allclose(bce.losses(X, t), -(t * np.log(p) + (1 - t) * np.log(1 - p)).sum(axis=1))


def test_class_indices_and_one_hot_targets_agree():
    rng = np.random.default_rng(4)
    net = _net("sigmoid", "softmax", "softmax_ce", rng)
    X = rng.normal(0, 1, (5, 3))
    c = rng.integers(0, 3, 5)
    a = net.gradients(X, c)
    b = net.gradients(X, np.eye(3)[c])
    for u, v in zip(a[0] + a[1], b[0] + b[1], strict=True):
        assert np.array_equal(u, v)
    assert net.loss(X, c) == pytest.approx(net.loss(X, np.eye(3)[c]))


def test_batch_gradient_is_the_mean_of_sample_gradients():
    rng = np.random.default_rng(5)
    net = _net("leaky_relu", "tanh", "mse", rng)
    X = rng.normal(0, 1, (7, 3))
    T = rng.uniform(-1, 1, (7, 3))
    dW, dB = net.gradients(X, T)
    per = [net.gradients(X[i], T[i]) for i in range(7)]
    for l in range(net.L):
        assert np.allclose(dW[l], np.mean([p[0][l] for p in per], axis=0), atol=1e-15)
        assert np.allclose(dB[l], np.mean([p[1][l] for p in per], axis=0), atol=1e-15)


def test_squashing_functions_do_not_overflow():
    z = np.array([[-800.0], [0.0], [800.0]])
    assert np.array_equal(act_forward(fixed.SIGMOID, z, 0.0).ravel(), [0.0, 0.5, 1.0])
    p = act_forward(fixed.SOFTMAX, z, 0.0)
    assert np.array_equal(p.ravel(), [0.0, 0.0, 1.0])


def test_pairings_the_core_rejects_are_rejected():
    W, B = [np.zeros((2, 2))], [np.zeros(2)]
    for acts, loss in ((["sigmoid"], "softmax_ce"), (["tanh"], "bce"), (["softmax"], "mse")):
        with pytest.raises(ValueError):
            FloatNet([2, 2], acts, loss, W, B)
    with pytest.raises(ValueError):
        FloatNet([2, 2], ["gelu"], "mse", W, B)


# -- the optimiser --


def test_step_is_momentum_with_weight_decay():
    rng = np.random.default_rng(6)
    net = _net("relu", "identity", "mse", rng)
    w0 = net.W[1].copy()
    g = [rng.normal(0, 1, w.shape) for w in net.W]
    gb = [rng.normal(0, 1, b.shape) for b in net.B]
    lr, mu, lam = 0.1, 0.9, 0.01
    net.step(g, gb, lr, mu, lam)
    v1 = lr * g[1] + lr * lam * w0
    w1 = w0 - v1
    assert np.allclose(net.W[1], w1, rtol=0, atol=1e-15)
    net.step(g, gb, lr, mu, lam)
    v2 = mu * v1 + lr * g[1] + lr * lam * w1
    assert np.allclose(net.W[1], w1 - v2, rtol=0, atol=1e-15)


def test_train_walks_minibatches_with_a_partial_last_batch():
    rng = np.random.default_rng(7)
    X = rng.normal(0, 1, (7, 3))
    T = rng.uniform(-1, 1, (7, 3))
    hyper = Hyper(lr=0.05, momentum=0.5, weight_decay=0.01, batch=3)
    net = _net("tanh", "identity", "mse", rng)
    by_hand = net.copy()
    history = net.train(X, T, hyper, epochs=2, order_seed=11)
    for epoch in range(2):
        batches = minibatches(7, 3, 11, epoch)
        assert [len(b) for b in batches] == [3, 3, 1]
        total = 0.0
        for idx in batches:
            total += by_hand.losses(X[idx], T[idx]).sum()
            dW, dB = by_hand.gradients(X[idx], T[idx])
            by_hand.step(dW, dB, 0.05, 0.5, 0.01)
        assert history[epoch] == pytest.approx(total / 7)
    for u, v in zip(net.W + net.B, by_hand.W + by_hand.B, strict=True):
        assert np.array_equal(u, v)


def test_training_reduces_the_loss():
    rng = np.random.default_rng(8)
    X = rng.uniform(-1, 1, (64, 2))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    net = _net("tanh", "softmax", "softmax_ce", rng, sizes=(2, 8, 2))
    history = net.train(X, y, Hyper(lr=0.2, momentum=0.9, batch=8), epochs=60, order_seed=1)
    assert history[-1] < 0.5 * history[0]
    assert (net.predict(X) == y).mean() > 0.9


def test_core_update_follows_the_reference_step():
    """Given the core's own mean gradient, one core update moves every weight as the float
    step does, up to the rounding the core's update documents (edgebp.kernels.update):
    in units of 2**-8 weight LSB the step's gradient term loses < m 2**-u + 1 to its two
    floors, the decay and momentum terms 1/2 each to rounding, and the carried momentum
    error shrinks by mu; the weight itself is rounded to 1/2 LSB."""
    # lr, momentum, lr * decay and the mean over a batch of 4 are exact in the core's formats
    hyper = Hyper(lr=0.125, momentum=0.5, weight_decay=2.0**-7, batch=4)
    q, X, T = random_case("tanh", "sigmoid", "bce", seed=5, sizes=(4, 6, 3), n=12, batch_max=4)
    q = dataclasses.replace(q, momentum=True)
    core = q.build(hyper)
    ref = from_qnet(q)
    Xq, Tq = q.quantize_inputs(X), q.quantize_targets(T)
    mu = hyper.fixed()["mu"] / 256
    dv = [0.0] * (2 * q.L)  # bound on |V_core - v_ref| per tensor, 2**-8 LSB
    for step in range(3):
        for i in range(4 * step, 4 * step + 4):
            core.forward(array("h", Xq[i].astype("<i2").tobytes()))
            core.backward(array("h", Tq[i].astype("<i2").tobytes()))
        unit = [q.grad_scale(l) / core.count for l in range(q.L)]
        g_w = [np.array(core.GW[l], float).reshape(ref.W[l].shape) * unit[l] for l in range(q.L)]
        g_b = [np.array(core.GB[l], float) * unit[l] for l in range(q.L)]
        # the reference starts from the core's (rounded) weights and its own velocities
        ref.W, ref.B = from_qnet(q.with_weights(core)).W, from_qnet(q.with_weights(core)).B
        count, kg = core.count, core.kg
        core.update()
        ref.step(g_w, g_b, hyper.lr, hyper.momentum, hyper.weight_decay)
        qm = (core.lr_m << 22) // count
        t = fixed.mean_lr_shift(qm)
        m, e = fixed.rshift_round(qm, t), core.lr_e + 22 - t
        for l in range(q.L):
            sw = q.shift_w[l]
            u = e + q.shift_d[l] + q.shift_a[l] - kg - sw - 16
            for k, (w_ref, v_ref, w_core, v_core) in enumerate((
                    (ref.W[l], ref.VW[l], core.W[l], core.VW[l]),
                    (ref.B[l], ref.VB[l], core.B[l], core.VB[l]))):
                j = 2 * l + k
                dv[j] = m * 2.0**-u + 2 + mu * dv[j]
                v_c = np.array(v_core, float).reshape(v_ref.shape)
                assert np.abs(v_c - v_ref * 2.0 ** (sw + 8)).max() <= dv[j]
                w_c = np.array(w_core, float).reshape(w_ref.shape)
                assert np.abs(w_c - w_ref * 2.0**sw).max() <= 0.5 + dv[j] / 256


def test_from_qnet_uses_the_dequantised_weights():
    q, _, _ = random_case("relu", "softmax", "softmax_ce", seed=2, sizes=(4, 5, 3))
    net = from_qnet(q)
    Ws, Bs = q.float_weights()
    assert all(np.array_equal(a, b) for a, b in zip(net.W + net.B, Ws + Bs, strict=True))
    assert net.acts == q.acts and net.loss_kind == q.loss
    assert net.alpha == q.alpha_q / 4096


# -- the sample order --


def test_epoch_order_is_a_reproducible_permutation():
    for n in (1, 2, 7, 100):
        order = epoch_order(n, 5, 3)
        assert sorted(order.tolist()) == list(range(n))
        assert np.array_equal(order, epoch_order(n, 5, 3))
    assert not np.array_equal(epoch_order(50, 5, 0), epoch_order(50, 5, 1))
    assert not np.array_equal(epoch_order(50, 5, 0), epoch_order(50, 6, 0))


def test_epoch_order_matches_its_documented_algorithm():
    # restated from the docstring with the core's generator
    seed, epoch, n = 42, 7, 30
    s = fixed.seed30(seed + 0x9E3779B9 * (epoch + 1))
    for _ in range(8):
        s = fixed.xorshift30(s)
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        s = fixed.xorshift30(s)
        j = s % (i + 1)
        order[i], order[j] = order[j], order[i]
    assert epoch_order(n, seed, epoch).tolist() == order


def test_epoch_order_visits_every_permutation_about_equally():
    # 4 items, 24 permutations, 4800 epochs: each count is Binomial(4800, 1/24), mean 200,
    # sd 14; [130, 270] is five standard deviations either side
    counts: dict[tuple, int] = {}
    for epoch in range(4800):
        key = tuple(epoch_order(4, 1, epoch).tolist())
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 24
    assert 130 <= min(counts.values()) and max(counts.values()) <= 270


def test_minibatches_cover_the_epoch_once():
    batches = minibatches(10, 4, 3, 2)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert np.array_equal(np.concatenate(batches), epoch_order(10, 3, 2))
    with pytest.raises(ValueError):
        minibatches(10, 0, 3, 2)
