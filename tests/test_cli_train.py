"""`edgebp train`: the built-in XOR run, training over a simulated board, what it writes, and
that its numbers are those of the integer twin trained in the same order."""

import csv
import re

import numpy as np
import pytest

from conftest import REPO, require_runtime
from edgebp.host.cli import data, parser as cli
from edgebp.host.cli.progress import Bar
from edgebp.host.nets import ebpfile
from edgebp.host.nets.reference import epoch_order
from edgebp.host.nets.twin import TwinNet

IRIS = str(REPO / "examples" / "data" / "iris.csv")


def run(capsys, *args):
    code = cli.main(list(args))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def epoch_rows(out: str) -> list[str]:
    return re.findall(r"^ +\d+ +[\d.]+ +[\d.]+%.*$", out, re.M)


def test_train_with_no_arguments_learns_xor(capsys):
    out = run(capsys, "train")
    assert "built-in XOR" in out and "simulated in this process" in out
    table = out[out.index("x1  x2  target  output"):].splitlines()[1:5]
    for row in table:
        x1, x2, target, output = (float(v) for v in row.split())
        assert target == float(int(x1) ^ int(x2))
        assert (output > 0.5) == (target == 1)
    assert epoch_rows(out)[-1].split()[2] == "100.0%"


def test_train_matches_the_twin_in_the_same_order(tmp_path, capsys):
    """The board's weights after 3 epochs are those of the twin (bit-identical to the core)
    trained on the same net, data and epoch_order, with the partial batch of each epoch
    applied at its end."""
    spec = tmp_path / "s.json"
    net = tmp_path / "net.ebp"
    run(capsys, "init", str(spec), "--data", IRIS, "--hidden", "8")
    run(capsys, "quantize", str(spec), "-o", str(net), "--calib", IRIS)
    out = run(capsys, "train", "--net", str(net), "--data", IRIS, "--epochs", "3",
              "--batch", "7", "--seed", "5", "-o", str(tmp_path / "t.ebp"))
    qnet, hyper = ebpfile.read(net)
    hyper.batch, hyper.seed = 7, 5
    twin = TwinNet.from_qnet(qnet, hyper)
    ds = data.read(IRIS)
    Xq, Tq = qnet.quantize_inputs(ds.X), qnet.quantize_targets(ds.y[:, 0])
    rows = epoch_rows(out)
    assert len(rows) == 3
    for epoch in range(3):
        losses = twin.train_epoch(Xq, Tq, epoch_order(len(ds), 5, epoch))
        twin.update()
        assert rows[epoch].split()[1] == f"{losses.mean() / 4096:.4f}"
    trained, _ = ebpfile.read(tmp_path / "t.ebp")
    expected = twin.to_qnet(qnet)
    for a, b in zip(trained.W + trained.B, expected.W + expected.B, strict=True):
        assert np.array_equal(a, b)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, capsys):
    def weights(*extra):
        path = tmp_path / "w.ebp"
        run(capsys, "train", "--data", IRIS, "--epochs", "2", "-o", str(path), *extra)
        return ebpfile.read(path)[0].W[0]

    a = weights("--seed", "3")
    assert np.array_equal(a, weights("--seed", "3"))
    assert not np.array_equal(a, weights("--seed", "4"))
    assert not np.array_equal(a, weights("--no-shuffle"))


def test_micropython_board_trains_bit_identically(tmp_path, capsys):
    """Acceptance: the same run on MicroPython (the firmware in a unix MicroPython process)
    and on the in-process simulator gives the same losses, accuracies and weights."""
    require_runtime("unix")
    outs = {}
    for kind in ("inprocess", "micropython"):
        outs[kind] = run(capsys, "train", "--sim", kind, "--data", IRIS, "--epochs", "4",
                         "--seed", "2", "-o", str(tmp_path / f"{kind}.ebp"))
    assert "micropython" in outs["micropython"].splitlines()[0]
    assert epoch_rows(outs["inprocess"]) == epoch_rows(outs["micropython"])
    assert len(epoch_rows(outs["inprocess"])) == 4
    assert ((tmp_path / "inprocess.ebp").read_bytes()
            == (tmp_path / "micropython.ebp").read_bytes())


