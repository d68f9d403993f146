"""Datasets and float weights as files (host/cli/data.py), and how `edgebp` reports bad ones."""

import subprocess
import sys

import numpy as np
import pytest

from edgebp import fixed
from edgebp.host.cli import data, parser as cli, workload
from edgebp.host.nets.quantize import requantize
from edgebp.host.nets.spec import make_spec

SPEC = ('{"sizes": [3, 4, 2], "activations": ["relu", "softmax"], "loss": "softmax_ce", '
        '"input_range": {"min": 0, "max": 3}}')


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- reading --


def test_csv_with_header_last_column_is_the_label(tmp_path):
    ds = data.read(write(tmp_path, "d.csv", "a,b,label\n1,2,0\n\n# a comment\n3,4.5,1\n"))
    assert ds.X.tolist() == [[1, 2], [3, 4.5]]
    assert ds.y.tolist() == [[0], [1]]
    assert ds.lines.tolist() == [2, 5]
    assert ds.where(1, 1) == f"{ds.name} line 5, column 2 (b)"


def test_csv_without_header(tmp_path):
    ds = data.read(write(tmp_path, "d.csv", "1,2,0\n3,4,1\n"))
    assert ds.X.tolist() == [[1, 2], [3, 4]] and ds.columns == []
    assert ds.where(0, 0, target=True) == f"{ds.name} line 1, column 3"


@pytest.mark.parametrize("column", ["1", "-3", "label"])
def test_label_column_by_number_or_name(tmp_path, column):
    ds = data.read(write(tmp_path, "d.csv", "label,a,b\n0,1,2\n1,3,4\n"), column)
    assert ds.y[:, 0].tolist() == [0, 1]
    assert ds.X.tolist() == [[1, 2], [3, 4]]


def test_several_target_columns(tmp_path):
    ds = data.read(write(tmp_path, "d.csv", "a,t1,t2\n1,0.5,1\n2,0,0.25\n"), n_targets=2)
    assert ds.X.tolist() == [[1], [2]] and ds.y.tolist() == [[0.5, 1], [0, 0.25]]


def test_class_names_become_indices(tmp_path):
    path = write(tmp_path, "d.csv", "x,kind\n1,dog\n2,cat\n3,dog\n")
    ds = data.read(path)
    assert ds.classes == ["cat", "dog"] and ds.y[:, 0].tolist() == [1, 0, 1]
    ds = data.read(path, classes=["dog", "cat"])
    assert ds.y[:, 0].tolist() == [0, 1, 0]
    with pytest.raises(data.DataError, match=r"line 3, column 2 \(kind\): 'cat' is not a"):
        data.read(path, classes=["dog", "bird"])


@pytest.mark.parametrize("text, message", [
    ("a,b,y\n1,2,0\n1,nan,1\n", r"d.csv line 3, column 2 \(b\): 'nan' is not a finite number"),
    ("a,b,y\n1,2,0\n1,inf,1\n", r"d.csv line 3, column 2 \(b\): 'inf' is not a finite number"),
    ("a,b,y\n1,2,0\n1,2\n", r"d.csv line 3: 2 columns, expected 3 \(as the header has\)"),
    ("1,2,0\n1,2,3,4\n", r"d.csv line 2: 4 columns, expected 3 \(as line 1 has\)"),
    ("1,2,0\n1,x,1\n", r"d.csv line 2, column 2: 'x' is not a number"),
    ("", r"d.csv: no samples \(the file is empty\)"),
    ("a,b,y\n", r"d.csv: no samples after the header line"),
    ("7\n8\n", r"d.csv: 1 columns leave no input column"),
])
def test_bad_csv(tmp_path, text, message):
    with pytest.raises(data.DataError, match=message):
        data.read(write(tmp_path, "d.csv", text))


def test_bad_label_column(tmp_path):
    path = write(tmp_path, "d.csv", "a,b,y\n1,2,0\n")
    with pytest.raises(data.DataError, match="no column named 'z'"):
        data.read(path, "z")
    with pytest.raises(data.DataError, match="label column 4 does not exist"):
        data.read(path, "4")


