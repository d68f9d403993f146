"""The spec, the quantiser and the static range analysis.

The analysis is tested from both sides: nets it must refuse (each refusal names the layer),
and nets it accepts, driven with max-magnitude weights, inputs and targets through a
re-implementation of the kernels that records every intermediate, which must stay inside
the bounds the analysis reported (and reach them where the bound is exact).
"""

from __future__ import annotations

import json
from array import array
from dataclasses import replace

import numpy as np
import pytest

import edgebp.net
from combos import all_cases, edge_cases
from edgebp import fixed
from edgebp.fixed import SMALL_MAX, V_MAX, requant
from edgebp.host import quantize as quantize_mod
from edgebp.host.qnet import Hyper, QuantNet
from edgebp.host.quantize import (
    RangeError,
    check_ranges,
    core_layout,
    dequantize,
    input_normalisation,
    max_lr,
    quantize,
    requantize,
)
from edgebp.host.reference import FloatNet
from edgebp.host.spec import (
    SpecError,
    init_float_weights,
    load_spec,
    make_spec,
    parse_spec,
    save_spec,
)
from edgebp.luts import EXP2, LOG2, SIGMOID as SIG_LUT, TANH as TANH_LUT
from edgebp.net import Net

A = {name: i for i, name in enumerate(fixed.ACT_NAMES)}
LOSS = {name: i for i, name in enumerate(fixed.LOSS_NAMES)}

XOR = dict(sizes=[2, 4, 1], activations=["tanh", "sigmoid"], loss="bce",
           input_range={"min": 0, "max": 1}, optimizer={"lr": 0.5})


def iris_like(act: str = "relu", **extra) -> dict:
    d = dict(sizes=[4, 16, 3], activations=[act, "softmax"], loss="softmax_ce",
             input_range={"min": [4.3, 2.0, 1.0, 0.1], "max": [7.9, 4.4, 6.9, 2.5]},
             optimizer={"lr": 0.05, "momentum": 0.9, "batch": 8, "rounding": "stochastic"},
             batch_max=8)
    d.update(extra)
    return d


def regression(**extra) -> dict:
    d = dict(sizes=[3, 5, 4, 2], activations=["leaky_relu", "tanh", "identity"], loss="mse",
             input_range={"min": -2.0, "max": [1.0, 2.0, 3.0]},
             target_range={"min": -3.0, "max": 3.0},
             optimizer={"lr": 0.02, "momentum": 0.5, "weight_decay": 0.01, "batch": 3},
             batch_max=3)
    d.update(extra)
    return d


# -- the spec --


def test_spec_round_trips_through_json(tmp_path):
    spec = make_spec(**regression(classes=["x", "y"]))
    path = tmp_path / "net.json"
    save_spec(spec, path)
    assert load_spec(path) == spec
    assert parse_spec(json.loads(path.read_text())) == spec


def test_spec_defaults_and_broadcast_ranges():
    spec = make_spec(**XOR)
    assert spec.input_min == [0.0, 0.0] and spec.input_max == [1.0, 1.0]
    assert spec.batch_max == spec.batch == 1
    assert spec.hyper() == Hyper(lr=0.5)
    assert spec.alpha_q == 41


