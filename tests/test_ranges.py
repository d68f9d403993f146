"""The static range analysis (edgebp.host.nets.ranges), tested from both sides: nets it must refuse
(each refusal names the layer), and nets it accepts, driven with max-magnitude weights, inputs
and targets through a re-implementation of the kernels that records every intermediate, which
must stay inside the bounds the analysis reported (and reach them where the bound is exact).
"""

from __future__ import annotations

from array import array
from dataclasses import replace

import numpy as np
import pytest

import edgebp.net
from combos import all_cases, edge_cases
from edgebp import fixed
from edgebp.fixed import SMALL_MAX, V_MAX, requant
from edgebp.host.nets.qnet import Hyper, QuantNet
from edgebp.host.nets.quantize import quantize
from edgebp.host.nets.ranges import RangeError, check_ranges, core_layout, max_lr
from edgebp.host.nets.spec import init_float_weights, make_spec
from edgebp.luts import EXP2, LOG2, SIGMOID as SIG_LUT, TANH as TANH_LUT
from edgebp.luts_act import MISH_D, MISH_G, SWISH_D
from edgebp.net import Net
from specs import XOR, iris_like, regression

A = {name: i for i, name in enumerate(fixed.ACT_NAMES)}
LOSS = {name: i for i, name in enumerate(fixed.LOSS_NAMES)}


# -- the range analysis: the layout it reads is the core's --


def test_core_layout_matches_the_core():
    for case in all_cases()[::7] + edge_cases()[::5]:
        q = case.qnet
        net = q.build()
        lay = core_layout(q)
        assert lay.kg == net.kg
        for l, y in enumerate(lay.layers):
            assert (y.k, y.s_f, y.one) == (net.k_f[l], net.s_f[l], net.one[l])
            assert (y.sz, y.kb, y.s_b) == (net.shift_z[l], net.k_b[l], net.s_b[l])


def test_accepts_every_combination_the_core_tests_use():
    for case in all_cases() + edge_cases():
        report = check_ranges(case.qnet, case.hyper)
        assert report.ok and all(b.ok for b in report.bounds)


# -- refusals: each names the layer at fault --


def _qnet(sizes, acts, shift_a, shift_w, shift_d, loss="mse", batch_max=1, **kw) -> QuantNet:
    L = len(sizes) - 1
    W = [np.zeros((sizes[l + 1], sizes[l]), np.int16) for l in range(L)]
    B = [np.zeros(sizes[l + 1], np.int16) for l in range(L)]
    return QuantNet(list(sizes), [A[a] for a in acts], shift_a, shift_w, shift_d, LOSS[loss],
                    W, B, batch_max=batch_max, **kw)


def _deep(**kw) -> QuantNet:
    # 3 layers, every shift valid; the cases below change one thing
    args = dict(sizes=[3, 4, 4, 2], acts=["tanh", "leaky_relu", "identity"],
                shift_a=[14, 14, 12, 10], shift_w=[12, 12, 12], shift_d=[14, 14, 10])
    args.update(kw)
    return _qnet(**args)


REFUSALS = [
    # (net, hyper, layer the message must name, words it must contain)
    # leaky slope 40000/4096 on z = -32767: the product leaves the small ints
    (replace(_deep(), alpha_q=40000), None, 2, "alpha*z can reach -1310680000 < -2**30"),
    # slope 2: -32767 * 8192 / 4096 no longer fits the activation's int16
    (replace(_deep(), alpha_q=8192), None, 2, "a can reach -65534 < -32767 (int16)"),
    # one = 2**16: 32767 * 65536 > 2**30
    (_deep(shift_a=[16, 14, 12, 10]), None, 1, "B*one can reach"),
    (_deep(shift_a=[14, 14, 15, 10]), None, 3, "input shift 15"),
    # s_f = shift_w + shift_a - k - shift_z = 0 + 14 - 3 - 12
    (_deep(shift_w=[12, 0, 12]), None, 2, "forward requant shift -1 < 0"),
    # s_b = shift_w + shift_d - k_b - shift_d below = 4 + 10 - 1 - 24
    (_deep(shift_w=[12, 12, 4], shift_d=[14, 24, 10]), None, 3, "backward requant shift -11"),
    # lr 2 = 128 * 2**-6: u = 6 + 14 + 14 - 0 - 20 - 16 < 0 in layer 2 only
    (_deep(shift_w=[12, 20, 12]), Hyper(lr=2.0), 2, "learning rate 2 too large"),
    (_deep(shift_a=[14, 14, 12, 5], shift_d=[14, 14, 5]), None, 3, "mse output in Q5"),
    (_deep(shift_w=[12, 12, 25]), None, 3, "weight or delta shift outside 0..24"),
]


@pytest.mark.parametrize("qnet,hyper,layer,words", REFUSALS,
                         ids=[r[3].split(" can")[0] for r in REFUSALS])
def test_refuses_naming_the_layer(qnet, hyper, layer, words):
    with pytest.raises(RangeError) as err:
        check_ranges(qnet, hyper)
    msg = str(err.value)
    assert msg.startswith(f"layer {layer}: "), msg
    assert words in msg, msg
    assert err.value.report is not None and not err.value.report.ok


def test_refuses_net_wide_problems():
    q = _deep(batch_max=4)
    with pytest.raises(RangeError, match="^net: batch 8 exceeds batch_max 4"):
        check_ranges(q, Hyper(lr=0.01, batch=8))
    with pytest.raises(RangeError, match="^net: momentum requested"):
        check_ranges(q, Hyper(lr=0.01, momentum=0.5))
    with pytest.raises(RangeError, match="^net: the core refuses: layer width 4097"):
        check_ranges(_qnet([4097, 2], ["identity"], [14, 8], [12], [8]))


