"""`edgebp deploy` and a day with a board: a unix MicroPython with a stock REPL and an empty
filesystem (host/boards/board_repl.py), on a pseudo-terminal, reached exactly as a real port is.

deploy, train with checkpoints, a reset mid-epoch, train --resume, pull, eval: the weights at
the end are those of the integer twin trained without interruption, the pulled floats
quantise back to the board's int16 weights, and eval scores what the twin predicts."""

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, require_runtime
from edgebp.host.boards import board as mb
from edgebp.host.boards.session import Session
from edgebp.host.boards.sim import MicroPythonBoard
from edgebp.host.cli import board_commands, data, parser as cli
from edgebp.host.nets import ebpfile
from edgebp.host.nets.reference import epoch_order
from edgebp.host.nets.train import core_correct
from edgebp.host.nets.twin import TwinNet

TRAIN = str(REPO / "examples" / "data" / "iris_train.csv")
TEST = str(REPO / "examples" / "data" / "iris_test.csv")


def run(capsys, *args, code=0):
    got = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert got == code, err or out
    return out + err


def test_dry_run_without_a_board_lists_the_compiled_files(capsys):
    out = run(capsys, "deploy", "--dry-run", "--arch", "armv6m")
    sources = mb.device_sources()
    for rel in sources:
        assert rel[:-3] + ".mpy" in out
    assert "manifest" not in out
    # and the armv6m native modules: the kernels and the optimisers' kernels
    assert f"{len(sources) + 1 + len(mb.NATIVE_EXTRA)} files" in out
    out = run(capsys, "deploy", "--dry-run", "--arch", "none")
    assert "kernels_viper" in out and "left off" in out  # no native emitter, no viper
    out = run(capsys, "deploy", "--arch", "x64", code=2)
    assert out.startswith("edgebp: --arch is for --dry-run")


def test_the_board_refuses_mpy_it_cannot_read():
    facts = mb.Facts((1, 22, 2), (2 << 10) | (1 << 8) | 6, "m", "rp2", "/", 0, 0, 0, 0)
    assert facts.mpy_version == (6, 1) and facts.arch == "x64"
    with pytest.raises(mb.BoardError, match=r"reads \.mpy v6\.1.*--source"):
        mb.check_mpy(facts)
    with pytest.raises(mb.BoardError, match="does not report"):
        mb.check_mpy(mb.Facts((1, 12, 0), 0, "m", "rp2", "/", 0, 0, 0, 0))


@pytest.fixture
def stock(tmp_path):
    require_runtime("unix")
    with MicroPythonBoard(stock=True, root=tmp_path / "fs") as board:
        yield board


def test_a_board_powered_again_never_reads_what_was_sent_to_it_before(stock):
    """Bytes in flight when the power went are lost, as on a board: the fresh REPL must not
    take them for keys typed at it (a stale frame holding Ctrl-A and Ctrl-D runs as code)."""
    import os
    import select
    import time

    stock.kill()
    fd = os.open(stock.url, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, b"print(6 * 7)\r\x01stale\x04")
        stock.boot()
        got, deadline = b"", time.monotonic() + 3
        while time.monotonic() < deadline and not got.endswith(b">>> "):
            if select.select([fd], [], [], 0.1)[0]:
                got += os.read(fd, 256)
        time.sleep(0.3)  # and nothing after the prompt
        while select.select([fd], [], [], 0)[0]:
            got += os.read(fd, 256)
    finally:
        os.close(fd)
    assert got.startswith(b"MicroPython") and got.endswith(b">>> "), got
    assert b"42" not in got and b"stale" not in got and b"raw REPL" not in got, got


def on_board(board, rel):
    return Path(board.root, rel).read_bytes()


def test_deploy_copies_verifies_and_skips_what_is_there(stock, capsys):
    out = run(capsys, "deploy", "--port", stock.url, "--dry-run")
    assert "would be written" in out and not Path(stock.root, "edgebp").exists()

    out = run(capsys, "deploy", "--port", stock.url)
    plan = mb.plan_deploy("x64")
    # the sources, and the native kernels built for x64
    assert len(plan.items) == len(mb.device_sources()) + 1 + len(mb.NATIVE_EXTRA)
    assert plan.items[-1].dest == mb.NATIVE_DEST
    for item in plan.items:
        assert on_board(stock, item.dest) == item.data  # what mpy-cross made, byte for byte
        assert f"{item.dest}" in out
    assert out.count("written, verified") == len(plan.items)

    # a stale source beside the new .mpy would shadow it at import: it goes
    Path(stock.root, "edgebp", "net.py").write_text("raise ImportError('old')\n")
    # a file damaged on the board is found by its hash and written again
    Path(stock.root, "edgebp", "wire.mpy").write_bytes(b"\x00damaged")
    out = run(capsys, "deploy", "--port", stock.url)
    assert "edgebp/net.py" in out and "removed" in out
    assert not Path(stock.root, "edgebp", "net.py").exists()
    assert out.count("written, verified") == 1 and "edgebp/wire.mpy" in out
    wire = next(i for i in plan.items if i.dest == "edgebp/wire.mpy")
    assert hashlib.sha256(on_board(stock, "edgebp/wire.mpy")).digest() == wire.sha256

    # the deployed firmware starts from the board's REPL and answers
    with Session(stock.url, start=True) as s:
        assert s.info.runtime.startswith("micropython") and s.info.board == "unix"
        assert s.bye()


