"""Regression through the command line alone: a continuous target in the hundreds
(scikit-learn's diabetes, targets 25..346, examples/data/diabetes_*.csv) trains on a simulated
board and reports RMSE and R^2 within 1% of the float64 reference trained the same way (same
start, same sample order, same steps: host/nets/train.py), the reference's figures computed
here with numpy from its predictions in the targets' own units."""

import contextlib
import csv
import io
import re

import numpy as np
import pytest

from conftest import REPO
from edgebp.host.cli import parser as cli
from edgebp.host.nets import ebpfile
from edgebp.host.nets.train import train_float
from edgebp.host.nets.twin import TwinNet

DATA = REPO / "examples" / "data"
TRAIN, TEST = str(DATA / "diabetes_train.csv"), str(DATA / "diabetes_test.csv")
EPOCHS = 20


def run(capsys, *args):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def load(path):
    """(inputs, target) of a diabetes CSV, read with numpy alone."""
    a = np.loadtxt(path, delimiter=",", skiprows=1)
    return a[:, :-1], a[:, -1]


def rmse_r2(pred, t):
    err = pred - t
    return np.sqrt(np.mean(err**2)), 1 - np.sum(err**2) / np.sum((t - t.mean()) ** 2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """init, quantize, train with held-out data, eval: what a user types."""
    tmp = tmp_path_factory.mktemp("regression")
    out = {}

    def cmd(*args):  # capsys is per test: this fixture serves the module
        buf_out, buf_err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
            code = cli.main([str(a) for a in args])
        assert code == 0, buf_err.getvalue()
        return buf_out.getvalue()

    out["init"] = cmd("init", tmp / "d.json", "--data", TRAIN)
    out["quantize"] = cmd("quantize", tmp / "d.json", "-o", tmp / "net.ebp", "--calib", TRAIN)
    out["train"] = cmd("train", "--net", tmp / "net.ebp", "--data", TRAIN, "--val", TEST,
                       "--epochs", EPOCHS, "-o", tmp / "t.ebp", "-o", tmp / "t.npz",
                       "--curves", tmp / "c.csv")
    out["eval"] = cmd("eval", "--net", tmp / "t.ebp", "--data", TEST)
    return tmp, out


def test_init_infers_a_regression_and_says_so(trained):
    _, out = trained
    assert "task      regression, inferred from the targets: " in out["init"]
    assert "whole numbers from 25 to 346: too many for class indices" in out["init"]
    assert "targets   25 to 346, mapped to [-1, 1] inside the net" in out["init"]
    assert "10-16-1 tanh/identity, mse loss" in out["init"]


def test_rmse_and_r2_within_one_percent_of_the_float_reference(trained):
    tmp, out = trained
    qnet, hyper = ebpfile.read(tmp / "net.ebp")  # the start both nets train from
    X, t = load(TRAIN)
    Xv, tv = load(TEST)
    # the declared ranges are the training data's: inputs and targets mapped to [-1, 1]
    lo, hi = X.min(axis=0), X.max(axis=0)
    t_lo, t_hi = t.min(), t.max()
    assert (t_lo, t_hi) == (25, 346)
    normal = lambda A: (A - (lo + hi) / 2) * (2 / (hi - lo))  # noqa: E731
    t_centre, t_scale = (t_lo + t_hi) / 2, 2 / (t_hi - t_lo)
    ref = train_float(qnet, hyper, normal(X), ((t - t_centre) * t_scale)[:, None], EPOCHS,
                      hyper.seed)
    ref_rmse, ref_r2 = rmse_r2(ref.net.forward(normal(Xv))[:, 0] / t_scale + t_centre, tv)
    assert 40 < ref_rmse < 80 and 0.3 < ref_r2 < 0.6  # a fit, not a constant

    held = re.search(r"^held out  88 samples: loss [\d.]+, RMSE ([\d.]+), R\^2 ([\d.]+)$",
                     out["train"], re.M)
    assert held, out["train"]
    rmse, r2 = float(held[1]), float(held[2])
    assert rmse == pytest.approx(ref_rmse, rel=0.01)
    assert r2 == pytest.approx(ref_r2, rel=0.01)
    ev = re.search(r"^loss [\d.]+, RMSE ([\d.]+), R\^2 ([\d.]+) \(88 samples", out["eval"], re.M)
    assert ev and (float(ev[1]), float(ev[2])) == (rmse, r2)

    # the training columns are the float reference's too (loss measured before each step)
    rows = list(csv.DictReader((tmp / "c.csv").open()))
    assert len(rows) == EPOCHS and "accuracy" not in rows[0] and "val_accuracy" not in rows[0]
    ref_train_rmse = np.sqrt(2 * ref.history.loss[-1]) / t_scale
    assert float(rows[-1]["rmse"]) == pytest.approx(ref_train_rmse, rel=0.01)
    assert float(rows[-1]["val_rmse"]) == pytest.approx(rmse, abs=0.005)


def test_the_written_float_weights_predict_in_the_targets_units(trained):
    tmp, out = trained
    held = re.search(r"RMSE ([\d.]+), R\^2 ([\d.]+)$", out["train"], re.M)
    w = np.load(tmp / "t.npz")
    Xv, tv = load(TEST)
    pred = (w["W1"] @ np.tanh(w["W0"] @ Xv.T + w["B0"][:, None]) + w["B1"][:, None])[0]
    rmse, r2 = rmse_r2(pred, tv)  # float arithmetic on the board's weights: close to the core's
    assert rmse == pytest.approx(float(held[1]), rel=0.01)
    assert r2 == pytest.approx(float(held[2]), rel=0.01)
    # the core's own outputs (the twin is bit-identical to it), in the targets' units
    qnet, hyper = ebpfile.read(tmp / "t.ebp")
    ev = TwinNet.from_qnet(qnet, hyper).evaluate(qnet.quantize_inputs(Xv),
                                                 qnet.quantize_targets(tv[:, None]))
    pred = qnet.output_values(np.asarray(ev.output).reshape(len(tv), 1))[:, 0]
    rmse, r2 = rmse_r2(pred, tv)  # the board reports them from its loss, rounded per sample
    assert rmse == pytest.approx(float(held[1]), rel=1e-3)
    assert r2 == pytest.approx(float(held[2]), abs=1e-3)


def test_the_float_weights_go_back_to_the_same_int16_weights(trained, capsys):
    tmp, _ = trained
    run(capsys, "quantize", tmp / "t.ebp", "--weights", tmp / "t.npz", "-o", tmp / "again.ebp")
    a, b = ebpfile.read(tmp / "t.ebp")[0], ebpfile.read(tmp / "again.ebp")[0]
    assert a.out_scale == b.out_scale == 2 / 321 and list(a.out_offset) == [185.5]
    for x, y in zip(a.W + a.B, b.W + b.B, strict=True):
        assert np.array_equal(x, y)


def test_no_accuracy_column_for_a_regression(trained):
    _, out = trained
    head = next(ln for ln in out["train"].splitlines() if ln.lstrip().startswith("epoch"))
    assert head.split() == ["epoch", "loss", "RMSE", "R^2", "val", "loss", "val", "RMSE",
                            "val", "R^2"]
    assert "accuracy" not in out["train"] and "accuracy" not in out["eval"]


def test_sizes_and_mse_with_targets_in_the_hundreds(tmp_path, capsys):
    out = run(capsys, "init", tmp_path / "s.json", "--data", TRAIN, "--sizes", "10,16,1",
              "--loss", "mse")
    assert "task      regression, as --loss mse says" in out
    run(capsys, "quantize", tmp_path / "s.json", "-o", tmp_path / "s.ebp", "--calib", TRAIN)
    out = run(capsys, "train", "--net", tmp_path / "s.ebp", "--data", TRAIN, "--epochs", "1")
    assert re.search(r"^ +1 +[\d.]+ +[\d.]+ +-?[\d.]+$", out, re.M), out


def test_train_infers_a_regression_from_the_data_alone(capsys):
    out = run(capsys, "train", "--data", TRAIN, "--epochs", "1")
    assert "net       10-16-1 tanh/identity, mse loss, 193 parameters (regression, inferred: " \
           "193 distinct whole numbers from 25 to 346" in out


@pytest.mark.parametrize("args, words", [
    (["--task", "classification", "--loss", "mse"], "--task classification and --loss mse "
     "disagree"),
    (["--sizes", "10,16,2", "--loss", "mse"], "needs 1 output, not 2"),
])
def test_contradictions_are_refused(tmp_path, capsys, args, words):
    assert cli.main(["init", str(tmp_path / "s.json"), "--data", TRAIN, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err


def test_class_labels_are_still_inferred_as_classes(tmp_path, capsys):
    out = run(capsys, "init", tmp_path / "i.json", "--data", DATA / "iris_train.csv")
    assert "task      classification, inferred from the targets: class indices: whole " \
           "numbers 0..2; --task regression says otherwise" in out
    out = run(capsys, "init", tmp_path / "r.json", "--data", DATA / "iris_train.csv",
              "--task", "regression")
    assert "4-16-1 tanh/identity, mse loss" in out