def test_npz(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, X=np.arange(6).reshape(3, 2), y=np.array([0, 1, 0]))
    ds = data.read(path)
    assert ds.X.shape == (3, 2) and ds.y.tolist() == [[0], [1], [0]]
    assert ds.where(2, 1) == f"{path}: X[2, 1]" and ds.where(2, 0, True) == f"{path}: y[2]"


@pytest.mark.parametrize("arrays, message", [
    (dict(X=np.zeros((3, 2)), t=np.zeros(3)), r"no array y \(it holds X, t\)"),
    (dict(X=np.zeros((3, 2)), y=np.zeros(2)), "3 inputs in X but 2 targets in y"),
    (dict(X=np.array([[1.0, np.nan]]), y=np.zeros(1)), r"X\[0, 1\] is nan"),
    (dict(X=np.zeros((0, 2)), y=np.zeros(0)), "no samples"),
])
def test_bad_npz(tmp_path, arrays, message):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(data.DataError, match=message):
        data.read(path)


def test_not_an_npz(tmp_path):
    with pytest.raises(data.DataError, match="not a readable .npz file"):
        data.read(write(tmp_path, "d.npz", "hello"))


# -- checks against a net --


def test_class_labels_checked_against_the_outputs(tmp_path):
    ds = data.read(write(tmp_path, "d.csv", "a,y\n1,0\n2,3\n"))
    data.check_targets(ds, fixed.SOFTMAX_CE, 4)
    with pytest.raises(data.DataError, match=r"line 3, column 2 \(y\): class 3 outside 0..2"):
        data.check_targets(ds, fixed.SOFTMAX_CE, 3)
    data.check_targets(ds, fixed.MSE, 1, out_shift=13)  # Q13 holds up to 4
    with pytest.raises(data.DataError, match=r"line 3, column 2 \(y\): target 3 does not fit "
                       r"the output format Q14 \(\|t\| <= 2\)"):
        data.check_targets(ds, fixed.MSE, 1, out_shift=14)
    ds.y[1, 0] = 0.5
    with pytest.raises(data.DataError, match="class 0.5 is not a whole number"):
        data.check_targets(ds, fixed.SOFTMAX_CE, 3)
    ds.y[1, 0] = 1.5
    with pytest.raises(data.DataError, match=r"target 1.5 outside \[0, 1\]"):
        data.check_targets(ds, fixed.BCE, 1)


def test_inputs_outside_the_declared_range(tmp_path):
    path = write(tmp_path, "d.csv", "a,b,y\n0,1,0\n5,1,0\n-1,9,1\n")
    lo, hi = np.array([0.0, 0.0]), np.array([4.0, 2.0])
    ds = data.read(path)
    note = data.check_inputs(ds, lo, hi, "warn")
    assert note.startswith("3 input values outside the declared input range, the first at ")
    assert "line 3, column 1 (a): 5 above 4; kept" in note
    assert ds.X.max() == 9
    note = data.check_inputs(ds, lo, hi, "clip")
    assert note.startswith("clipped 3 input values")
    assert ds.X.tolist() == [[0, 1], [4, 1], [0, 2]]
    with pytest.raises(data.DataError, match="line 4, column 1 .*-1 below 0"):
        data.check_inputs(data.read(path), lo, np.array([9.0, 9.0]), "error")