def test_a_guard_one_bit_short_is_refused():
    # the core's guards are exactly enough for any int16 operands: one bit less overflows,
    # and the analysis names the sum and the layer
    q = _deep(sizes=[3, 7, 4, 2], acts=["identity", "relu", "identity"],
              shift_a=[14, 12, 12, 10], batch_max=4)
    check_ranges(q)
    for layer, attr, what in ((2, "k", "forward sum"), (3, "kb", "backward sum")):
        lay = core_layout(q)
        y = lay.layers[layer - 1]
        setattr(y, attr, getattr(y, attr) - 1)
        with pytest.raises(RangeError, match=f"^layer {layer}: {what} can reach"):
            check_ranges(q, layout=lay)
    lay = core_layout(q)
    lay.kg -= 1
    with pytest.raises(RangeError, match="^layer 1: gradient sum can reach"):
        check_ranges(q, layout=lay)
    # the bias needs its own slot in the forward guard: counting only the weights overflows
    lay = core_layout(_deep(sizes=[4, 4, 4, 2]))
    lay.layers[0].k = fixed.ceil_log2(4)
    with pytest.raises(RangeError, match="^layer 1: forward sum"):
        check_ranges(_deep(sizes=[4, 4, 4, 2]), layout=lay)


def test_declared_input_range_tightens_the_bounds():
    q = _deep()
    wide = check_ranges(q)
    narrow = check_ranges(q, x_range=(-16384, 16384))
    assert narrow.get(1, "W*x").hi * 2 <= wide.get(1, "W*x").hi
    assert narrow.get(2, "W*x").hi == wide.get(2, "W*x").hi  # tanh output is Q14 regardless


# -- accepted nets under adversarial values --


