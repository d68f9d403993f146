"""Swish and mish in the core: their tables, the derived error bounds against the error
measured at every int16 input, the formats the loader and the quantiser give them, and
gradient validation (edgebp check) of nets with swish and with mish hidden layers."""

from __future__ import annotations

import json
from array import array
from pathlib import Path

import numpy as np
import pytest

from conftest import require_runtime
from edgebp import fixed, kernels as K, luts, luts_act
from edgebp.host.boards import mprun
from edgebp.host.cli import parser as cli
from edgebp.host.nets import actbounds as B, tables, validate as V
from edgebp.host.nets.quantize import RangeError, quantize
from edgebp.host.nets.reference import act_derivative, act_forward, act_second_derivative
from edgebp.host.nets.spec import init_float_weights, make_spec
from edgebp.net import Net
from floatinit import random_case, sample_batch

CORE = Path(fixed.__file__).resolve().parent
GATED = [fixed.SWISH, fixed.MISH]
IDS = ["swish", "mish"]
Z = np.arange(-32767, 32768)  # every z the core's Q12 format holds
ZF = Z / 4096


def test_generated_tables_are_current():
    assert (CORE / "luts.py").read_text() == tables.render()
    assert (CORE / "luts_act.py").read_text() == tables.render_act()


def test_codes_follow_softmax():
    assert fixed.ACT_NAMES.index("swish") == fixed.SWISH == 6
    assert fixed.ACT_NAMES.index("mish") == fixed.MISH == 7


# -- the closed forms behind the bounds --


@pytest.mark.parametrize("kind", GATED, ids=IDS)
def test_closed_forms_match_finite_differences(kind):
    z = np.linspace(-8, 8, 2001)
    h = 1e-4
    gate = B.gate(kind, z)
    assert np.allclose(z * gate, act_forward(kind, z, 0.0), rtol=1e-13, atol=1e-15)
    g2 = (B.gate(kind, z + h) - 2 * gate + B.gate(kind, z - h)) / h**2
    assert np.allclose(B.gate_second(kind, z), g2, atol=1e-6)
    f2 = lambda v: act_second_derivative(kind, v, None, 0.0)  # noqa: E731
    f3 = (f2(z + h) - f2(z - h)) / (2 * h)
    assert np.allclose(B.third(kind, z), f3, atol=1e-7)


# -- bounds against the error measured over every int16 input --


def _measured(kind):
    a = array("h", bytes(2 * len(Z)))
    K.act_fwd(kind, array("h", Z.tolist()), a, len(Z), 0)
    fwd = np.abs(np.array(a) - 4096 * act_forward(kind, ZF, 0.0)).max()
    T = luts_act.SWISH_D if kind == fixed.SWISH else luts_act.MISH_D
    fp = np.array([K._lut(T, int(v)) for v in Z])
    der = np.abs(fp - 16384 * act_derivative(kind, ZF, None, 0.0)).max()
    return fwd, der


@pytest.mark.parametrize("kind", GATED, ids=IDS)
def test_measured_error_within_the_derived_bound(kind):
    fwd, der = _measured(kind)
    bound, d_bound = B.bounds(kind)
    assert fwd <= bound and der <= d_bound
    # the bounds are the error, not far above it: within the roundings they add
    assert bound - fwd < 1.0 and d_bound - der < 1.0
    assert V.GATED_BOUND[kind] == bound and V.GATED_D_BOUND[kind] == d_bound


@pytest.mark.parametrize("kind", GATED, ids=IDS)
def test_gate_table_within_its_bound(kind):
    T = luts.SIGMOID if kind == fixed.SWISH else luts_act.MISH_G
    g = np.array([K._lut(T, int(v)) for v in Z])
    err = np.abs(g - 16384 * B.gate(kind, ZF))
    per = B.gate_bounds(kind)[np.minimum((Z + 32768) >> 9, 127)]
    assert np.all(err <= per)


@pytest.mark.parametrize("kind", GATED, ids=IDS)
def test_delta_is_the_derivative_times_the_error(kind):
    # act_bwd over every z with a spread of errors: within the table's bound of e f'(z),
    # plus the rounding, and saturated where e f' leaves int16
    rng = np.random.default_rng(kind)
    e = rng.integers(-32767, 32768, len(Z))
    e[:64] = 32767
    d = array("h", bytes(2 * len(Z)))
    K.act_bwd(kind, array("h", e.tolist()), array("h", Z.tolist()), None, d, len(Z), 0)
    exact = e * act_derivative(kind, ZF, None, 0.0)
    err = np.abs(np.array(d) - np.clip(exact, -32767, 32767))
    assert np.all(err <= np.abs(e) / 16384 * B.bounds(kind)[1] + 0.5)
    assert np.abs(exact).max() > 32767 and np.abs(np.array(d)).max() == 32767


# -- formats: hidden layers, z and output in Q12 --