def test_outputs_curves_and_held_out_data(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    train = str(REPO / "examples" / "data" / "iris_train.csv")
    test = str(REPO / "examples" / "data" / "iris_test.csv")
    ebp, npz, curves = tmp_path / "t.ebp", tmp_path / "t.npz", tmp_path / "c.csv"
    out = run(capsys, "train", "--data", train, "--val", test, "--epochs", "3", "-o", str(ebp),
              "-o", str(npz), "--curves", str(curves), "--plot")
    rows = list(csv.DictReader(curves.open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert set(rows[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"}
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    held = re.search(r"held out  30 samples: loss ([\d.]+), accuracy ([\d.]+)%", out)
    assert held and float(held.group(2)) == pytest.approx(100 * float(rows[-1]["val_accuracy"]),
                                                          abs=0.05)

    # what eval says of the written net is what the twin computes for it
    qnet, _ = ebpfile.read(ebp)
    ds = data.read(test)
    twin = TwinNet.from_qnet(qnet).evaluate(qnet.quantize_inputs(ds.X),
                                            qnet.quantize_targets(ds.y[:, 0]))
    out = run(capsys, "eval", "--net", str(ebp), "--data", test)
    assert f"({int(twin.correct.sum())} of 30)" in out

    # the float weights are the dequantised trained net
    Ws, _ = data.load_weights(npz, qnet.sizes)
    assert np.allclose(Ws[1], qnet.W[1] * 2.0 ** -qnet.shift_w[1])


def test_output_names_are_checked_before_training(tmp_path, capsys):
    assert cli.main(["train", "-o", str(tmp_path / "t.txt")]) == 2
    assert "--out must end in .ebp or .npz" in capsys.readouterr().err
    assert cli.main(["train", "--plot"]) == 2
    assert "--plot needs --curves FILE.csv" in capsys.readouterr().err


def test_net_needs_data_and_rejects_settings_it_cannot_take(tmp_path, capsys):
    net = tmp_path / "net.ebp"
    run(capsys, "train", "--epochs", "1", "-o", str(net))
    assert cli.main(["train", "--net", str(net)]) == 2
    assert "--net needs --data" in capsys.readouterr().err
    xor = str(REPO / "examples" / "data" / "xor.csv")
    assert cli.main(["train", "--net", str(net), "--data", xor, "--batch", "5"]) == 2
    assert "batch 5 exceeds batch_max 4" in capsys.readouterr().err


def test_progress_bar_draws_only_where_asked():
    import io

    t = [0.0]
    stream = io.StringIO()
    bar = Bar(3, stream, enabled=True, clock=lambda: t[0])
    bar.begin_epoch(0)
    t[0] = 1.0
    bar.update(10, 20)
    assert stream.getvalue().startswith("\repoch 1/3 [############............] 10/20")
    assert stream.getvalue().endswith("  10 samples/s")
    bar.end_epoch(20, 0.5, 0.75)
    bar.begin_epoch(1)
    t[0] = 2.0
    bar.update(20, 20)
    assert "loss 0.5000  acc  75.0%  20 samples/s" in stream.getvalue()
    bar.clear()
    assert stream.getvalue().endswith("\r")
    quiet = io.StringIO()
    bar = Bar(3, quiet, enabled=False)
    bar.update(1, 2)
    bar.clear()
    assert quiet.getvalue() == ""


def test_a_checkpoint_the_board_cannot_write_ends_training_in_one_line(capsys, monkeypatch):
    from edgebp import ckpt

    real = ckpt.save
    calls = []

    def save(*args, **kw):
        # the simulated board's filesystem fills up after the checkpoint train starts with
        calls.append(1)
        if len(calls) > 1:
            raise OSError(28, "ENOSPC")
        return real(*args, **kw)

    monkeypatch.setattr(ckpt, "save", save)
    code = cli.main(["train", "--data", IRIS, "--epochs", "2", "--batch", "2",
                     "--checkpoint-every", "5"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    # batch 2: the fifth update follows the tenth sample
    assert "could not write its automatic checkpoint" in line and "learned 10 of" in line, line
    assert "--resume" in line


# -- Adam --


def test_train_with_adam_learns_xor(capsys, tmp_path):
    out = run(capsys, "train", "--optimizer", "adam", "-o", str(tmp_path / "xor.ebp"))
    # Adam's default rate when none is given, its betas as the board applies them
    assert "Adam (beta1 0.9, beta2 0.999), lr 0.01" in out
    table = out[out.index("x1  x2  target  output"):].splitlines()[1:5]
    for row in table:
        x1, x2, target, output = (float(v) for v in row.split())
        assert (output > 0.5) == (target == 1)
    q, hyper = ebpfile.read(tmp_path / "xor.ebp")
    assert q.adam == (3277, 33) and hyper.lr == 0.01 and not q.momentum


def test_adam_board_run_matches_the_core(tmp_path, capsys):
    """An Adam net trained through the simulated board ends with the weights of the core Net
    trained in the same order (the same update, M and V carried across epochs)."""
    from array import array

    spec = tmp_path / "s.json"
    net = tmp_path / "net.ebp"
    run(capsys, "init", str(spec), "--data", IRIS, "--hidden", "8", "--optimizer", "adam",
        "--beta1", "0.8")
    assert '"name": "adam"' in spec.read_text() and '"beta1": 0.8' in spec.read_text()
    run(capsys, "quantize", str(spec), "-o", str(net), "--calib", IRIS)
    run(capsys, "train", "--net", str(net), "--data", IRIS, "--epochs", "2", "--batch", "7",
        "--seed", "5", "-o", str(tmp_path / "t.ebp"))
    qnet, hyper = ebpfile.read(net)
    assert qnet.adam is not None
    hyper.batch, hyper.seed = 7, 5
    core = qnet.build(hyper)
    ds = data.read(IRIS)
    Xq, Tq = qnet.quantize_inputs(ds.X), qnet.quantize_targets(ds.y[:, 0])
    for epoch in range(2):
        for i in epoch_order(len(ds), 5, epoch):
            core.learn(array("h", Xq[i].tolist()), array("h", Tq[i].tolist()))
        core.update()  # the partial batch at the end of an epoch
    trained, _ = ebpfile.read(tmp_path / "t.ebp")
    assert trained.adam == qnet.adam
    for l in range(qnet.L):
        assert trained.W[l].ravel().tolist() == list(core.W[l])
        assert trained.B[l].tolist() == list(core.B[l])


def test_optimizer_switches_on_a_net_file(tmp_path, capsys):
    spec = tmp_path / "s.json"
    net = tmp_path / "net.ebp"
    run(capsys, "init", str(spec), "--data", IRIS, "--hidden", "4", "--momentum", "0.5")
    run(capsys, "quantize", str(spec), "-o", str(net), "--calib", IRIS)
    out = run(capsys, "train", "--net", str(net), "--data", IRIS, "--epochs", "1",
              "--optimizer", "adam", "--beta2", "0.99", "-o", str(tmp_path / "a.ebp"))
    assert "Adam (beta1 0.9, beta2 0.99), lr 0.01" in out and "momentum" not in out
    q, _ = ebpfile.read(tmp_path / "a.ebp")
    assert q.adam == (3277, 328) and not q.momentum
    out = run(capsys, "train", "--net", str(tmp_path / "a.ebp"), "--data", IRIS, "--epochs",
              "1", "--optimizer", "sgd", "--lr", "0.05", "-o", str(tmp_path / "s.ebp"))
    assert "Adam" not in out and "lr 0.05" in out
    assert ebpfile.read(tmp_path / "s.ebp")[0].adam is None


@pytest.mark.parametrize("args,words", [
    (["--optimizer", "adam", "--beta1", "1.5"], "optimizer.beta1: Adam beta1 must lie in [0, 1)"),
    (["--optimizer", "adam", "--beta2", "1"], "optimizer.beta2: Adam beta2 must lie in [0, 1)"),
    (["--optimizer", "adam", "--beta1", "0.9999"], "above 0.999"),
    (["--beta1", "0.5"], "--beta1 is a setting of Adam"),
    (["--optimizer", "sgd", "--beta2", "0.5"], "--beta2 is a setting of Adam"),
])
def test_a_bad_beta_is_one_line(capsys, args, words):
    assert cli.main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err


def test_a_bad_beta_on_a_net_file_is_one_line(tmp_path, capsys):
    spec = tmp_path / "s.json"
    net = tmp_path / "net.ebp"
    run(capsys, "init", str(spec), "--data", IRIS, "--hidden", "4", "--optimizer", "adam")
    run(capsys, "quantize", str(spec), "-o", str(net), "--calib", IRIS)
    assert cli.main(["train", "--net", str(net), "--data", IRIS, "--beta1", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Adam beta1 must lie in [0, 1)" in err
    assert cli.main(["init", str(tmp_path / "m.json"), "--data", IRIS, "--optimizer", "adam",
                     "--momentum", "0.9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Adam takes the place of momentum" in err


# -- SDLM --


def test_train_with_sdlm_learns_xor(capsys, tmp_path):
    out = run(capsys, "train", "--optimizer", "sdlm", "-o", str(tmp_path / "xor.ebp"))
    # SDLM's default rate when none is given, mu and gamma as the board applies them
    assert re.search(r"SDLM \(mu 0\.1\d*, gamma 0\.0\d+\), lr 0\.05", out), out
    table = out[out.index("x1  x2  target  output"):].splitlines()[1:5]
    for row in table:
        x1, x2, target, output = (float(v) for v in row.split())
        assert (output > 0.5) == (target == 1)
    assert epoch_rows(out)[-1].split()[2] == "100.0%"
    q, hyper = ebpfile.read(tmp_path / "xor.ebp")
    assert q.sdlm is not None and q.sdlm[:3] == (205, 11, 819) and q.adam is None
    assert hyper.lr == 0.05 and not q.momentum


def test_sdlm_board_run_matches_the_core(tmp_path, capsys):
    """An SDLM net trained through the simulated board ends with the weights of the core Net
    trained in the same order (its curvature carried across epochs)."""
    from array import array

    spec = tmp_path / "s.json"
    net = tmp_path / "net.ebp"
    run(capsys, "init", str(spec), "--data", IRIS, "--hidden", "8", "--optimizer", "sdlm",
        "--mu", "0.2", "--gamma", "0.1")
    text = spec.read_text()
    assert '"name": "sdlm"' in text and '"mu": 0.2' in text and '"gamma": 0.1' in text
    run(capsys, "quantize", str(spec), "-o", str(net), "--calib", IRIS)
    run(capsys, "train", "--net", str(net), "--data", IRIS, "--epochs", "2", "--batch", "7",
        "--seed", "5", "-o", str(tmp_path / "t.ebp"))
    qnet, hyper = ebpfile.read(net)
    assert qnet.sdlm is not None
    hyper.batch, hyper.seed = 7, 5
    core = qnet.build(hyper)
    ds = data.read(IRIS)
    Xq, Tq = qnet.quantize_inputs(ds.X), qnet.quantize_targets(ds.y[:, 0])
    for epoch in range(2):
        for i in epoch_order(len(ds), 5, epoch):
            core.learn(array("h", Xq[i].tolist()), array("h", Tq[i].tolist()))
        core.update()  # the partial batch at the end of an epoch
    assert core.opt.n > 0
    trained, _ = ebpfile.read(tmp_path / "t.ebp")
    assert trained.sdlm == qnet.sdlm
    for l in range(qnet.L):
        assert trained.W[l].ravel().tolist() == list(core.W[l])
        assert trained.B[l].tolist() == list(core.B[l])


def test_a_net_file_switches_to_sdlm_with_formats_from_its_data(tmp_path, capsys):
    from edgebp.host.nets.quantize import sdlm_settings
    from edgebp.host.nets.reference import from_qnet

    spec = tmp_path / "s.json"
    net = tmp_path / "net.ebp"
    run(capsys, "init", str(spec), "--data", IRIS, "--hidden", "4", "--momentum", "0.5")
    run(capsys, "quantize", str(spec), "-o", str(net), "--calib", IRIS)
    out = run(capsys, "train", "--net", str(net), "--data", IRIS, "--epochs", "1",
              "--optimizer", "sdlm", "--gamma", "0.25", "-o", str(tmp_path / "a.ebp"))
    assert "SDLM (mu 0.1001, gamma 0.25), lr 0.05" in out and "momentum" not in out
    q, _ = ebpfile.read(tmp_path / "a.ebp")
    assert not q.momentum and q.adam is None
    # the formats of the net as given, from the data as given
    given, _ = ebpfile.read(net)
    ds = data.read(IRIS)
    Xn = given.quantize_inputs(ds.X) * 2.0 ** -given.shift_a[0]
    assert q.sdlm == sdlm_settings(from_qnet(given), Xn, ds.y[:, 0].astype(int), 0.1, 0.25)
    # an SDLM file keeps its formats when mu changes; and back to SGD
    out = run(capsys, "train", "--net", str(tmp_path / "a.ebp"), "--data", IRIS, "--epochs",
              "1", "--mu", "0.5", "-o", str(tmp_path / "b.ebp"))
    b, _ = ebpfile.read(tmp_path / "b.ebp")
    assert "SDLM (mu 0.5" in out and b.sdlm[3:] == q.sdlm[3:] and b.sdlm[2] == q.sdlm[2]
    out = run(capsys, "train", "--net", str(tmp_path / "b.ebp"), "--data", IRIS, "--epochs",
              "1", "--optimizer", "sgd", "--lr", "0.05", "-o", str(tmp_path / "s.ebp"))
    assert "SDLM" not in out and "lr 0.05" in out
    assert ebpfile.read(tmp_path / "s.ebp")[0].sdlm is None


@pytest.mark.parametrize("args,words", [
    (["--optimizer", "sdlm", "--mu", "0"], "optimizer.mu: SDLM mu must be a positive number"),
    (["--optimizer", "sdlm", "--mu", "1000"], "optimizer.mu: SDLM mu 1000.0 outside"),
    (["--optimizer", "sdlm", "--gamma", "0"], "optimizer.gamma: SDLM gamma must lie in (0, 1]"),
    (["--optimizer", "sdlm", "--gamma", "2"], "optimizer.gamma: SDLM gamma must lie in (0, 1]"),
    (["--mu", "0.5"], "--mu is a setting of SDLM"),
    (["--optimizer", "adam", "--gamma", "0.5"], "--gamma is a setting of SDLM"),
    (["--optimizer", "sdlm", "--beta1", "0.5"], "--beta1 is a setting of Adam"),
])
def test_a_bad_sdlm_setting_is_one_line(capsys, args, words):
    assert cli.main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err


def test_a_bad_sdlm_setting_on_a_net_file_is_one_line(tmp_path, capsys):
    spec = tmp_path / "s.json"
    net = tmp_path / "net.ebp"
    run(capsys, "init", str(spec), "--data", IRIS, "--hidden", "4", "--optimizer", "sdlm")
    run(capsys, "quantize", str(spec), "-o", str(net), "--calib", IRIS)
    for args, words in ((["--gamma", "3"], "SDLM gamma must lie in (0, 1]"),
                        (["--mu", "-1"], "SDLM mu must be a positive number"),
                        (["--mu", "1e-6"], "too small for the curvature format")):
        assert cli.main(["train", "--net", str(net), "--data", IRIS, *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
    assert cli.main(["init", str(tmp_path / "m.json"), "--data", IRIS, "--optimizer", "sdlm",
                     "--momentum", "0.9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SDLM takes the place of momentum" in err