def test_float_weights_round_trip(tmp_path):
    spec = make_spec(sizes=[3, 5, 2], activations=["tanh", "softmax"], loss="softmax_ce",
                     input_range={"min": [0, -1, 10], "max": [1, 1, 20]})
    qnet = workload.quantize_spec(spec)
    path = tmp_path / "w.npz"
    data.save_weights(path, qnet)
    Ws, Bs = data.load_weights(path, qnet.sizes)
    back = requantize(qnet, Ws, Bs, raw_inputs=True)
    for a, b in zip(qnet.W + qnet.B, back.W + back.B, strict=True):
        assert np.array_equal(a, b)
    np.savez(tmp_path / "u.npz", W0=Ws[0], B0=Bs[0])
    with pytest.raises(data.DataError, match=r"no array W1 \(layer 2 of a 3-5-2 net\)"):
        data.load_weights(tmp_path / "u.npz", qnet.sizes)
    np.savez(tmp_path / "v.npz", W0=Ws[0], B0=Bs[0], W1=Ws[1].T, B1=Bs[1])
    with pytest.raises(data.DataError, match=r"W1 has shape \(5, 2\), layer 2 needs \(2, 5\)"):
        data.load_weights(tmp_path / "v.npz", qnet.sizes)


def test_inferred_specs(tmp_path):
    ds = data.read(write(tmp_path, "c.csv", "a,b,y\n1,2,0\n1,4,2\n"))
    d = data.infer_spec(ds, [8])
    assert d["sizes"] == [2, 8, 3] and d["loss"] == "softmax_ce"
    assert d["input_range"] == {"min": [0.0, 2.0], "max": [2.0, 4.0]}  # a constant input widened
    ds = data.read(write(tmp_path, "r.csv", "a,y\n1,0.5\n2,-1.5\n"))
    d = data.infer_spec(ds, [4, 4])
    assert d["sizes"] == [1, 4, 4, 1] and d["loss"] == "mse"
    assert d["target_range"] == {"min": -1.5, "max": 0.5}


# -- as the command reports them --


@pytest.mark.parametrize("rows, words", [
    ("1,2,0\n1,nan,1\n", ["bad.csv line 3, column 2 (b)", "'nan' is not a finite number"]),
    ("1,2,0\n1,2\n", ["bad.csv line 3", "2 columns, expected 3"]),
    ("1,2,0\n1,2,2\n", ["bad.csv line 3, column 3 (y)", "class 2 outside 0..1"]),
    ("1,2,0\n1,two,1\n", ["bad.csv line 3, column 2 (b)", "'two' is not a number"]),
    ("1,2,0\n1,2,-1\n", ["bad.csv line 3, column 3 (y)", "class -1 outside 0..1"]),
])
@pytest.mark.parametrize("command", ["train", "eval", "check"])
def test_bad_rows_are_one_line_and_exit_2(tmp_path, capsys, rows, words, command):
    spec = ('{"sizes": [2, 3, 2], "activations": ["relu", "softmax"], "loss": "softmax_ce", '
            '"input_range": {"min": 0, "max": 3}}')
    args = [command, "--spec", write(tmp_path, "s.json", spec),
            "--data", write(tmp_path, "bad.csv", "a,b,y\n" + rows)]
    assert cli.main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("edgebp: ") and captured.err.count("\n") == 1
    for w in words:
        assert w in captured.err


def test_no_traceback_from_the_command(tmp_path):
    args = ["train", "--data", write(tmp_path, "bad.csv", "a,b,y\n1,2,0\n1,nan,1\n")]
    done = subprocess.run([sys.executable, "-m", "edgebp.host.cli", *args],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"edgebp: {args[-1]} line 3, column 2 (b): 'nan' is not a finite number"]


def test_out_of_range_inputs_warn_clip_or_refuse(tmp_path, capsys):
    spec = write(tmp_path, "s.json", SPEC)
    csv_path = write(tmp_path, "d.csv", "a,b,c,y\n1,2,3,0\n1,2,9,1\n")
    base = ["train", "--spec", spec, "--data", csv_path, "--epochs", "1"]
    assert cli.main(base) == 0
    err = capsys.readouterr().err
    assert err.startswith("edgebp: warning: 1 input value outside the declared input range")
    assert "line 3, column 3 (c): 9 above 3; kept, but 1 lies beyond" in err
    assert cli.main(base + ["--out-of-range", "clip"]) == 0
    assert capsys.readouterr().err.startswith("edgebp: warning: clipped 1 input value")
    assert cli.main(base + ["--out-of-range", "error"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "(--out-of-range clip or warn to go on)" in err