class Probe:
    """edgebp.kernels re-implemented step by step, recording every intermediate by
    (layer, name) with the names of the range report, asserting the small-int range."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, str], tuple[int, int]] = {}
        self.layer: dict[int, int] = {}

    def attach(self, net: Net) -> None:
        for l in range(net.L):
            for buf in (net.W[l], net.B[l], net.Z[l], net.GW[l]):
                self.layer[id(buf)] = l + 1

    def rec(self, N: int, what: str, v: int) -> int:
        assert -(1 << 30) <= v <= SMALL_MAX, (N, what, v)
        lo, hi = self.seen.get((N, what), (v, v))
        self.seen[(N, what)] = (min(lo, v), max(hi, v))
        return v

    def matvec(self, W, B, x, n_in, n_out, one, k, s, z):
        N = self.layer[id(W)]
        row = 0
        for j in range(n_out):
            acc = self.rec(N, "forward sum", self.rec(N, "B*one", B[j] * one) >> k)
            for i in range(n_in):
                acc = self.rec(N, "forward sum", acc + (self.rec(N, "W*x", W[row + i] * x[i]) >> k))
            z[j] = requant(acc, s)
            row += n_in

    def matvec_t(self, W, d, n_in, n_out, k, s, e):
        N = self.layer[id(W)]
        for i in range(n_in):
            acc = 0
            p = i
            for j in range(n_out):
                acc = self.rec(N, "backward sum", acc + (self.rec(N, "W*d", W[p] * d[j]) >> k))
                p += n_in
            e[i] = self.rec(N - 1, "error", requant(acc, s))

    def outer_acc(self, G, GB, d, x, n_in, n_out, one, kg):
        N = self.layer[id(G)]
        row = 0
        for j in range(n_out):
            dj = d[j]
            if dj != 0:
                GB[j] = self.rec(N, "bias gradient sum",
                                 GB[j] + (self.rec(N, "d*one", dj * one) >> kg))
                for i in range(n_in):
                    G[row + i] = self.rec(N, "gradient sum",
                                          G[row + i] + (self.rec(N, "d*x", dj * x[i]) >> kg))
            row += n_in

    def _lut(self, N, T, zq):
        u = zq + 32768
        i = u >> 9
        lo = T[i]
        p = self.rec(N, "LUT interpolation", (T[i + 1] - lo) * (u & 511))
        return lo + (p >> 9) + ((p >> 8) & 1)

    def _exp_neg(self, N, x):
        p = self.rec(N, "exp argument", x * 5909)
        y = (p >> 12) + ((p >> 11) & 1)
        ip = y >> 12
        if ip >= 15:
            return 0
        fp = y & 4095
        i = fp >> 6
        lo = EXP2[i]
        p = self.rec(N, "exp interpolation", (EXP2[i + 1] - lo) * (fp & 63))
        v = lo + (p >> 6) + ((p >> 5) & 1)
        return v if ip == 0 else (v >> ip) + ((v >> (ip - 1)) & 1)

    def act_fwd(self, kind, z, a, n, alpha):
        N = self.layer[id(z)]
        for i in range(n):
            v = z[i]
            if kind == fixed.IDENTITY:
                a[i] = v
            elif kind == fixed.RELU:
                a[i] = v if v > 0 else 0
            elif kind == fixed.LEAKY:
                if v > 0:
                    a[i] = v
                else:
                    p = self.rec(N, "alpha*z", v * alpha)
                    a[i] = (p >> 12) + ((p >> 11) & 1)
            elif kind in (fixed.SIGMOID, fixed.TANH):
                a[i] = self._lut(N, SIG_LUT if kind == fixed.SIGMOID else TANH_LUT, v)
            elif kind in (fixed.SWISH, fixed.MISH):
                g = self._lut(N, SIG_LUT if kind == fixed.SWISH else MISH_G, v)
                p = self.rec(N, "z*gate", v * g)
                a[i] = (p >> 14) + ((p >> 13) & 1)
        if kind == fixed.SOFTMAX:
            mx = max(z[j] for j in range(n))
            tot = 0
            for j in range(n):
                a[j] = self._exp_neg(N, self.rec(N, "zmax - z", mx - z[j]))
                tot = self.rec(N, "softmax sum", tot + a[j])
            for j in range(n):
                a[j] = self.rec(N, "softmax numerator", a[j] * 16384 + (tot >> 1)) // tot

    def act_bwd(self, kind, e, z, a, d, n, alpha):
        N = self.layer[id(z)]
        for i in range(n):
            if kind in (fixed.IDENTITY, fixed.SOFTMAX):
                d[i] = e[i]
            elif kind in (fixed.SWISH, fixed.MISH):
                g = self._lut(N, SWISH_D if kind == fixed.SWISH else MISH_D, z[i])
                p = self.rec(N, "error*f'", e[i] * g)
                d[i] = max(-32767, min(32767, (p >> 14) + ((p >> 13) & 1)))
            elif kind == fixed.RELU:
                d[i] = e[i] if z[i] > 0 else 0
            elif kind == fixed.LEAKY:
                if z[i] > 0:
                    d[i] = e[i]
                else:
                    p = self.rec(N, "alpha*error", e[i] * alpha)
                    d[i] = (p >> 12) + ((p >> 11) & 1)
            else:
                v = a[i]
                if kind == fixed.SIGMOID:
                    p = self.rec(N, "a*(1-a)", v * (16384 - v))
                    g = (p >> 14) + ((p >> 13) & 1)
                else:
                    p = self.rec(N, "a*a", v * v)
                    g = 16384 - ((p >> 14) + ((p >> 13) & 1))
                p = self.rec(N, "error*f'", e[i] * g)
                d[i] = (p >> 14) + ((p >> 13) & 1)

    def update(self, W, G, V, n, m, u, mu, c_m, c_s, mode, rng):
        N = self.layer[id(W)]
        s = rng[0]
        m30 = 0x3FFFFFFF
        for p in range(n):
            g = G[p]
            G[p] = 0
            w = W[p]
            v = self.rec(N, "(G>>8)*m", (g >> 8) * m) >> u
            v = max(-V_MAX, min(V_MAX, v))
            if c_m:
                q = self.rec(N, "w*c_m", w * c_m)
                v += (q >> c_s) + ((q >> (c_s - 1)) & 1) if c_s > 0 else q
            if mu:
                q = self.rec(N, "V*mu", V[p] * mu)
                v += (q >> 8) + ((q >> 7) & 1)
            v = max(-V_MAX, min(V_MAX, self.rec(N, "step", v)))
            if mu:
                V[p] = v
            if mode:
                s ^= self.rec(0, "rng shift by 9", (s & (m30 >> 9)) << 9)
                s ^= s >> 11
                s ^= self.rec(0, "rng shift by 12", (s & (m30 >> 12)) << 12)
                w = self.rec(N, "new weight", w - ((v + (s >> 22)) >> 8))
            else:
                w = self.rec(N, "new weight", w - ((v + 128) >> 8))
            W[p] = max(-32767, min(32767, w))
        rng[0] = s


def _loss_intermediates(probe: Probe, net: Net, t, loss: int) -> None:
    # the loss expressions of Net.backward, evaluated on the buffers it used
    L = net.L
    a = net.A[L]
    if loss == fixed.BCE:
        for j in range(net.sizes[L]):
            tj = min(max(t[j], 0), 16384)
            probe.rec(L, "BCE log products", tj * edgebp.net.nlog_q14(a[j])
                      + (16384 - tj) * edgebp.net.nlog_q14(16384 - a[j]))
    elif loss == fixed.MSE:
        for j in range(net.sizes[L]):
            e = probe.rec(L, "a - t", a[j] - t[j])
            e = max(-32767, min(32767, e))
            sq = probe.rec(L, "error^2", e * e)
            probe.rec(L, "loss term", fixed.rshift_round(sq, 2 * net.shift_a[L] - 11))


def _record_buffers(probe: Probe, net: Net) -> None:
    for l in range(net.L):
        for v in net.Z[l]:
            probe.rec(l + 1, "z", v)
        for v in net.A[l + 1]:
            probe.rec(l + 1, "a", v)
        for v in net.D[l]:
            probe.rec(l + 1, "delta", v)


def _weights(rng, kind: str, shape) -> np.ndarray:
    if kind == "random":
        return rng.choice([-32767, 32767], shape).astype(np.int16)
    w = np.full(shape, -32767 if kind in ("negative", "mixed") else 32767, np.int16)
    if kind == "alternating":
        w[..., 1::2] = -32767
    return w


WEIGHT_KINDS = ("positive", "negative", "mixed", "random", "alternating")  # mixed: B > 0


def _nlog_recorded(probe: Probe, L: int):
    def nlog(p):
        # edgebp.net.nlog_q14 step by step, recording its largest product
        real = _real_nlog(p)
        p = max(p, 1)
        e = p.bit_length() - 1
        m = p << (12 - e) if e <= 12 else p >> (e - 12)
        f = m - 4096
        i = f >> 6
        l2 = LOG2[i] + fixed.rshift_round((LOG2[i + 1] - LOG2[i]) * (f & 63), 6)
        v = fixed.rshift_round(probe.rec(L, "-log p product", (((14 - e) << 12) - l2) * 2839), 12)
        assert v == real
        return v

    return nlog


_real_nlog = edgebp.net.nlog_q14


def _targets(rng, loss: int, n_out: int) -> list[int]:
    if loss == fixed.SOFTMAX_CE:
        return [int(rng.integers(0, n_out))]
    if loss == fixed.BCE:
        return [int(v) for v in rng.choice([-100, 0, 16384, 20000], n_out)]
    return [int(v) for v in rng.choice([-32768, 32767, 0], n_out)]


ADVERSARIAL = [
    ("xor", XOR, None),
    ("iris-relu", iris_like("relu", batch_max=3,
                            optimizer={"lr": 0.05, "momentum": 0.9, "batch": 3}), None),
    ("regression", regression(), None),
    ("sigmoid-mse", dict(sizes=[5, 3, 2], activations=["sigmoid", "sigmoid"], loss="mse",
                         input_range={"min": -1, "max": 1}, batch_max=2,
                         optimizer={"lr": 0.1, "batch": 2, "rounding": "stochastic"}), None),
    ("swish-mish", dict(sizes=[4, 5, 5, 2], activations=["swish", "mish", "identity"],
                        loss="mse", input_range={"min": -1, "max": 1}, batch_max=2,
                        optimizer={"lr": 0.1, "batch": 2}), None),
    ("relu-out", dict(sizes=[4, 6, 3], activations=["relu", "relu"], loss="mse",
                      input_range={"min": 0, "max": 1}, target_range={"min": 0, "max": 4},
                      optimizer={"lr": 0.1, "weight_decay": 0.001}), (-32768, 32767)),
]


@pytest.mark.parametrize("name,spec_fields,x_range", ADVERSARIAL,
                         ids=[a[0] for a in ADVERSARIAL])
def test_adversarial_values_stay_inside_the_reported_bounds(name, spec_fields, x_range,
                                                            monkeypatch):
    spec = make_spec(**spec_fields)
    q = quantize(spec, *init_float_weights(spec))
    # the harshest optimiser the formats admit: the largest learning rate (update shift 0 in
    # at least one layer), heavy momentum and decay, stochastic rounding
    lr = max_lr(q)
    hyper = Hyper(lr=lr, momentum=0.99, weight_decay=0.9 / lr, batch=q.batch_max,
                  rounding="stochastic", seed=5)
    q = replace(q, momentum=True)
    if x_range is None:
        lo, hi = q.quantize_inputs(np.array([spec.input_min, spec.input_max]))
        x_range = (int(lo.min()), int(hi.max()))
    report = check_ranges(q, hyper, x_range=x_range)

    probe = Probe()
    L = q.L
    monkeypatch.setattr(edgebp.net, "nlog_q14", _nlog_recorded(probe, L))
    rng = np.random.default_rng(len(name))
    inputs = [x_range[1], x_range[0], 0, None]  # all high, all low, zero, random ends
    for kind in WEIGHT_KINDS:
        for first in range(len(inputs)):
            qq = replace(q, W=[_weights(rng, kind, w.shape) for w in q.W],
                         B=[-_weights(rng, kind, b.shape) if kind == "mixed"
                            else _weights(rng, kind, b.shape) for b in q.B])
            net = qq.build(hyper, probe)
            probe.attach(net)
            ref = qq.build(hyper)
            for s in range(first, first + 2 * q.batch_max + 1):
                x = inputs[s % len(inputs)]
                if x is None:
                    xs = [int(v) for v in rng.choice(list(x_range), q.sizes[0])]
                else:
                    xs = [x] * q.sizes[0]
                xa, ta = array("h", xs), array("h", _targets(rng, q.loss, q.sizes[-1]))
                loss = net.learn(xa, ta)
                assert loss == ref.learn(xa, ta)
                _record_buffers(probe, net)
                _loss_intermediates(probe, net, ta, q.loss)
                if q.loss == fixed.BCE:
                    probe.rec(L, "sample loss", loss)
            net.update()
            ref.update()
            # the re-implementation is the core, bit for bit
            for l in range(L):
                assert list(net.W[l]) == list(ref.W[l]) and list(net.B[l]) == list(ref.B[l])
                assert list(net.VW[l]) == list(ref.VW[l]) and list(net.VB[l]) == list(ref.VB[l])
            assert net.rng[0] == ref.rng[0]

    reported = {(b.layer, b.what): b for b in report.bounds}
    for key, (lo, hi) in probe.seen.items():
        assert key in reported, f"{key} is computed by the core but not bounded"
        b = reported[key]
        assert b.lo <= lo and hi <= b.hi, f"{key}: saw [{lo}, {hi}], bound [{b.lo}, {b.hi}]"
    # where the bound is exact, max-magnitude operands reach it
    for key in [(1, "W*x"), (1, "B*one"), (1, "forward sum")]:
        assert probe.seen[key][1] == reported[key].hi, key


# -- Adam (edgebp/adam.py) --

from edgebp import adam as adam_core  # noqa: E402


class AdamProbe(Probe):
    """edgebp.adam's kernel and Adam.update re-implemented step by step, recording every
    intermediate under the names of the range report."""

    __name__ = "adam_probe"  # adam._kernel reads the kernel set's name

    def _mul_q15(self, N, what, a, k, kname):
        return (self.rec(N, f"{what}>>15 * {kname}", (a >> 15) * k)
                + (self.rec(N, f"{what}&32767 * {kname}", (a & 32767) * k) >> 15))

    def isqrt(self, N, n):
        self.rec(N, "isqrt argument", n)
        r = 0
        b = 1 << 28
        while b > n:
            b >>= 2
        while b:
            if n >= self.rec(N, "isqrt r + b", r + b):
                n -= r + b
                r = (r >> 1) + b
            else:
                r >>= 1
            b >>= 2
        return r

    def adam(self, W, G, M, V, n, count, kg, c1, c2, am, u, c_m, c_s, mode, rng):
        N = self.layer[id(W)]

        def r(what, v):
            return self.rec(N, what, v)

        half = count >> 1
        s = rng[0]
        m30 = 0x3FFFFFFF
        for p in range(n):
            g = G[p]
            G[p] = 0
            if g >= 0:
                h = r("G + count/2", g + half) // count
            else:
                h = -(r("count/2 - G", half - g) // count)
            x = r("mean gradient x", h << (kg - 1) if kg else h >> 1)
            m = M[p]
            m = r("m", m + self._mul_q15(N, "(x - m)", r("x - m", x - m), c1, "c1"))
            M[p] = m
            a = abs(x)
            k = -adam_core.BIAS
            xf = 0
            if a:
                k = 0
                while a >= 4096:
                    a >>= 1
                    k += 1
                while a < 2048:
                    a = r("a << 1", a << 1)
                    k -= 1
                xf = r("x*x mantissa", a * a)
            q = V[p]
            e = (q >> 25) - adam_core.BIAS
            f = q & 0x1FFFFFF
            if k > e:
                f = f >> (2 * (k - e)) if k - e < 13 else 0
                e = k
            elif e > k:
                xf = xf >> (2 * (e - k)) if e - k < 13 else 0
            f += self._mul_q15(N, "(x*x - f)", r("x*x - f", xf - f), c2, "c2")
            if f == 0:
                e = -adam_core.BIAS
            while e > -adam_core.BIAS and f < 0x400000:
                f = r("f << 2", f << 2)
                e -= 1
            V[p] = r("v (E + 11 << 25 | F)", ((e + adam_core.BIAS) << 25) | f)
            rt = max(self.isqrt(N, f), 1)
            mm = r("|m|", abs(m))
            if e >= 0:
                mm >>= e
                if mm >= r("r << 3", rt << 3):
                    rho = adam_core.RHO_MAX
                else:
                    rho = r("|m| << 12", mm << 12) // rt
            elif mm >= r("8 r + 2**-e - 1", (rt << 3) + (1 << -e) - 1) >> -e:
                rho = adam_core.RHO_MAX
            else:
                rho = r("|m| << 12", r("|m| << -e", mm << -e) << 12) // rt
            v = r("rho*am", r("rho", rho) * am) >> u
            v = max(-V_MAX, min(V_MAX, -v if m < 0 else v))
            w = W[p]
            if c_m:
                q = r("w*c_m", w * c_m)
                v += (q >> c_s) + ((q >> (c_s - 1)) & 1) if c_s > 0 else q
            v = max(-V_MAX, min(V_MAX, r("step", v)))
            if mode:
                s ^= self.rec(0, "rng shift by 9", (s & (m30 >> 9)) << 9)
                s ^= s >> 11
                s ^= self.rec(0, "rng shift by 12", (s & (m30 >> 12)) << 12)
                w = r("new weight", w - ((v + (s >> 22)) >> 8))
            else:
                w = r("new weight", w - ((v + 128) >> 8))
            W[p] = max(-32767, min(32767, w))
        rng[0] = s

    def adam_update(self, opt, net):
        # Adam.update with its scalars recorded
        opt.t += 1
        for name, attr, c in (("beta1**t", "p1", opt.c1), ("beta2**t", "p2", opt.c2)):
            setattr(opt, attr, self._mul_q15(0, name, getattr(opt, attr), 32768 - c, "beta"))
        d = max(1, self.rec(0, "1 - beta1**t", adam_core.ONE28 - opt.p1) >> 14)
        num = self.rec(0, "correction numerator",
                       self.isqrt(0, self.rec(0, "1 - beta2**t", adam_core.ONE28 - opt.p2))
                       << 12)
        corr = self.rec(0, "bias correction", num // d)
        P = self.rec(0, "lr_m * correction", net.lr_m * corr)
        t = adam_core.scale(net.lr_m, corr)
        am0 = P >> t
        for l in range(net.frozen, net.L):
            u = net.lr_e + 16 - net.shift_w[l] - t
            am = am0
            if u < 0:
                am = adam_core.AM_MAX if -u >= 15 else min(
                    adam_core.AM_MAX, self.rec(0, "am << -u", am0 << -u))
                u = 0
            u = min(u, 30)
            n = net.sizes[l + 1]
            for Wt, Gt, Mt, Vt, size in ((net.W[l], net.GW[l], opt.MW[l], opt.VW[l],
                                          net.sizes[l] * n),
                                         (net.B[l], net.GB[l], opt.MB[l], opt.VB[l], n)):
                self.adam(Wt, Gt, Mt, Vt, size, net.count, net.kg, opt.c1, opt.c2, am, u,
                          net.c_m, net.c_s, net.mode, net.rng)


def _probed(q: QuantNet, hyper: Hyper, probe: AdamProbe):
    net = q.build(hyper, probe)
    probe.attach(net)
    opt = net.opt
    opt.update = lambda net: probe.adam_update(opt, net)
    return net


def _same_adam_state(a, b) -> None:
    for l in range(a.L):
        for name in ("W", "B"):
            assert list(getattr(a, name)[l]) == list(getattr(b, name)[l])
        for name in ("MW", "MB", "VW", "VB"):
            assert list(getattr(a.opt, name)[l]) == list(getattr(b.opt, name)[l])
    assert (a.opt.t, a.opt.p1, a.opt.p2, a.rng[0]) == (b.opt.t, b.opt.p1, b.opt.p2, b.rng[0])


def _within(probe: Probe, report, exact=()) -> None:
    reported = {(b.layer, b.what): b for b in report.bounds}
    for key, (lo, hi) in probe.seen.items():
        assert key in reported, f"{key} is computed by the core but not bounded"
        b = reported[key]
        assert b.lo <= lo and hi <= b.hi, f"{key}: saw [{lo}, {hi}], bound [{b.lo}, {b.hi}]"
    for key in exact:
        assert probe.seen[key][1] == reported[key].hi, (key, probe.seen[key], reported[key])


ADAM_VALID = [(32, 1), (32, 32768), (32768, 1), (32768, 32768), (3277, 33), (33, 2)]


@pytest.mark.parametrize("c1,c2", ADAM_VALID)
def test_adam_accepts_every_valid_setting(c1, c2):
    # every beta the core takes, the largest learning-rate mantissa, any exponent
    for lr in (255 * 2.0**-20, 1.0, 255.0):
        q = replace(_deep(batch_max=3), adam=(c1, c2))
        for hyper in (None, Hyper(lr=lr, weight_decay=0.9 / lr, batch=3)):
            report = check_ranges(q, hyper)
            assert report.ok
            corr = report.get(0, "bias correction").hi
            assert corr <= 1 << 22 and report.get(0, "lr_m * correction").hi < 1 << 30
    # the SGD bounds give way to Adam's
    names = {b.what for b in report.bounds}
    assert "(G>>8)*m" not in names and "V*mu" not in names and "rho*am" in names


def test_adam_correction_bound_is_the_largest_over_every_update():
    # Adam.update's correction over t = 1..3000 for extreme betas: never above the proven
    # bound, which it meets at the first update when beta2**t is 0 there
    for c1, c2 in ADAM_VALID:
        report = check_ranges(replace(_deep(), adam=(c1, c2)))
        bound = report.get(0, "bias correction").hi
        p1 = p2 = adam_core.ONE28
        most = 0
        for _ in range(3000):
            p1 = adam_core.mul_q15(p1, 32768 - c1)
            p2 = adam_core.mul_q15(p2, 32768 - c2)
            most = max(most, adam_core.correction(p1, p2))
        assert most <= bound
        if c2 == 32768:
            assert most == bound
    assert check_ranges(replace(_deep(), adam=(32, 32768))).get(0, "bias correction").hi \
        == 1 << 22


ADAM_REFUSALS = [
    (dict(adam=(31, 10)), None, "net: Adam beta1 outside 0..0.999"),
    (dict(adam=(32769, 10)), None, "net: Adam beta1 outside"),
    (dict(adam=(3277, 0)), None, "net: Adam beta2 outside 0..1"),
    (dict(adam=(3277, 32769)), None, "net: Adam beta2 outside"),
    (dict(adam=(3277, 33), momentum=True), None, "net: Adam replaces momentum"),
    (dict(adam=(3277, 33)), Hyper(lr=0.01, momentum=0.9), "net: momentum 0.9 set for a net "
                                                          "with Adam"),
]


@pytest.mark.parametrize("fields,hyper,words", ADAM_REFUSALS, ids=[r[2] for r in ADAM_REFUSALS])
def test_adam_refuses_settings_outside_the_proven_range(fields, hyper, words):
    with pytest.raises(RangeError) as err:
        check_ranges(replace(_deep(), **fields), hyper)
    msg = str(err.value)
    assert msg.startswith(words) and "\n" not in msg, msg


def test_adam_beta1_limit_is_what_the_proof_needs(monkeypatch):
    # with the core's check of the betas out of the way, the proof itself refuses 1 - beta1
    # below 32/32768 for the largest learning-rate mantissa: lr_m * correction leaves the
    # small ints (the correction grows as 1 / (1 - beta1)); 32 is the first it accepts
    monkeypatch.setattr(adam_core, "check", lambda c1, c2: None)
    with pytest.raises(RangeError, match="^net: lr_m \\* correction can reach 1140850620 > "
                                         "2\\*\\*30-1$"):
        check_ranges(replace(_deep(), adam=(31, 32768)))
    check_ranges(replace(_deep(), adam=(32, 32768)))
    check_ranges(replace(_deep(), adam=(31, 32768)), Hyper(lr=128 * 2.0**-10))


ADAM_ADVERSARIAL = [
    ("xor", XOR, (32768, 32768)),
    ("iris-relu", iris_like("relu", batch_max=3, optimizer={"lr": 0.05, "batch": 3}), (32, 1)),
    ("regression", regression(optimizer={"lr": 0.02, "batch": 3}), (3277, 33)),
    ("swish-mish", dict(sizes=[4, 5, 5, 2], activations=["swish", "mish", "identity"],
                        loss="mse", input_range={"min": -1, "max": 1}, batch_max=2,
                        optimizer={"lr": 0.1, "batch": 2}), (32768, 1)),
]


@pytest.mark.parametrize("name,spec_fields,betas", ADAM_ADVERSARIAL,
                         ids=[a[0] for a in ADAM_ADVERSARIAL])
def test_adam_adversarial_values_stay_inside_the_reported_bounds(name, spec_fields, betas):
    # max-magnitude weights and inputs through whole nets with Adam at its harshest: the
    # largest learning rate (the layer multiplier saturates), heavy decay, stochastic rounding
    spec = make_spec(**spec_fields)
    q = replace(quantize(spec, *init_float_weights(spec)), adam=betas, momentum=False)
    hyper = Hyper(lr=255.0, weight_decay=0.9 / 255, batch=q.batch_max, rounding="stochastic",
                  seed=5)
    lo, hi = q.quantize_inputs(np.array([spec.input_min, spec.input_max]))
    x_range = (int(lo.min()), int(hi.max()))
    report = check_ranges(q, hyper, x_range=x_range)
    probe = AdamProbe()
    rng = np.random.default_rng(len(name))
    inputs = [x_range[1], x_range[0], 0, None]
    for kind in WEIGHT_KINDS:
        qq = replace(q, W=[_weights(rng, kind, w.shape) for w in q.W],
                     B=[_weights(rng, kind, b.shape) for b in q.B])
        net, ref = _probed(qq, hyper, probe), qq.build(hyper)
        assert ref.opt.k is adam_core.adam
        for s in range(4 * q.batch_max + 1):
            x = inputs[s % len(inputs)]
            xs = ([int(v) for v in rng.choice(list(x_range), q.sizes[0])] if x is None
                  else [x] * q.sizes[0])
            xa, ta = array("h", xs), array("h", _targets(rng, q.loss, q.sizes[-1]))
            assert net.learn(xa, ta) == ref.learn(xa, ta)
        net.update()
        ref.update()
        _same_adam_state(net, ref)  # the re-implementation is the core, bit for bit
    _within(probe, report)
    assert probe.seen[(0, "lr_m * correction")][1] > 0


@pytest.mark.parametrize("c1,c2", [(32768, 32768), (32, 1), (32768, 1), (3277, 33)])
@pytest.mark.parametrize("batch_max", [1, 3, 4])
def test_adam_kernel_at_its_extremes_meets_the_bounds(c1, c2, batch_max):
    # the kernel alone, on gradient sums of `count` terms at the largest magnitude the proof
    # gives a term, both signs by turns, every count, the largest multiplier and no shift:
    # each intermediate inside its bound, and the mean, the moment and their difference at it
    q = replace(_deep(sizes=[3, 4, 4, 2], batch_max=batch_max), adam=(c1, c2))
    report = check_ranges(q)
    kg = fixed.ceil_log2(batch_max)
    probe = AdamProbe()
    core = [array("i", bytes(4 * 4)) for _ in range(3)]  # M, V, G of the pure kernel
    mine = [array("i", bytes(4 * 4)) for _ in range(3)]
    Wc, Wm = array("h", [32767, -32767, 0, 1]), array("h", [32767, -32767, 0, 1])
    probe.layer[id(Wm)] = 1
    hi, lo = report.get(1, "d*x").hi >> kg, report.get(1, "d*x").lo >> kg
    rc, rm = array("i", [fixed.seed30(3)]), array("i", [fixed.seed30(3)])
    for step in range(40):
        count = 1 + step % batch_max
        sign = (step // batch_max) % 2
        for G in (core[2], mine[2]):
            G[:] = array("i", [count * (hi if sign else lo), count * (lo if sign else hi),
                               count * hi, count * lo])
        args = (count, kg, c1, c2, adam_core.AM_MAX, step % 3, 255, step % 4, step % 2)
        adam_core.adam(Wc, core[2], core[0], core[1], 4, *args, rc)
        probe.adam(Wm, mine[2], mine[0], mine[1], 4, *args, rm)
        assert (list(Wc), list(core[0]), list(core[1])) == (list(Wm), list(mine[0]),
                                                            list(mine[1]))
    _within(probe, report, exact=[(1, "mean gradient x"), (1, "G + count/2")]
            + ([(1, "m"), (1, "x - m")] if c1 == 32768 else [])
            + ([(1, "rho*am")] if (c1, c2) == (32768, 1) else []))  # rho at its clamp


# -- SDLM (edgebp/sdlm.py) --

from edgebp import sdlm as sdlm_core  # noqa: E402
from edgebp.host.nets.qnet import sdlm_q  # noqa: E402

CURV = "curvature: "


class SdlmProbe(Probe):
    """edgebp.sdlm's kernels and Sdlm.curvature re-implemented step by step, recording every
    intermediate under the names of the range report (the curvature pass's under
    "curvature: ")."""

    __name__ = "sdlm_probe"  # sdlm._kernels reads the kernel set's name
    prefix = ""

    def rec(self, N, what, v):
        return super().rec(N, self.prefix + what, v)

    def sq_t(self, W, C, n_in, n_out, k, s, E):
        N = self.layer[id(W)]
        for i in range(n_in):
            acc = 0
            p = i
            for j in range(n_out):
                w = abs(W[p])
                q = self.rec(N, "(|W| C >> 15) |W|", (self.rec(N, "|W| C", w * C[j]) >> 15) * w)
                acc = self.rec(N, "sq_t sum", acc + (q >> k))
                p += n_in
            E[i] = requant(acc, s)

    def curv_acc(self, HW, HB, C, a, n_in, n_out, s_w, s_b, gam, N):
        row = 0
        for j in range(n_out):
            c = C[j]
            x = self.rec(N, "sample h", requant(c, s_b))
            d = self.rec(N, "(sample h - h) gam", self.rec(N, "sample h - h", x - HB[j]) * gam)
            HB[j] = self.rec(N, "h", HB[j] + (d >> 14) + ((d >> 13) & 1))
            for i in range(n_in):
                v = abs(a[i])
                p = self.rec(N, "(C |a| >> 15) |a|", (self.rec(N, "C |a|", c * v) >> 15) * v)
                x = self.rec(N, "sample h", requant(p, s_w))
                d = self.rec(N, "(sample h - h) gam",
                             self.rec(N, "sample h - h", x - HW[row + i]) * gam)
                HW[row + i] = self.rec(N, "h", HW[row + i] + (d >> 14) + ((d >> 13) & 1))
            row += n_in

    def curvature(self, opt, net):
        # Sdlm.curvature, every name under "curvature: "
        self.prefix = CURV
        L, sizes, alpha = net.L, net.sizes, net.alpha
        a = net.A[L]
        c = opt.C[L - 1]
        if net.loss_kind == fixed.MSE:
            for i in range(sizes[L]):
                c[i] = 16384
            self.act_bwd(net.acts[L - 1], c, net.Z[L - 1], a, c, sizes[L], alpha)
            self.act_bwd(net.acts[L - 1], c, net.Z[L - 1], a, c, sizes[L], alpha)
        else:
            for i in range(sizes[L]):
                p = self.rec(L, "p*(1-p)", a[i] * (16384 - a[i]))
                c[i] = (p >> 14) + ((p >> 13) & 1)
        for v in c:
            self.rec(L, "C", v)
        for l in range(L - 1, net.frozen, -1):
            e = opt.C[l - 1]
            self.sq_t(net.W[l], opt.C[l], sizes[l], sizes[l + 1], opt.kq[l], opt.sq[l], e)
            for _ in range(2):
                self.act_bwd(net.acts[l - 1], e, net.Z[l - 1], net.A[l], e, sizes[l], alpha)
            for v in e:
                self.rec(l, "C", v)
        gam = max(opt.gamma, 16384 // (opt.n + 1))
        for l in range(net.frozen, L):
            self.curv_acc(opt.HW[l], opt.HB[l], opt.C[l], net.A[l], sizes[l], sizes[l + 1],
                          opt.s_w[l], opt.s_b[l], gam, l + 1)
        if opt.n < SMALL_MAX:
            opt.n += 1
        self.prefix = ""

    def sdlm(self, W, G, H, n, m, u, mu_q, fh, c_m, c_s, mode, rng):
        N = self.layer[id(W)]

        def r(what, v):
            return self.rec(N, what, v)

        s = rng[0]
        m30 = 0x3FFFFFFF
        lim = V_MAX >> fh
        for p in range(n):
            g = G[p]
            G[p] = 0
            w = W[p]
            v = r("(G>>8)*m", (g >> 8) * m) >> u
            a = abs(v)
            den = r("mu_q + h", mu_q + H[p])
            q = a // den
            if q > lim:
                a = V_MAX
            else:
                rem = a - r("q * den", q * den)
                a = r("divided step", r("q << fh", q << fh) + (r("remainder << fh", rem << fh)
                                                               // den))
                a = min(a, V_MAX)
            v = a if v >= 0 else -a
            if c_m:
                q = r("w*c_m", w * c_m)
                v += (q >> c_s) + ((q >> (c_s - 1)) & 1) if c_s > 0 else q
            v = max(-V_MAX, min(V_MAX, r("step", v)))
            if mode:
                s ^= self.rec(0, "rng shift by 9", (s & (m30 >> 9)) << 9)
                s ^= s >> 11
                s ^= self.rec(0, "rng shift by 12", (s & (m30 >> 12)) << 12)
                w = r("new weight", w - ((v + (s >> 22)) >> 8))
            else:
                w = r("new weight", w - ((v + 128) >> 8))
            W[p] = max(-32767, min(32767, w))
        rng[0] = s


def _sdlm_probed(q: QuantNet, hyper: Hyper, probe: SdlmProbe):
    net = q.build(hyper, probe)
    probe.attach(net)
    opt = net.opt
    opt.k = probe  # the kernels sq_t and sdlm (curv_acc through the re-implemented pass)
    opt.curvature = lambda net: probe.curvature(opt, net)
    return net


def _same_sdlm_state(a, b) -> None:
    for l in range(a.L):
        for name in ("W", "B"):
            assert list(getattr(a, name)[l]) == list(getattr(b, name)[l])
        for name in ("C", "HW", "HB"):
            assert list(getattr(a.opt, name)[l]) == list(getattr(b.opt, name)[l])
    assert (a.opt.n, a.rng[0]) == (b.opt.n, b.rng[0])


def _sdlm(q: QuantNet, mu: float, gamma: float, fc_hidden: int, fh: int):
    return replace(q, sdlm=sdlm_q(mu, gamma, [fc_hidden] * (q.L - 1) + [14], [fh] * q.L),
                   momentum=False)


SDLM_ADVERSARIAL = [  # (name, spec, mu, gamma, hidden curvature format, h format)
    ("xor", XOR, 2.0**-14, 1.0, 24, 14),
    ("iris-relu", iris_like("relu", batch_max=3, optimizer={"lr": 0.05, "batch": 3}),
     1.0, 2.0**-14, 20, 10),
    ("regression", regression(optimizer={"lr": 0.02, "batch": 3}), 0.05, 0.05, 24, 14),
    ("swish-mish", dict(sizes=[4, 5, 5, 2], activations=["swish", "mish", "identity"],
                        loss="mse", input_range={"min": -1, "max": 1}, batch_max=2,
                        optimizer={"lr": 0.1, "batch": 2}), 0.01, 0.5, 24, 14),
    ("sigmoid-mse", dict(sizes=[5, 3, 2], activations=["sigmoid", "sigmoid"], loss="mse",
                         input_range={"min": -1, "max": 1}, batch_max=2,
                         optimizer={"lr": 0.1, "batch": 2}), 255.0, 0.1, 0, 0),
]


@pytest.mark.parametrize("name,spec_fields,mu,gamma,fc,fh", SDLM_ADVERSARIAL,
                         ids=[a[0] for a in SDLM_ADVERSARIAL])
def test_sdlm_adversarial_values_stay_inside_the_reported_bounds(name, spec_fields, mu, gamma,
                                                                 fc, fh):
    # max-magnitude weights and inputs through whole nets with SDLM: the largest learning
    # rate the formats take, curvature formats that saturate (Q24) or round to nothing (Q0),
    # mu from one LSB of h to its largest, heavy decay, stochastic rounding
    spec = make_spec(**spec_fields)
    q = _sdlm(quantize(spec, *init_float_weights(spec)), mu, gamma, fc, fh)
    lr = max_lr(q)
    hyper = Hyper(lr=lr, weight_decay=0.9 / lr, batch=q.batch_max, rounding="stochastic",
                  seed=5)
    lo, hi = q.quantize_inputs(np.array([spec.input_min, spec.input_max]))
    x_range = (int(lo.min()), int(hi.max()))
    report = check_ranges(q, hyper, x_range=x_range)
    probe = SdlmProbe()
    rng = np.random.default_rng(len(name))
    inputs = [x_range[1], x_range[0], 0, None]
    for kind in WEIGHT_KINDS:
        for first in range(len(inputs)):
            qq = replace(q, W=[_weights(rng, kind, w.shape) for w in q.W],
                         B=[_weights(rng, kind, b.shape) for b in q.B])
            net, ref = _sdlm_probed(qq, hyper, probe), qq.build(hyper)
            assert ref.opt.k is sdlm_core
            for s in range(first, first + 4 * q.batch_max + 1):
                x = inputs[s % len(inputs)]
                xs = ([int(v) for v in rng.choice(list(x_range), q.sizes[0])] if x is None
                      else [x] * q.sizes[0])
                xa, ta = array("h", xs), array("h", _targets(rng, q.loss, q.sizes[-1]))
                assert net.learn(xa, ta) == ref.learn(xa, ta)
                _same_sdlm_state(net, ref)  # the re-implementation is the core, bit for bit
            net.update()
            ref.update()
            _same_sdlm_state(net, ref)
    _within(probe, report)
    assert probe.seen[(q.L, CURV + "C")][1] > 0
    assert probe.seen[(1, "mu_q + h")][0] == report.get(1, "mu_q + h").lo  # h = 0 at first


@pytest.mark.parametrize("fc,fh", [(24, 14), (24, 0), (0, 14), (14, 7)])
def test_sdlm_kernels_at_their_extremes_meet_the_bounds(fc, fh):
    # the kernels alone: sq_t on the largest C and |W|, curv_acc on the largest C and |a|,
    # the step on gradient sums at their bound with mu at one LSB of h, h = 0 and h at its
    # largest: every intermediate inside its bound, the products at theirs
    q = replace(_deep(sizes=[3, 4, 4, 2], batch_max=1),
                sdlm=sdlm_q(2.0**-fh, 1.0, [fc, fc, 14], [fh] * 3))
    report = check_ranges(q)
    net = q.build()
    o = net.opt
    probe = SdlmProbe()
    W = array("h", [32767, -32767] * 8)  # layer 2's 4 x 4 weights
    probe.layer[id(W)] = 2
    c2 = report.get(2, CURV + "C").hi
    c1 = report.get(1, CURV + "C").hi
    probe.prefix = CURV
    probe.sq_t(W, array("h", [c2] * 4), 4, 4, o.kq[1], o.sq[1], array("h", [0] * 4))
    HW, HB = array("h", [0] * 12), array("h", [0] * 4)
    probe.curv_acc(HW, HB, array("h", [c1] * 4), array("h", [-32768, 32767, 0]), 3, 4,
                   o.s_w[0], o.s_b[0], 16384, 1)
    probe.prefix = ""
    g = report.get(1, "gradient sum")
    G = array("i", [g.hi, g.lo] * 3)
    hmax = report.get(1, CURV + "h").hi
    H = array("h", [0, 0, hmax, hmax, hmax >> 1, hmax])
    Wm = array("h", [1, -1, 32767, -32767, 5, -5])
    probe.layer[id(Wm)] = 1
    Wc, Gc = array("h", Wm), array("i", G)
    rm, rc = array("i", [fixed.seed30(3)]), array("i", [fixed.seed30(3)])
    for m, u in ((255, 0), (128, 7), (200, 20)):
        G[:] = Gc[:] = array("i", [g.hi, g.lo] * 3)
        probe.sdlm(Wm, G, H, 6, m, u, o.mu[0], fh, 255, 0, 1, rm)
        sdlm_core.sdlm(Wc, Gc, H, 6, m, u, o.mu[0], fh, 255, 0, 1, rc)
        assert list(Wm) == list(Wc) and rm[0] == rc[0]
    _within(probe, report, exact=[(1, CURV + "C |a|"), (1, CURV + "(C |a| >> 15) |a|")])
    # |W| is 32767 here, the bound takes 32768 (an int16 weight before its first update)
    assert probe.seen[(2, CURV + "|W| C")][1] == 32767 * c2
    assert report.get(2, CURV + "|W| C").hi == 32768 * c2
    assert probe.seen[(1, "q * den")][1] > 0
