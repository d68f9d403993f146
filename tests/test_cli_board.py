"""`edgebp init`, `quantize`, `check`, `pull` and `sim`: specs and nets as files, gradients
validated on a board, weights read back from a board that outlives the command."""

import json
import os
import select
import signal
import subprocess
import sys

import numpy as np

from conftest import REPO, require_runtime
from edgebp.host.cli import parser as cli
from edgebp.host.nets import ebpfile
from edgebp.host.nets.spec import load_spec

IRIS = str(REPO / "examples" / "data" / "iris.csv")


def run(capsys, *args, code=0):
    got = cli.main(list(args))
    captured = capsys.readouterr()
    assert got == code, captured.err
    return captured.out if code == 0 else captured.err


# -- init and quantize --


def test_init_writes_a_spec_and_keeps_an_existing_one(tmp_path, capsys):
    path = tmp_path / "s.json"
    out = run(capsys, "init", str(path), "--sizes", "4,16,3", "--lr", "0.02",
              "--input-min", "0,0,0,0", "--input-max", "8,5,7,3")
    assert out.startswith(f"wrote {path}: 4-16-3 relu/softmax, softmax_ce loss, lr 0.02")
    spec = load_spec(path)
    assert spec.input_max == [8, 5, 7, 3] and spec.lr == 0.02
    err = run(capsys, "init", str(path), "--sizes", "2,1", code=2)
    assert err == f"edgebp: {path} exists: --force overwrites it\n"
    run(capsys, "init", str(path), "--sizes", "2,1", "--force")
    spec = load_spec(path)
    assert spec.sizes == [2, 1] and spec.loss == "bce" and spec.activations == ["sigmoid"]


def test_init_from_data_and_its_mistakes(tmp_path, capsys):
    path = tmp_path / "s.json"
    run(capsys, "init", str(path), "--data", IRIS, "--hidden", "10,6")
    spec = load_spec(path)
    assert spec.sizes == [4, 10, 6, 3] and spec.input_min == [4.3, 2.0, 1.0, 0.1]
    err = run(capsys, "init", str(path), "--force", "--sizes", "4,3", "--activations", "relu",
              code=2)
    assert err == ("edgebp: the spec would be wrong: loss: softmax_ce needs a softmax output "
                   "layer, not relu\n")


def test_quantize_prints_formats_and_proof_then_writes(tmp_path, capsys):
    spec, net = tmp_path / "s.json", tmp_path / "n.ebp"
    run(capsys, "init", str(spec), "--data", IRIS)
    out = run(capsys, "quantize", str(spec), "-o", str(net), "--calib", IRIS)
    lines = out.splitlines()
    assert lines[0].startswith("layer  n_in->n_out  act")
    assert lines[1].split()[:3] == ["1", "4->16", "relu"]
    assert any(ln.startswith("range analysis: ") for ln in lines)
    assert lines[-1].startswith(f"wrote {net}: 4-16-3 relu/softmax")
    qnet, hyper = ebpfile.read(net)
    assert qnet.sizes == [4, 16, 3] and hyper.lr == 0.05


def test_quantize_refuses_naming_the_layer(tmp_path, capsys):
    spec = tmp_path / "s.json"
    spec.write_text('{"sizes": [3, 8, 1], "activations": ["tanh", "identity"], "loss": "mse", '
                    '"input_range": {"min": 0, "max": 1}, '
                    '"target_range": {"min": -5000, "max": 5000}}')
    err = run(capsys, "quantize", str(spec), "-o", str(tmp_path / "n.ebp"), code=2)
    assert err.startswith(f"edgebp: {spec}: layer 2: outputs and targets up to 5000 ")
    assert err.count("\n") == 1
    assert not (tmp_path / "n.ebp").exists()


# -- check --


def test_check_on_micropython_validates_its_gradients(capsys):
    require_runtime("unix")
    result = json.loads(run(capsys, "check", "--sim", "micropython", "--json"))
    assert result["board"].startswith("unix, micropython")
    assert result["ok"] and result["bit_identical_to_core"]
    v = result["validation"]
    assert v["count"] == 32 and len(v["layers"]) == 2
    for layer in v["layers"]:
        assert 0 < layer["bound"] < 0.5  # a bound that would catch a gradient off by 2x
        assert layer["cos"] >= layer["cos_min"]
        assert layer["rel"] <= layer["bound"]


def test_check_a_relu_net_on_data(capsys):
    out = run(capsys, "check", "--data", IRIS, "--samples", "20")
    assert "data      20 samples" in out
    assert "equal the core's (CPython), bit for bit" in out
    assert "gradients agree" in out


def test_check_an_adam_net(tmp_path, capsys):
    # the gradients do not depend on the optimiser, and the board loads the net with Adam
    spec, net = tmp_path / "s.json", tmp_path / "n.ebp"
    run(capsys, "init", str(spec), "--data", IRIS, "--optimizer", "adam")
    run(capsys, "quantize", str(spec), "-o", str(net), "--calib", IRIS)
    from edgebp.host.nets import ebpfile

    assert ebpfile.read(net)[0].adam is not None
    out = run(capsys, "check", "--net", str(net), "--data", IRIS, "--samples", "20")
    assert "equal the core's (CPython), bit for bit" in out
    assert "gradients agree" in out


