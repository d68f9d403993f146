"""Fixed-point Adam (edgebp/adam.py) against Adam's formulas in float64, and its settings.

The kernel's bit-exactness on every runtime and kernel set is tested with the other
optimisers (tests/test_core_runtimes.py, test_viper.py, test_native.py, the twin's tests);
here the definition itself is held to the float algorithm it stands for.
"""

from __future__ import annotations

import math
from array import array

import numpy as np
import pytest

from edgebp import adam, kernels
from edgebp.host.nets.qnet import Hyper, QuantNet, adam_q, mantissa_exponent
from edgebp.net import Net


def test_isqrt_is_the_floor_of_the_square_root():
    rng = np.random.default_rng(0)
    values = [0, 1, 2, 3, 4, (1 << 25) - 1, 1 << 24, (1 << 28), (1 << 30) - 1]
    values += [int(v) for v in rng.integers(0, 1 << 30, 2000)]
    values += [k * k + d for k in range(0, 32768, 997) for d in (-1, 0, 1) if k * k + d >= 0]
    for v in values:
        assert adam.isqrt(v) == math.isqrt(v), v


def test_mul_q15_is_an_exact_floor():
    rng = np.random.default_rng(1)
    for a, c in zip(rng.integers(-(1 << 30) + 1, 1 << 30, 3000), rng.integers(0, 32769, 3000),
                    strict=True):
        a, c = int(a), int(c)
        assert adam.mul_q15(a, c) == (a * c) // 32768


@pytest.mark.parametrize("beta1,beta2", [(0.9, 0.999), (0.5, 0.9), (0.0, 0.0), (0.999, 0.5)])
def test_bias_correction_follows_the_float_formula(beta1, beta2):
    c1, c2 = adam_q(beta1, beta2)
    b1, b2 = 1 - c1 / 32768, 1 - c2 / 32768  # the betas the board uses
    p1 = p2 = adam.ONE28
    for t in range(1, 3001):
        p1 = adam.mul_q15(p1, 32768 - c1)
        p2 = adam.mul_q15(p2, 32768 - c2)
        want = math.sqrt(1 - b2**t) / (1 - b1**t)
        got = adam.correction(p1, p2) / 4096
        # beta**t in Q28 (truncated each step), the square root of a Q28 number in Q14 and
        # the denominator in Q14: a few parts in 10**4 at worst, more where 1 - beta1**t is
        # smallest (its Q14 has 9 bits for beta1 = 0.999 at t = 1)
        tol = 2e-3 * want + 2.0 / 4096 + (want / max(1, (1 - b1**t) * 16384))
        assert abs(got - want) <= tol, (t, got, want)
        assert 0 <= adam.correction(p1, p2) < 1 << 22


def _float_adam(xs, b1, b2, lr_lsb):
    # float64 Adam on the gradient sequence xs (any unit: Adam's step does not depend on it),
    # epsilon 0, bias-corrected; steps in weight LSB
    m = np.zeros_like(xs[0])
    v = np.zeros_like(xs[0])
    steps = []
    for t, x in enumerate(xs, 1):
        m = b1 * m + (1 - b1) * x
        v = b2 * v + (1 - b2) * x * x
        mh = m / (1 - b1**t)
        vh = v / (1 - b2**t)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(vh > 0, mh / np.sqrt(vh), 0.0)
        steps.append(lr_lsb * r)
    return steps


@pytest.mark.parametrize("count,kg", [(1, 0), (3, 2), (16, 4)])
@pytest.mark.parametrize("scale", [2**8, 2**12, 2**16, 2**21, 2**26])
def test_steps_follow_float_adam(count, kg, scale):
    # The same gradient sums through the kernel and through Adam in float64: each step of
    # the kernel (its weight change, the step rounded to a weight LSB) lies within half an
    # LSB plus the kernel's errors, for mean gradients from 2**6 units to near the sums'
    # bound; the gradients change sign now and then, so the moments rise and fall.
    rng = np.random.default_rng(scale + count)
    n = 200
    c1, c2 = adam_q(0.9, 0.999)
    b1, b2 = 1 - c1 / 32768, 1 - c2 / 32768
    lr = 0.03
    shift_w = 12
    lr_m, lr_e = mantissa_exponent(lr)
    lr_lsb = lr_m * 2.0**-lr_e * 2**shift_w
    W = array("h", [0] * n)
    M = array("i", [0] * n)
    V = array("i", [0] * n)
    rngs = array("i", [1])
    sign = rng.choice([-1.0, 1.0], n)
    sums = []
    p1 = p2 = adam.ONE28
    got = []
    for _t in range(60):
        sign = np.where(rng.random(n) < 0.15, -sign, sign)
        g = sign * (0.5 + np.abs(rng.normal(0, 1, n))) * scale
        bound = count * ((1 << 30) >> kg) - 1
        G = np.clip(np.round(g * count), -bound, bound).astype(np.int64)
        sums.append(G)
        p1 = adam.mul_q15(p1, 32768 - c1)
        p2 = adam.mul_q15(p2, 32768 - c2)
        corr = adam.correction(p1, p2)
        t = adam.scale(lr_m, corr)
        am = (lr_m * corr) >> t
        u = lr_e + 16 - shift_w - t
        before = np.array(W, np.int64)
        adam.adam(W, array("i", G.tolist()), M, V, n, count, kg, c1, c2, am, u, 0, 0, 0,
                  rngs)
        got.append(np.array(W, np.int64) - before)
    # the mean gradient the kernel forms: round(G / count), in any unit
    xs = [np.sign(G) * np.floor(np.abs(G) / count + 0.5) for G in sums]
    want = _float_adam(xs, b1, b2, lr_lsb)
    for t, (gs, ws) in enumerate(zip(got, want, strict=True)):
        # the step's rounding to an LSB; relative errors of the ratio's square root (r of
        # 11 bits or more), of lr * correction (15 bits) and the correction itself; and the
        # ratio's absolute error from m cut to |m| >> E against r >= 2**11, 2**-11 of lr;
        # and m's floors, which leave it up to 2**15 / c1 units below the float mean, against
        # a sqrt(v) of at least the smallest |x| (scale / 4 here)
        err = np.abs(-gs - ws)
        tol = 0.5 + 4e-3 * np.abs(ws) + lr_lsb / 2048 + lr_lsb * (32768 / c1) / (scale / 4)
        assert np.all(err <= tol), (t, np.max(err - tol), gs[:5], ws[:5])


