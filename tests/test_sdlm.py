"""Stochastic diagonal Levenberg-Marquardt in fixed point (edgebp/sdlm.py) against the float64
reference's second-order backpropagation, and its step against exact integer arithmetic.

The kernels' bit-exactness on every runtime and kernel set is tested with the other
optimisers (tests/test_core_runtimes.py, test_viper.py, test_native.py, the twin's tests).
"""

from __future__ import annotations

from array import array

import numpy as np
import pytest

from combos import HIDDEN, OUTPUTS, make_case
from edgebp import kernels, sdlm
from edgebp.fixed import V_MAX
from edgebp.host.nets.qnet import Hyper, mantissa_exponent, sdlm_formats
from edgebp.host.nets.reference import FloatNet
from edgebp.host.nets.second_order import curvature_maxima, hessian_diagonal


def _attach(net, mu=0.1, gamma=0.01, fc=None, fh=None):
    mm, me = mantissa_exponent(mu)
    L = net.L
    return sdlm.attach(net, mm, me, int(gamma * 16384 + 0.5), fc or [14] * L, fh or [14] * L)


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("loss,out", OUTPUTS)
def test_curvature_is_the_reference_gauss_newton_diagonal(hidden, loss, out):
    # One sample, the first of the estimate (weight 1): HW, HB are that sample's curvature,
    # which the float64 reference computes by Becker & LeCun's diagonal recursion of the
    # Gauss-Newton Hessian from the same (dequantised) weights and input.
    c = make_case(hidden, loss, out, "sgd", seed=5, sizes=(5, 7, 6, 4), n=3)
    q = c.qnet
    Ws, Bs = q.float_weights()
    fnet = FloatNet(q.sizes, q.acts, q.loss, Ws, Bs, q.alpha_q / 4096)
    for s in range(3):
        x = c.Xq[s]
        t = c.Tq[s]
        X = (x.astype(np.float64) * 2.0 ** -q.shift_a[0]).reshape(1, -1)
        if loss == "softmax_ce":
            T = np.array([int(t[0])])
        else:
            T = (t.astype(np.float64) * 2.0 ** -(14 if loss == "bce" else q.shift_a[-1])
                 ).reshape(1, -1)
        dW, dB = hessian_diagonal(fnet, X, T, kind="gauss_newton", recursion="diagonal")
        # formats with room for twice this sample's largest curvature, as the quantiser
        # chooses them from its calibration samples
        fc, fh = sdlm_formats(*curvature_maxima(fnet, X, T), headroom=2.0)
        net = q.build(Hyper(lr=0.01), kernels)
        st = _attach(net, fc=fc, fh=fh)
        net.forward(array("h", x.astype("<i2").tobytes()))
        net.backward(array("h", t.astype("<i2").tobytes()))
        for l in range(q.L):
            got_w = np.array(st.HW[l], np.float64).reshape(dW[l].shape) * 2.0 ** -fh[l]
            got_b = np.array(st.HB[l], np.float64) * 2.0 ** -fh[l]
            scale = max(np.max(dW[l]), np.max(dB[l]), 2.0 ** -fh[l])
            # tables (f' of sigmoid, tanh, swish, mish to a few LSB of Q14, squared), the
            # roundings of each layer's C and of the two products per weight, and the
            # layers below carrying those of the ones above: 3% of the layer's largest
            # curvature plus two LSB of its format
            tol = 0.03 * scale + 2 * 2.0 ** -fh[l]
            assert np.max(np.abs(got_w - dW[l])) <= tol, (l, got_w, dW[l])
            assert np.max(np.abs(got_b - dB[l])) <= tol, (l, got_b, dB[l])


def test_step_is_the_exact_floor_of_the_division():
    rng = np.random.default_rng(2)
    n = 3000
    for fh in (0, 7, 14):
        G = rng.integers(-(1 << 30) + 1, 1 << 30, n)
        G[:20] = [(1 << 30) - 1, -(1 << 30) + 1] * 10
        H = rng.integers(0, 32768 - 255, n)
        H[:10] = 0
        m, u, mu_q = 200, int(rng.integers(0, 12)), int(rng.integers(1, 256))
        W = array("h", [0] * n)
        sdlm.sdlm(W, array("i", G.tolist()), array("h", H.tolist()), n, m, u, mu_q, fh, 0, 0,
                  0, array("i", [1]))
        for p in range(n):
            v = ((int(G[p]) >> 8) * m) >> u
            a = min(abs(v) * 2**fh // (mu_q + int(H[p])), V_MAX)
            step = a if v >= 0 else -a
            w = max(-32767, min(32767, -((step + 128) >> 8)))
            assert W[p] == w, (fh, p)


def test_the_first_estimates_are_plain_means():
    # weight max(gamma, 1 / (n + 1)): after n samples of constant curvature h the estimate
    # is h; with gamma = 1/4 (4096) the weights are 1, 1/2, 1/3, then 1/4 for good
    HW = array("h", [0])
    HB = array("h", [0])
    C = array("h", [8192])
    a = array("h", [16384])
    vals = []
    for n, v in enumerate([8192, 4096, 0, 16384, 16384]):
        C[0] = v
        sdlm.curv_acc(HW, HB, C, a, 1, 1, 14 + 28 - 15 - 14, 0,
                      max(4096, 16384 // (n + 1)))
        vals.append(HB[0])
    assert vals[:3] == [8192, 6144, 4096]
    assert vals[3] == 4096 + (16384 - 4096) // 4
    assert vals[4] == vals[3] + round((16384 - vals[3]) / 4)


def test_settings_out_of_range_are_refused():
    net = make_case("tanh", "mse", "sigmoid", "sgd").qnet.build(None, kernels)
    with pytest.raises(ValueError, match="gamma"):
        sdlm.attach(net, 205, 11, 0, [14, 14], [14, 14])
    with pytest.raises(ValueError, match="Q14"):
        sdlm.attach(net, 205, 11, 164, [14, 12], [14, 14])
    with pytest.raises(ValueError, match="too small"):
        sdlm.attach(net, 128, 30, 164, [14, 14], [14, 14])
    with pytest.raises(ValueError, match="formats"):
        sdlm.attach(net, 205, 11, 164, [14, 14], [14, 15])
    mom = make_case("tanh", "mse", "sigmoid", "momentum").qnet.build(None, kernels)
    with pytest.raises(ValueError, match="momentum"):
        _attach(mom)


def test_sdlm_learns_xor():
    c = make_case("tanh", "mse", "sigmoid", "sgd", seed=1, sizes=(2, 6, 1))
    net = c.qnet.build(Hyper(lr=0.05, batch=1), kernels)
    _attach(net, mu=0.1, gamma=0.02)
    X = [array("h", [a << 14, b << 14]) for a in (0, 1) for b in (0, 1)]
    T = [array("h", [(a ^ b) << 14]) for a in (0, 1) for b in (0, 1)]
    for _ in range(1000):
        for x, t in zip(X, T, strict=True):
            net.learn(x, t)
    out = array("h", [0])
    preds = []
    for x in X:
        net.predict(x, out)
        preds.append(out[0] > 8192)
    assert preds == [False, True, True, False]
    assert net.opt.n == 4000