def _with(base: dict, path: str, value) -> dict:
    d = json.loads(json.dumps(base))
    keys = path.split(".")
    node = d
    for k in keys[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return d


_DELETE = object()

BAD_SPECS = [
    # (field changed, new value, field the error must name)
    ("sizes", _DELETE, "sizes"),
    ("sizes", [4], "sizes"),
    ("sizes", [4, 0, 3], "sizes[1]"),
    ("sizes", [4, 5000, 3], "sizes[1]"),
    ("sizes", [4, 2.5, 3], "sizes[1]"),
    ("activations", ["relu"], "activations"),
    ("activations", ["swish", "softmax"], "activations[0]"),
    ("activations", ["softmax", "softmax"], "activations[0]"),
    ("loss", "hinge", "loss"),
    ("loss", "mse", "loss"),  # mse on a softmax output
    ("input_range", _DELETE, "input_range"),
    ("input_range.min", _DELETE, "input_range.min"),
    ("input_range.min", [0, 0], "input_range.min"),
    ("input_range.min", [0, 0, "a", 0], "input_range.min[2]"),
    ("input_range.max", [7.9, 4.4, 0.5, 2.5], "input_range.max[2]"),
    ("input_range.mean", 0, "input_range.mean"),
    ("target_range", {"min": 0, "max": 1}, "target_range"),  # not mse
    ("optimizer.lr", 0, "optimizer.lr"),
    ("optimizer.lr", "fast", "optimizer.lr"),
    ("optimizer.momentum", 1.0, "optimizer.momentum"),
    ("optimizer.weight_decay", -0.1, "optimizer.weight_decay"),
    ("optimizer.weight_decay", 30.0, "optimizer.weight_decay"),  # lr * decay >= 1
    ("optimizer.batch", 0, "optimizer.batch"),
    ("optimizer.batch", 9, "optimizer.batch"),  # above batch_max
    ("optimizer.rounding", "down", "optimizer.rounding"),
    ("optimizer.nesterov", True, "optimizer.nesterov"),
    ("batch_max", 40000, "batch_max"),
    ("init_seed", -1, "init_seed"),
    ("leaky_alpha", 2.0, "leaky_alpha"),
    ("classes", ["a", "b"], "classes"),
    ("colour", "red", "colour"),
]


@pytest.mark.parametrize("path,value,field", BAD_SPECS, ids=[f"{p}={v!r}" for p, v, _ in BAD_SPECS])
def test_spec_errors_name_the_field(path, value, field):
    with pytest.raises(SpecError) as err:
        parse_spec(_with(iris_like(), path, value))
    assert err.value.field == field
    assert str(err.value).startswith(field + ": ")


def test_spec_file_that_is_not_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{sizes: [1, 2]")
    with pytest.raises(SpecError, match="not valid JSON"):
        load_spec(path)


def test_init_weights_he_before_relu_glorot_otherwise():
    spec = make_spec(**regression())
    Ws, Bs = init_float_weights(spec)
    limits = [np.sqrt(6 / 3), np.sqrt(6 / (5 + 4)), np.sqrt(6 / (4 + 2))]  # leaky, tanh, id
    for l, (w, b) in enumerate(zip(Ws, Bs, strict=True)):
        assert w.shape == (spec.sizes[l + 1], spec.sizes[l]) and w.dtype == np.float64
        assert np.abs(w).max() <= limits[l] and np.abs(w).max() > limits[l] / 2
        assert not b.any()
    again, _ = init_float_weights(spec)
    other, _ = init_float_weights(spec, seed=spec.init_seed + 1)
    assert all((x == y).all() for x, y in zip(Ws, again, strict=True))
    assert not (Ws[0] == other[0]).all()


# -- input normalisation and weight round trips --


def test_declared_input_range_lands_on_plus_minus_one_in_q14():
    spec = make_spec(**iris_like())
    q = quantize(spec, *init_float_weights(spec))
    lo, hi = np.array(spec.input_min), np.array(spec.input_max)
    assert q.shift_a[0] == 14
    assert (q.quantize_inputs(lo[None, :]) == -16384).all()
    assert (q.quantize_inputs(hi[None, :]) == 16384).all()
    assert (q.quantize_inputs(((lo + hi) / 2)[None, :]) == 0).all()
    # twice the declared half-width still fits; beyond that inputs saturate
    assert (q.quantize_inputs((2 * hi - lo)[None, :] * 1.5) == 32767).all()
    offset, scale = input_normalisation(spec)
    assert np.allclose(q.in_offset, offset) and np.allclose(q.in_scale, scale)


def test_weights_round_trip_exactly_in_the_same_formats():
    spec = make_spec(**regression())
    q = quantize(spec, *init_float_weights(spec))
    for raw in (False, True):
        back = requantize(q, *dequantize(q, raw_inputs=raw), raw_inputs=raw)
        for l in range(q.L):
            assert (back.W[l] == q.W[l]).all() and (back.B[l] == q.B[l]).all()
        assert (back.shift_a, back.shift_w, back.shift_d) == (q.shift_a, q.shift_w, q.shift_d)


def test_quantize_of_dequantized_weights_picks_the_same_formats():
    spec = make_spec(**iris_like("tanh"))
    rng = np.random.default_rng(5)
    X = rng.uniform(spec.input_min, spec.input_max, (64, 4))
    T = rng.integers(0, 3, 64)
    q = quantize(spec, *init_float_weights(spec), X, T)
    again = quantize(spec, *dequantize(q), X, T)
    assert (again.shift_a, again.shift_w, again.shift_d) == (q.shift_a, q.shift_w, q.shift_d)
    assert all((a == b).all() for a, b in zip(again.W + again.B, q.W + q.B, strict=True))


def test_raw_input_weights_are_folded_into_the_first_layer():
    spec = make_spec(**regression())
    Ws, Bs = init_float_weights(spec)
    Bs = [np.linspace(-0.2, 0.3, len(b)) for b in Bs]
    q = quantize(spec, Ws, Bs, raw_inputs=True)
    X = np.random.default_rng(1).uniform(spec.input_min, spec.input_max, (20, 3))
    Xn = (X - q.in_offset) * q.in_scale
    assert (q.quantize_inputs(X) == np.floor(Xn * 2**14 + 0.5)).all()
    # on raw inputs, the unfolded weights compute what the stored ones do on normalised ones
    raw = FloatNet(spec.sizes, spec.acts, spec.loss, *dequantize(q, raw_inputs=True))
    normalised = FloatNet(spec.sizes, spec.acts, spec.loss, *dequantize(q))
    assert np.allclose(raw.forward(X), normalised.forward(Xn), rtol=0, atol=1e-12)
    # and they are the given weights up to half an LSB of the stored ones, carried through
    # the fold: W = W' scale, B = B' - W offset
    W1, B1 = dequantize(q, raw_inputs=True)
    half = 0.5 * 2.0 ** -q.shift_w[0]
    assert (np.abs(W1[0] - Ws[0]) <= half * q.in_scale[None, :] + 1e-12).all()
    assert (np.abs(B1[0] - Bs[0]) <= half * (1 + np.sum(q.in_scale * np.abs(q.in_offset)))
            + 1e-12).all()


def _finest(mag: float, headroom: int, shift: int) -> bool:
    # shift is the largest at which mag * headroom fits in int16
    return mag * headroom * 2.0**shift <= 32767 < mag * headroom * 2.0 ** (shift + 1)


def test_formats_follow_the_headroom_rules():
    # each format is the finest at which the calibration maximum times its headroom fits
    # in int16 (this learning rate is small enough not to force any coarser)
    spec = make_spec(**iris_like("relu", optimizer={"lr": 0.01, "batch": 8}))
    rng = np.random.default_rng(3)
    X = rng.uniform(spec.input_min, spec.input_max, (100, 4))
    T = rng.integers(0, 3, 100)
    Ws, Bs = init_float_weights(spec)
    q = quantize(spec, Ws, Bs, X, T)
    ref = FloatNet(spec.sizes, spec.acts, spec.loss, Ws, Bs, spec.alpha_q / 4096)
    ref.forward((X - q.in_offset) * q.in_scale)
    fprime = ref.derivatives()
    hidden_delta = fprime[0] * (ref.W[1].T @ ref.output_delta(T, fprime))
    w_mag = max(np.abs(Ws[0]).max(), np.abs(Bs[0]).max(), 1 / 2)  # at least 1/sqrt(n_in)
    assert _finest(w_mag, quantize_mod.W_HEADROOM, q.shift_w[0])
    assert _finest(np.abs(ref.a[1]).max(), quantize_mod.A_HEADROOM, q.shift_a[1])
    assert _finest(np.abs(hidden_delta).max(), quantize_mod.D_HEADROOM, q.shift_d[0])
    assert q.shift_d[1] == 14 and q.shift_a[2] == 14  # fixed by softmax-CE


def test_the_core_learns_xor_from_quantised_initial_weights():
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], float)
    T = np.array([[0], [1], [1], [0]], float)
    for seed in range(3):
        spec = make_spec(**XOR, init_seed=seed)
        q = quantize(spec, *init_float_weights(spec), X, T)
        net = q.build(spec.hyper())
        xs = [array("h", x.tobytes()) for x in q.quantize_inputs(X)]
        ts = [array("h", t.tobytes()) for t in q.quantize_targets(T)]
        for _ in range(500):
            net.reset_stats()
            for x, t in zip(xs, ts, strict=True):
                net.learn(x, t)
        assert net.correct == 4, seed


# -- format choice under the learning rate --


def test_formats_admit_the_requested_learning_rate():
    shifts = []
    for lr in (0.01, 0.5, 4.0, 60.0):
        spec = make_spec(**iris_like(optimizer={"lr": lr, "batch": 8}))
        q = quantize(spec, *init_float_weights(spec))
        assert max_lr(q) >= lr
        q.build(spec.hyper())  # set_lr accepts it
        shifts.append(q.shift_w)
    # a large learning rate coarsens the weights instead of being refused
    assert shifts[-1][1] < shifts[0][1]
    assert all(a >= b for a, b in zip(shifts[0], shifts[-1], strict=True))


def test_unrepresentable_learning_rate_is_refused_naming_the_layer():
    spec = make_spec(**iris_like(optimizer={"lr": 2.0**20, "batch": 8}))
    with pytest.raises(RangeError, match=r"^layer \d: learning rate 1.04858e\+06 needs"):
        quantize(spec, *init_float_weights(spec))


def test_mse_targets_too_large_for_any_output_format():
    spec = make_spec(**regression(target_range={"min": -1000, "max": 1000}))
    with pytest.raises(RangeError, match="^layer 3: .*scale the targets"):
        quantize(spec, *init_float_weights(spec))


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