def _net(acts, shift_a):
    return Net([3, 4, 2], acts, shift_a, [12, 12], [12, 12], fixed.MSE)


@pytest.mark.parametrize("kind", GATED, ids=IDS)
def test_loader_takes_hidden_layers_in_q12_only(kind):
    net = _net([kind, fixed.IDENTITY], [14, 12, 12])
    assert net.shift_z[0] == 12
    name = fixed.ACT_NAMES[kind]
    with pytest.raises(ValueError, match=f"^layer 1: {name} output must be Q12$"):
        _net([kind, fixed.IDENTITY], [14, 10, 12])
    with pytest.raises(ValueError, match=f"^layer 2: {name} is for hidden layers only$"):
        _net([fixed.RELU, kind], [14, 12, 12])
    with pytest.raises(ValueError, match="^layer 1: unknown activation 8$"):
        _net([8, fixed.IDENTITY], [14, 12, 12])


def _spec(hidden, out="identity"):
    return make_spec(sizes=[4, 6, 5, 2], activations=[hidden, hidden, out], loss="mse",
                     input_range={"min": -1, "max": 1}, target_range={"min": -1, "max": 1},
                     optimizer={"lr": 0.05}, batch_max=4)


@pytest.mark.parametrize("name", IDS)
def test_quantiser_gives_hidden_layers_q12_and_refuses_an_output(name):
    spec = _spec(name)
    q = quantize(spec, *init_float_weights(spec))
    assert q.shift_a[1:3] == [12, 12]
    q.build()  # the core accepts the formats
    with pytest.raises(RangeError, match=f"^layer 3: {name} is for hidden layers only"):
        quantize(_spec(name, name), *init_float_weights(_spec(name, name)))


# -- gradient validation --


def _wrong_derivative(monkeypatch, kind):
    # the other activation's derivative table: off by up to 0.1 near z = -1
    other = luts_act.MISH_D if kind == fixed.SWISH else luts_act.SWISH_D
    monkeypatch.setattr(K, "SWISH_D" if kind == fixed.SWISH else "MISH_D", other)


@pytest.mark.parametrize("kind", GATED, ids=IDS)
def test_validation_passes_and_catches_a_wrong_derivative(kind, monkeypatch):
    q, X, T = random_case(kind, "identity", "mse", 3, sizes=(6, 10, 8, 3), n=32, batch_max=8)
    report = V.validate(q, X, T)
    assert report.ok, report.table()
    _wrong_derivative(monkeypatch, kind)
    assert not V.validate(q, X, T).ok


def _quantised_case(hidden):
    spec = _spec(hidden)
    X, T = sample_batch(spec.sizes, spec.acts, spec.loss_code, 32, np.random.default_rng(2))
    q = quantize(spec, *init_float_weights(spec), X, T)
    return q, q.quantize_inputs(X), q.quantize_targets(T)


def test_gradients_on_every_runtime(runtime):
    cases = [_quantised_case(h) for h in IDS]
    script = V.core_gradient_script_many(cases)
    result = mprun.run(runtime, script, mprun.core_files(), timeout=300)
    assert result.ok, f"{runtime} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    blocks = result.stdout.split("EDGEBP-END")[:-1]
    assert len(blocks) == len(cases)
    for (q, Xq, Tq), block in zip(cases, blocks, strict=True):
        GW, GB, count, _ = V.core_gradients(q, Xq, Tq)
        gw, gb, n, zs = V.parse_gradient_output(block + "EDGEBP-END")
        assert n == count
        assert all(np.array_equal(a, b) for a, b in zip(gw + gb, GW + GB, strict=True))
        report = V.compare_gradients(q, gw, gb, n, Xq, Tq, zs)
        assert report.ok, report.table()


@pytest.mark.parametrize("name", IDS)
def test_check_command_on_a_net_with_hidden(name, tmp_path, capsys):
    require_runtime("unix")
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps({
        "sizes": [4, 8, 6, 2], "activations": [name, name, "identity"], "loss": "mse",
        "input_range": {"min": -1, "max": 1}, "target_range": {"min": -1, "max": 1},
        "init_seed": 4}))
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "d.npz", X=rng.uniform(-1, 1, (24, 4)), y=rng.uniform(-1, 1, (24, 2)))
    net = tmp_path / "n.ebp"
    assert cli.main(["quantize", str(spec), "-o", str(net), "--calib",
                     str(tmp_path / "d.npz")]) == 0
    for where in ([], ["--sim", "micropython"]):
        capsys.readouterr()
        got = cli.main(["check", "--net", str(net), "--data", str(tmp_path / "d.npz"),
                        "--samples", "24", *where])
        out = capsys.readouterr().out
        assert got == 0, out
        assert "equal the core's (CPython), bit for bit" in out or not where
        assert out.splitlines()[-1].startswith("gradients agree"), out
