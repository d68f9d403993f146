"""The spec and the quantiser: spec parsing, input normalisation, weight round trips and the
choice of formats (the range analysis each quantised net passes: test_ranges.py)."""

from __future__ import annotations

import json
from array import array
from dataclasses import replace

import numpy as np
import pytest

from edgebp import kernels as K
from edgebp.host.nets import quantize as quantize_mod
from edgebp.host.nets.qnet import Hyper, adam_q, sdlm_q
from edgebp.host.nets.quantize import (
    RangeError,
    dequantize,
    input_normalisation,
    max_lr,
    quantize,
    requantize,
)
from edgebp.host.nets.reference import FloatNet
from edgebp.host.nets.spec import (
    SpecError,
    init_float_weights,
    load_spec,
    make_spec,
    parse_spec,
    save_spec,
)
from specs import XOR, iris_like, regression

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
    ("activations", ["gelu", "softmax"], "activations[0]"),
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
    ("optimizer.name", "rmsprop", "optimizer.name"),
    ("optimizer.beta1", 0.5, "optimizer.beta1"),  # a setting of Adam, on SGD
    ("batch_max", 40000, "batch_max"),
    ("init_seed", -1, "init_seed"),
    ("leaky_alpha", 2.0, "leaky_alpha"),
    ("classes", ["a", "b"], "classes"),
    ("colour", "red", "colour"),
]


@pytest.mark.parametrize("path,value,field", BAD_SPECS,
                         ids=[f"{p}=deleted" if v is _DELETE else f"{p}={v!r}"
                              for p, v, _ in BAD_SPECS])
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


def _iris_calibrated():
    """An iris-like spec at a small learning rate, calibration data and float weights."""
    spec = make_spec(**iris_like("relu", optimizer={"lr": 0.01, "batch": 8}))
    rng = np.random.default_rng(3)
    X = rng.uniform(spec.input_min, spec.input_max, (100, 4))
    T = rng.integers(0, 3, 100)
    Ws, Bs = init_float_weights(spec)
    return spec, X, T, Ws, Bs


def test_formats_follow_the_headroom_rules():
    # each format is the finest at which the calibration maximum times its headroom fits
    # in int16 (this learning rate is small enough not to force any coarser)
    spec, X, T, Ws, Bs = _iris_calibrated()
    q = quantize(spec, Ws, Bs, X, T)
    ref = FloatNet(spec.sizes, spec.acts, spec.loss, Ws, Bs, spec.alpha_q / 4096)
    ref.forward((X - q.in_offset) * q.in_scale)
    fprime = ref.derivatives()
    error = ref.W[1].T @ ref.output_delta(T, fprime)
    # the hidden delta buffer holds the back-propagated error, then f' times it
    hidden = max(np.abs(error).max(), np.abs(fprime[0] * error).max())
    w_mag = max(np.abs(Ws[0]).max(), np.abs(Bs[0]).max(), 1 / 2)  # at least 1/sqrt(n_in)
    assert _finest(w_mag, quantize_mod.W_HEADROOM, q.shift_w[0])
    assert _finest(np.abs(ref.a[1]).max(), quantize_mod.A_HEADROOM, q.shift_a[1])
    assert _finest(hidden, quantize_mod.D_HEADROOM, q.shift_d[0])
    assert q.shift_d[1] == 14 and q.shift_a[2] == 14  # fixed by softmax-CE

    # more room for growth: the finest weight format that leaves it, the rest unchanged
    grown = quantize(replace(spec, weight_growth=32.0), Ws, Bs, X, T)
    assert _finest(w_mag, 32.0, grown.shift_w[0])
    assert grown.shift_w[0] == q.shift_w[0] - 3
    assert parse_spec(replace(spec, weight_growth=32.0).to_dict()).weight_growth == 32.0
    assert "weight_growth" not in spec.to_dict()  # the default is not written
    with pytest.raises(SpecError, match=r"weight_growth: 0.5 outside \[1, 1024\]"):
        parse_spec(dict(spec.to_dict(), weight_growth=0.5))


def test_logit_range_sets_the_softmax_z_format():
    spec, X, T, Ws, Bs = _iris_calibrated()
    q = quantize(spec, Ws, Bs, X, T)
    assert spec.logit_range is None and spec.logit_k == q.logit_k == 0
    assert "logit_range" not in spec.to_dict()
    for r, k in ((8, 0), (16, 1), (32, 2), (64, 3)):
        wide = replace(spec, logit_range=r)
        assert parse_spec(wide.to_dict()).logit_range == r
        qw = quantize(wide, Ws, Bs, X, T)
        assert qw.logit_k == k and qw.shift_z(1) == 12 - k
        # the same weights in the same formats: only the output's z is coarser
        assert (qw.shift_w, qw.shift_a, qw.shift_d) == (q.shift_w, q.shift_a, q.shift_d)
        assert qw.build().s_f[1] == q.build().s_f[1] + k
    # dynamic weight formats widen the logits by default
    dyn = parse_spec(dict(spec.to_dict(), weight_formats="dynamic"))
    assert dyn.logit_range is None and dyn.logit_k == 1
    assert parse_spec(dict(dyn.to_dict(), logit_range=8)).logit_k == 0
    with pytest.raises(SpecError, match=r"logit_range: 12: expected one of 8, 16, 32, 64"):
        parse_spec(dict(spec.to_dict(), logit_range=12))
    with pytest.raises(SpecError, match=r"logit_range: is for a softmax output"):
        parse_spec(dict(regression(), logit_range=16))