def test_check_an_sdlm_net(tmp_path, capsys):
    # the gradients do not depend on the optimiser, and the board loads the net with SDLM
    spec, net = tmp_path / "s.json", tmp_path / "n.ebp"
    run(capsys, "init", str(spec), "--data", IRIS, "--optimizer", "sdlm")
    run(capsys, "quantize", str(spec), "-o", str(net), "--calib", IRIS)
    from edgebp.host.nets import ebpfile

    assert ebpfile.read(net)[0].sdlm is not None
    out = run(capsys, "check", "--net", str(net), "--data", IRIS, "--samples", "20")
    assert "equal the core's (CPython), bit for bit" in out
    assert "gradients agree" in out


def test_check_shows_the_bound_of_each_layer_and_passes_a_narrow_net(tmp_path, capsys):
    """Issue 13: a sound core on an 8-layer tanh net with a width-1 layer measures a rel L2
    of 0.24 on layers 1-3 (one sample); its bounds, derived from the net, say ok there and
    say they are weak, while the layers above keep tight bounds."""
    spec = tmp_path / "narrow.json"
    spec.write_text(json.dumps({
        "sizes": [34, 40, 57, 1, 6, 33, 46, 32, 26], "activations": ["tanh"] * 7 + ["identity"],
        "loss": "mse", "input_range": {"min": -1, "max": 1},
        "target_range": {"min": -1, "max": 1}, "init_seed": 9}))
    rng = np.random.default_rng(9)
    np.savez(tmp_path / "one.npz", X=rng.uniform(-1, 1, (1, 34)), y=rng.uniform(-1, 1, (1, 26)))
    run(capsys, "quantize", str(spec), "-o", str(tmp_path / "n.ebp"), "--calib",
        str(tmp_path / "one.npz"))
    out = run(capsys, "check", "--net", str(tmp_path / "n.ebp"), "--data",
              str(tmp_path / "one.npz"), "--samples", "1")
    lines = out.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("layer"))
    assert lines[head].split()[4:7] == ["rel", "L2", "bound"]
    rows = [ln.split() for ln in lines[head + 1:head + 9]]
    for r in rows:
        assert float(r[4]) <= float(r[5])
    assert all(float(r[4]) > 0.2 for r in rows[:3]) and all(float(r[5]) < 0.1 for r in rows[3:])
    assert "weak (layers 2, 3)" in out and "max err: the largest error of one gradient" in out
    assert lines[-1].startswith("gradients agree")


# -- a board that outlives the command --


def start_sim(kind: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "edgebp.host.cli", "sim", kind],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    assert ready, "the simulated board did not start"
    line = proc.stdout.readline()
    assert line.startswith(f"simulated board ({kind}) on "), line
    return proc, line.split()[-1]


def stop_sim(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    return out


def test_pull_the_weights_a_kept_board_holds(tmp_path, capsys):
    net, trained, pulled = tmp_path / "n.ebp", tmp_path / "t.ebp", tmp_path / "p.ebp"
    proc, port = start_sim("inprocess")
    try:
        err = run(capsys, "pull", "--port", port, "--net", str(tmp_path / "x.ebp"), "-o",
                  str(pulled), code=2)
        assert "x.ebp: No such file or directory" in err
        run(capsys, "train", "--epochs", "1", "-o", str(net))
        err = run(capsys, "pull", "--port", port, "--net", str(net), "-o", str(pulled),
                  code=2)
        assert err.startswith(f"edgebp: the board on {port} holds no net")
        out = run(capsys, "train", "--port", port, "--keep", "--epochs", "20", "-o",
                  str(trained))
        assert f"({port})" in out.splitlines()[0]
        run(capsys, "pull", "--port", port, "--net", str(net), "-o", str(pulled))
        run(capsys, "pull", "--port", port, "--net", str(net), "-o", str(tmp_path / "p.npz"),
            code=2)  # the first pull ended the session: the board forgot its net
    finally:
        assert stop_sim(proc).endswith("board stopped\n")
    a, b = ebpfile.read(trained)[0], ebpfile.read(pulled)[0]
    for x, y in zip(a.W + a.B, b.W + b.B, strict=True):
        assert np.array_equal(x, y)


def test_keep_needs_a_board_that_outlives_the_command(capsys):
    err = run(capsys, "train", "--keep", code=2)
    assert err.startswith("edgebp: --keep needs --port")


def test_sim_micropython_prints_its_port_and_stops(capsys):
    require_runtime("unix")
    proc, port = start_sim("micropython")
    assert os.path.exists(port)
    out = stop_sim(proc)
    assert out.endswith("board stopped\n")


def test_sim_over_a_socket_serves_sessions(capsys):
    proc, port = start_sim("socket")
    try:
        assert port.startswith("socket://127.0.0.1:")
        for _ in range(2):  # each session ends with BYE; the board serves the next
            assert json.loads(run(capsys, "check", "--port", port, "--json"))["ok"]
    finally:
        stop_sim(proc)