def test_an_undeployed_board_says_what_is_missing(stock, capsys):
    out = run(capsys, "eval", "--port", stock.url, "--net", str(REPO / "examples" / "data"
                                                                  / "missing.ebp"),
              "--data", TEST, code=2)
    assert out.startswith("edgebp: ")
    out = run(capsys, "train", "--port", stock.url, "--data", TRAIN, "--epochs", "1", code=1)
    assert "could not start the edgebp server" in out and "deployed" in out


def test_deploy_train_reset_resume_pull_eval(stock, tmp_path, capsys, monkeypatch):
    epochs, seed, batch = 4, 3, 5
    spec, net = tmp_path / "iris.json", tmp_path / "iris.ebp"
    run(capsys, "init", spec, "--data", TRAIN, "--hidden", "8")
    run(capsys, "quantize", spec, "-o", net, "--calib", TRAIN)
    # as `edgebp flash` deploys once the board is back with its new MicroPython
    assert board_commands._deploy(stock.url, argparse.Namespace()) == 0
    deployed = len(mb.device_sources()) + 1 + len(mb.NATIVE_EXTRA)
    assert f"deployed  {deployed} files" in capsys.readouterr().out

    # the first run: the board resets in the middle of epoch 3 and the host is interrupted
    real_train = Session.train
    calls = []
    killed_at = []

    def train_then_reset(self, Xq, Tq, order=None, **kw):
        calls.append(len(order))
        if len(calls) < 3:
            return real_train(self, Xq, Tq, order, **kw)

        def progress(done, total):
            if done >= 50:
                killed_at.append(done)  # samples of the epoch the board had acknowledged
                stock.kill()
                raise KeyboardInterrupt

        return real_train(self, Xq, Tq, order, **dict(kw, progress=progress))

    common = ["--port", stock.url, "--net", net, "--data", TRAIN, "--epochs", epochs,
              "--seed", seed, "--batch", batch]
    with monkeypatch.context() as m:
        m.setattr(Session, "train", train_then_reset)
        out = run(capsys, "train", *common, "--checkpoint-every", 3, code=130)
    assert "interrupted" in out and len(calls) == 3
    assert Path(stock.root, "ckpt.ebp").exists()

    stock.boot()  # power comes back: RAM empty, files kept
    trained = tmp_path / "trained.ebp"
    out = run(capsys, "train", *common, "--resume", "--keep", "-o", trained)
    resumed = int(out.split("resumed   checkpoint ")[1].split(": ")[1].split()[0])
    # in epoch 3, where the reset came: the board may be ahead of what the host had seen
    # acknowledged (killed_at), by the frames in flight, and its checkpoints with it
    assert 2 * 120 <= resumed < 3 * 120 and killed_at[0] < 120
    assert f"going on at epoch 3, sample {resumed - 240 + 1}" in out

    # the same net trained without a reset, by the integer twin
    qnet, hyper = ebpfile.read(net)
    hyper.batch, hyper.seed = batch, seed
    twin = TwinNet.from_qnet(qnet, hyper)
    ds = data.read(TRAIN)
    Xq, Tq = qnet.quantize_inputs(ds.X), qnet.quantize_targets(ds.y[:, 0])
    for epoch in range(epochs):
        twin.train_epoch(Xq, Tq, epoch_order(len(ds), seed, epoch))
        twin.update()
    expected = twin.to_qnet(qnet)
    got, _ = ebpfile.read(trained)
    for a, b in zip(got.W + got.B, expected.W + expected.B, strict=True):
        assert np.array_equal(a, b)

    # pull: the board still serves the net (--keep); its floats quantise back exactly
    pulled = tmp_path / "pulled.npz"
    run(capsys, "pull", "--port", stock.url, "--net", trained, "-o", pulled)
    back = tmp_path / "back.ebp"
    run(capsys, "quantize", trained, "--weights", pulled, "-o", back)
    again, _ = ebpfile.read(back)
    for a, b in zip(again.W + again.B, expected.W + expected.B, strict=True):
        assert np.array_equal(a, b)

    # eval on held-out data: the board scores what the twin predicts
    out = run(capsys, "eval", "--port", stock.url, "--net", back, "--data", TEST, "--json")
    test = data.read(TEST)
    correct = core_correct(again.build(hyper), qnet.quantize_inputs(test.X),
                           qnet.quantize_targets(test.y[:, 0]))
    result = json.loads(out)
    assert (result["samples"], result["correct"]) == (len(test), correct)