class _ErrorPeaks:
    """The core's kernels, recording the largest |W^T delta| each hidden delta buffer is
    given before f' (the output of matvec_t)."""

    def __init__(self) -> None:
        self.peak: dict[int, int] = {}

    def __getattr__(self, name: str):
        return getattr(K, name)

    def matvec_t(self, W, d, n_in, n_out, k, s, e):
        K.matvec_t(W, d, n_in, n_out, k, s, e)
        self.peak[id(e)] = max(self.peak.get(id(e), 0), max(abs(v) for v in e))


def test_hidden_delta_format_holds_the_back_propagated_error():
    # sigmoid hidden units: f' <= 1/4, so the error W^T delta the core's delta buffer holds
    # before f' is larger than the delta; the format must fit it, not only the delta
    spec = make_spec(sizes=[6, 10, 8, 3], activations=["sigmoid", "sigmoid", "softmax"],
                     loss="softmax_ce", input_range={"min": -1, "max": 1}, batch_max=8)
    rng = np.random.default_rng(0)
    X, T = rng.uniform(-1, 1, (32, 6)), rng.integers(0, 3, 32)
    Ws, Bs = init_float_weights(spec)
    q = quantize(spec, Ws, Bs, X, T)
    ref = FloatNet(spec.sizes, spec.acts, spec.loss, Ws, Bs)
    ref.forward((X - q.in_offset) * q.in_scale)
    ref.backward(T)
    for l in range(q.L - 1):
        error, delta = np.abs(ref.error[l]).max(), np.abs(ref.delta[l]).max()
        assert error > 2 * delta  # sized from the delta alone, the error would saturate
        assert _finest(error, quantize_mod.D_HEADROOM, q.shift_d[l])
    # in the core, the back-propagated errors of the calibration batch do not saturate
    kern = _ErrorPeaks()
    net = q.build(kernels=kern)
    for x, t in zip(q.quantize_inputs(X), q.quantize_targets(T), strict=True):
        net.forward(array("h", x.astype("<i2").tobytes()))
        net.backward(array("h", t.astype("<i2").tobytes()))
    for l in range(q.L - 1):
        assert 0 < kern.peak[id(net.D[l])] < 32767


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


# -- Adam in the spec --


def _adam_spec(**opt):
    d = iris_like()
    d["optimizer"] = {"name": "adam", **opt}
    return d


def test_spec_takes_adam_with_its_defaults():
    spec = parse_spec(_adam_spec())
    assert (spec.optimizer, spec.beta1, spec.beta2, spec.lr) == ("adam", 0.9, 0.999, 0.01)
    assert spec.adam == adam_q(0.9, 0.999)
    assert parse_spec(dict(iris_like(), optimizer="adam")) == spec
    # SGD keeps its own default rate, and no Adam
    sgd = parse_spec(dict(iris_like(), optimizer={}))
    assert (sgd.optimizer, sgd.lr, sgd.adam) == ("sgd", 0.1, None)
    spec = parse_spec(_adam_spec(beta1=0.5, beta2=0.99, lr=0.003))
    assert (spec.beta1, spec.beta2, spec.lr) == (0.5, 0.99, 0.003)
    # to_dict and back
    assert parse_spec(json.loads(json.dumps(spec.to_dict()))) == spec
    assert parse_spec(json.loads(json.dumps(sgd.to_dict()))) == sgd


@pytest.mark.parametrize("opt,field,words", [
    ({"beta1": 1.0}, "optimizer.beta1", "[0, 1)"),
    ({"beta1": -0.1}, "optimizer.beta1", "[0, 1)"),
    ({"beta1": 0.9995}, "optimizer.beta1", "above 0.999"),
    ({"beta2": 1.0}, "optimizer.beta2", "[0, 1)"),
    ({"beta2": "high"}, "optimizer.beta2", "finite number"),
    ({"momentum": 0.9}, "optimizer.momentum", "Adam takes the place of momentum"),
])
def test_spec_refuses_bad_adam_settings(opt, field, words):
    with pytest.raises(SpecError) as err:
        parse_spec(_adam_spec(**opt))
    assert err.value.field == field and words in str(err.value)
    assert "\n" not in str(err.value)