@pytest.mark.parametrize("x", [1, 2, 3, 7, 100, 1000, 4095, 4096, (1 << 29) - 1, 1 << 29])
def test_v_keeps_twelve_bits_of_any_gradient(x):
    # one step from zero moments with beta2 = 0 (c2 = 32768): v is x*x itself, to the 24 bits
    # of a*a, and decodes to it; the exponent field is E + 11
    for sx in (x, -x):
        V = array("i", [0])
        adam.adam(array("h", [0]), array("i", [2 * sx if abs(sx) < 1 << 29 else sx]),
                  array("i", [0]), V, 1, 1, 0, 32768, 32768, 0, 0, 0, 0, 0, array("i", [1]))
        xx = abs(2 * sx if abs(sx) < 1 << 29 else sx) >> 1
        e = (V[0] >> 25) - adam.BIAS
        f = V[0] & 0x1FFFFFF
        assert f >= 1 << 22 and -adam.BIAS <= e <= 18
        assert abs(f * 4.0**e - xx * xx) <= xx * xx * 2.0**-11


def test_the_ratio_saturates_below_8():
    # beta1 = 0 (m = x) and the smallest 1 - beta2 (v = x*x / 32768 after one step): the
    # ratio m / sqrt(v) is 181, and the step stops at the clamp, 32767 / 4096 of lr
    for x in (1 << 10, 1 << 20, 1 << 29):
        W = array("h", [0])
        M = array("i", [0])
        V = array("i", [0])
        adam.adam(W, array("i", [x]), M, V, 1, 1, 0, 32768, 1, 4096, 12, 0, 0, 0,
                  array("i", [1]))
        assert M[0] == x >> 1
        assert W[0] == -((adam.RHO_MAX + 128) >> 8)


def test_settings_out_of_range_are_refused():
    with pytest.raises(ValueError, match="beta1"):
        adam.check(31, 33)
    with pytest.raises(ValueError, match="beta2"):
        adam.check(3277, 0)
    with pytest.raises(ValueError, match="beta1"):
        adam_q(0.9995, 0.999)
    with pytest.raises(ValueError, match="beta2"):
        adam_q(0.9, 1.0)
    with pytest.raises(ValueError, match="beta2"):
        adam_q(0.9, float("nan"))
    net = Net([2, 3, 1], [4, 3], [14, 14, 14], [12, 12], [14, 14], 0, 1, True)
    with pytest.raises(ValueError, match="momentum"):
        adam.attach(net, 3277, 33)


def test_adam_learns_xor_and_clears_its_sums():
    rng = np.random.default_rng(3)
    W = [rng.integers(-4096, 4097, (4, 2)).astype(np.int16),
         rng.integers(-4096, 4097, (1, 4)).astype(np.int16)]
    B = [np.zeros(4, np.int16), np.zeros(1, np.int16)]
    q = QuantNet([2, 4, 1], [4, 3], [14, 14, 14], [12, 12], [14, 14], 0, W, B,
                 batch_max=4, adam=adam_q())
    net = q.build(Hyper(lr=0.03, batch=4), kernels)
    X = [array("h", [a << 14, b << 14]) for a in (0, 1) for b in (0, 1)]
    T = [array("h", [(a ^ b) << 14]) for a in (0, 1) for b in (0, 1)]
    for _ in range(800):
        for x, t in zip(X, T, strict=True):
            net.learn(x, t)
    assert net.count == 0 and all(v == 0 for g in net.GW for v in g)
    assert net.opt.t == 800
    out = array("h", [0])
    preds = []
    for x in X:
        net.predict(x, out)
        preds.append(out[0] / 16384)
    assert [p > 0.5 for p in preds] == [False, True, True, False], preds