def test_quantiser_carries_adam():
    spec = parse_spec(_adam_spec(beta1=0.8, beta2=0.99))
    Ws, Bs = init_float_weights(spec)
    q = quantize(spec, Ws, Bs)
    assert q.adam == adam_q(0.8, 0.99) and not q.momentum
    net = q.build(spec.hyper())
    assert (net.opt.c1, net.opt.c2) == q.adam
    # copies keep it
    assert requantize(q, Ws, Bs).adam == q.adam
    assert q.with_weights(net).adam == q.adam
    assert quantize(parse_spec(iris_like()), Ws, Bs).adam is None


# -- SDLM in the spec --


def _sdlm_spec(**opt):
    d = iris_like()
    d["optimizer"] = {"name": "sdlm", **opt}
    return d


def test_spec_takes_sdlm_with_its_defaults():
    spec = parse_spec(_sdlm_spec())
    assert (spec.optimizer, spec.mu, spec.gamma, spec.lr) == ("sdlm", 0.1, 0.05, 0.05)
    assert spec.adam is None and spec.sdlm == sdlm_q(0.1, 0.05, (), ())
    assert parse_spec(dict(iris_like(), optimizer="sdlm")) == spec
    spec = parse_spec(_sdlm_spec(mu=0.5, gamma=0.2, lr=0.003))
    assert (spec.mu, spec.gamma, spec.lr) == (0.5, 0.2, 0.003)
    assert parse_spec(json.loads(json.dumps(spec.to_dict()))) == spec
    assert parse_spec(dict(iris_like(), optimizer={})).sdlm is None


@pytest.mark.parametrize("opt,field,words", [
    ({"mu": 0}, "optimizer.mu", "positive"),
    ({"mu": -1}, "optimizer.mu", "positive"),
    ({"mu": 300}, "optimizer.mu", "outside 2**-30..255"),
    ({"gamma": 0}, "optimizer.gamma", "(0, 1]"),
    ({"gamma": 1.5}, "optimizer.gamma", "(0, 1]"),
    ({"gamma": "fast"}, "optimizer.gamma", "finite number"),
    ({"momentum": 0.9}, "optimizer.momentum", "SDLM takes the place of momentum"),
    ({"beta1": 0.9}, "optimizer.beta1", "only used with Adam"),
])
def test_spec_refuses_bad_sdlm_settings(opt, field, words):
    with pytest.raises(SpecError) as err:
        parse_spec(_sdlm_spec(**opt))
    assert err.value.field == field and words in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(SpecError, match="only used with SDLM"):
        parse_spec(dict(iris_like(), optimizer={"mu": 0.1}))


def test_quantiser_chooses_sdlm_formats_that_hold_the_calibration_curvature():
    # the formats come from the calibration samples: the board's curvature of each of them,
    # computed by the core, stays below half of int16 (the formats leave 4 times the largest
    # the float reference finds) and is not all rounded away
    spec = parse_spec(_sdlm_spec(mu=0.2, gamma=0.1))
    Ws, Bs = init_float_weights(spec)
    rng = np.random.default_rng(3)
    X = rng.uniform(spec.input_min, spec.input_max, (64, spec.sizes[0]))
    T = rng.integers(0, spec.sizes[-1], 64)
    q = quantize(spec, Ws, Bs, X, T)
    mu_m, mu_e, gamma, fc, fh = q.sdlm
    assert (mu_m, mu_e, gamma) == sdlm_q(0.2, 0.1, (), ())[:3] and not q.momentum
    assert len(fc) == len(fh) == spec.L and fc[-1] == 14
    net = q.build(spec.hyper())
    st = net.opt
    assert (st.mu_m, st.gamma, tuple(st.fh)) == (mu_m, gamma, fh)
    Xq, Tq = q.quantize_inputs(X), q.quantize_targets(T)
    top_h = [0] * spec.L
    for x, t in zip(Xq, Tq, strict=True):
        st.n = 0  # every sample's own curvature: the estimate is that sample's
        net.forward(array("h", x.tolist()))
        net.count = 0
        net.backward(array("h", t.tolist()))
        for l in range(spec.L):
            assert max(st.C[l]) < 16384, (l, max(st.C[l]))
            top_h[l] = max(top_h[l], max(st.HW[l]), max(st.HB[l]))
    assert all(16 <= h < 16384 for h in top_h), top_h


def test_quantiser_makes_a_format_coarser_for_a_large_mu():
    # mu = 200 does not fit Q14 (200 * 2**14 > 32767): the parameter formats hold it
    spec = parse_spec(_sdlm_spec(mu=200.0))
    q = quantize(spec, *init_float_weights(spec))
    assert all(200 * 2**f <= 32767 for f in q.sdlm[4])
    assert q.build(spec.hyper()).opt.mu == [200 << f for f in q.sdlm[4]]
