"""The `edgebp` command end to end on each emulated microcontroller (host/boards/qemu.py):
upstream MicroPython on a Cortex-M3 and on an rv32imc core under qemu, reached over the
board's pseudo-terminal exactly as a USB board's serial port is.

On a fresh flash: deploy (the architecture read right, the viper kernels sent), train XOR
and iris (with --val), eval, check, bench --port, train --keep then pull, and a power cut
(qemu killed) in the middle of an epoch with --checkpoint-every, the board started again on
the same flash and the run --resumed. Every trained weight, loss and accuracy is the integer
twin's (edgebp.host.nets.twin) trained the same way without interruption. A command the user
interrupts leaves the board at its REPL; a board that does not answer there is refused, not
waited on forever; `bench` stops the emulated boards it benched.

One board per kind for the whole module (an idle board keeps a host core busy), stopped at
the end; without $EDGEBP_QEMU_BOARDS the tests skip, and with it a board that cannot start
fails the run in CI.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, require_runtime
from edgebp.host.boards import board as mb, qemu
from edgebp.host.boards.qemu import KINDS, QemuBoard
from edgebp.host.boards.session import Session
from edgebp.host.cli import data, parser as cli, workload
from edgebp.host.nets import ebpfile
from edgebp.host.nets.reference import epoch_order
from edgebp.host.nets.twin import TwinNet

TRAIN = str(REPO / "examples" / "data" / "iris_train.csv")
TEST = str(REPO / "examples" / "data" / "iris_test.csv")

# what each board's sys.implementation._mpy names (the boards' README): mpy-cross's -march
ARCH = {"cortex-m3": "armv7em", "rv32": "rv32imc"}


def run(capsys, *args, code=0) -> str:
    got = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert got == code, err or out
    return out + err


def quiet(*args) -> str:
    """The command's stdout, for fixtures (which cannot take capsys)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        got = cli.main([str(a) for a in args])
    assert got == 0, err.getvalue() or out.getvalue()
    return out.getvalue()


# -- the module's boards and nets --


@dataclass
class Deployed:
    board: QemuBoard
    out: str  # what `edgebp deploy` printed

    @property
    def port(self) -> str:
        return self.board.port  # a new one after each power-on


@pytest.fixture(scope="module", params=KINDS)
def board(request, tmp_path_factory):
    """A freshly flashed emulated board of each kind, edgebp deployed onto it."""
    kind = request.param
    require_runtime(kind)
    flash = tmp_path_factory.mktemp(kind) / "board.flash"
    with QemuBoard(kind, flash=flash) as b:
        yield Deployed(b, quiet("deploy", "--port", b.port))


@pytest.fixture(scope="module")
def iris_net(tmp_path_factory) -> Path:
    """A 4-8-3 relu/softmax net made as the README shows: init from the data, quantize."""
    d = tmp_path_factory.mktemp("iris")
    spec, net = d / "iris.json", d / "iris.ebp"
    quiet("init", spec, "--data", TRAIN, "--hidden", "8")
    quiet("quantize", spec, "-o", net, "--calib", TRAIN)
    return net


# -- the expected run: the integer twin --


@dataclass
class TwinRun:
    lines: list[str]  # the rows `edgebp train` prints, one per epoch
    val: tuple[float, float] | None  # the last epoch's held-out loss and accuracy
    trained: object  # the QuantNet with the trained weights


def twin_run(qnet, hyper, Xq, Tq, epochs: int, first: int = 0, Xv=None, Tv=None) -> TwinRun:
    """Train as the command does (the seeded order of each epoch, an update after its
    last sample) and format each epoch's row as it prints them; rows from epoch `first`."""
    twin = TwinNet.from_qnet(qnet, hyper)
    lines, val = [], None
    for epoch in range(epochs):
        twin.reset_stats()
        losses = twin.train_epoch(Xq, Tq, epoch_order(len(Xq), hyper.seed, epoch))
        twin.update()
        loss, acc = int(losses.sum()) / 4096 / len(Xq), twin.correct / len(Xq)
        line = f"{epoch + 1:6}  {loss:8.4f}  {100 * acc:7.1f}%"
        if Xv is not None:
            ev = twin.evaluate(Xv, Tv)
            val = int(ev.loss.sum()) / 4096 / len(Xv), int(ev.correct.sum()) / len(Xv)
            line += f"  {val[0]:8.4f}  {100 * val[1]:7.1f}%"
        if epoch >= first:
            lines.append(line)
    return TwinRun(lines, val, twin.to_qnet(qnet))


def iris(net: Path, batch: int | None = None, seed: int | None = None):
    qnet, hyper = ebpfile.read(net)
    if batch is not None:
        hyper.batch = batch
    if seed is not None:
        hyper.seed = seed
    ds, test = data.read(TRAIN), data.read(TEST)
    return (qnet, hyper, qnet.quantize_inputs(ds.X), qnet.quantize_targets(ds.y[:, 0]),
            qnet.quantize_inputs(test.X), qnet.quantize_targets(test.y[:, 0]))


def same_weights(path: Path, expected) -> None:
    got, _ = ebpfile.read(path)
    for a, b in zip(got.W + got.B, expected.W + expected.B, strict=True):
        assert np.array_equal(a, b)


# -- without a board --


def test_the_architecture_is_read_without_its_flag_bits():
    # the boards' _mpy: .mpy v6.3 and the arch in bits 10-13; rv32 sets bit 16 (zba) too
    facts = {mpy: mb.Facts((1, 28, 0), mpy, "m", "qemu", "/", 0, 0, 0, 0)
             for mpy in (6918, 77574)}
    assert facts[6918].arch == "armv7em" and facts[77574].arch == "rv32imc"
    for f in facts.values():
        assert f.mpy_version == (6, 3)
        mb.check_mpy(f)


def test_a_pty_that_does_not_answer_is_refused_not_waited_on_forever():
    # a board whose REPL does not answer (an edgebp server still running there): mpremote
    # reads a pty byte by byte, blocking; Board must give up after mpremote's 10 s
    master, slave = os.openpty()
    try:
        with pytest.raises(mb.BoardError, match="no raw REPL"):
            mb.Board(os.ttyname(slave))
    finally:
        os.close(master)
        os.close(slave)


def test_bench_stops_the_emulated_boards_it_benched(capsys, monkeypatch):
    require_runtime("cortex-m3")
    booted = []
    real_boot = QemuBoard.boot

    def boot(self, *a, **kw):
        booted.append(self)
        return real_boot(self, *a, **kw)

    monkeypatch.setattr(QemuBoard, "boot", boot)
    try:
        out = run(capsys, "bench", "--runtime", "cortex-m3", "--steps", 1, "--samples", 5)
    finally:
        running = [b.pid for b in booted if b.running]
        qemu.stop_shared()
    assert booted and any(ln.startswith("cortex-m3") for ln in out.splitlines())
    assert running == []  # each qemu would outlive the command, a host core busy each


# -- on each board --


def test_deploy_reads_the_architecture_and_sends_the_viper_kernels(board):
    arch = ARCH[board.board.kind]
    lines = board.out.splitlines()
    assert lines[0].startswith("board     ") and f".mpy v6.3 {arch} on " in lines[0]
    plan = mb.plan_deploy(arch)
    assert "edgebp/kernels_viper.mpy" in [i.dest for i in plan.items]
    assert f"files     {len(plan.items)} for {arch}, compiled by mpy-cross" in board.out
    assert "left off" not in board.out
    for item in plan.items:
        assert any(ln.split()[:1] == [item.dest] and ln.endswith("written, verified")
                   for ln in lines), item.dest
    # what is on the flash is what mpy-cross made for that arch, hashed by the board
    with mb.Board(board.port) as b:
        for item in plan.items:
            if item.dest.startswith("edgebp/kernels"):
                assert b.sha256(item.dest) == item.sha256


def test_train_xor_as_the_twin_then_check_gradients(board, tmp_path, capsys):
    epochs, out = 20, tmp_path / "xor.ebp"
    text = run(capsys, "train", "--port", board.port, "--epochs", epochs, "-o", out)
    assert "(built-in XOR)" in text and "micropython 1.28.0 qemu" in text
    p = workload.prepare(cli.make_parser().parse_args(["train"]))
    Xq, Tq = p.qnet.quantize_inputs(p.data.X), workload.targets(p.qnet, p.data)
    expected = twin_run(p.qnet, p.hyper, Xq, Tq, epochs)
    for line in expected.lines[-1:] + expected.lines[:1]:
        assert line in text.splitlines()
    same_weights(out, expected.trained)

    result = json.loads(run(capsys, "check", "--port", board.port, "--json"))
    assert result["ok"] and result["bit_identical_to_core"]
    assert "micropython 1.28.0 qemu" in result["board"]


def test_check_a_relu_softmax_net_on_data(board, iris_net, capsys):
    out = run(capsys, "check", "--port", board.port, "--net", iris_net, "--data", TRAIN,
              "--samples", 24)
    assert "data      24 samples" in out
    assert "the board's gradient sums equal the core's (CPython), bit for bit" in out
    assert "gradients agree" in out


def test_train_iris_with_val_then_eval(board, iris_net, tmp_path, capsys):
    epochs, seed, trained = 3, 2, tmp_path / "trained.ebp"
    out = run(capsys, "train", "--port", board.port, "--net", iris_net, "--data", TRAIN,
              "--val", TEST, "--epochs", epochs, "--seed", seed, "-o", trained)
    qnet, hyper, Xq, Tq, Xv, Tv = iris(iris_net, seed=seed)
    expected = twin_run(qnet, hyper, Xq, Tq, epochs, Xv=Xv, Tv=Tv)
    lines = out.splitlines()
    for line in expected.lines:
        assert line in lines
    assert expected.val is not None
    loss, acc = expected.val
    assert f"held out  {len(Xv)} samples: loss {loss:.4f}, accuracy {100 * acc:.1f}%" in out
    same_weights(trained, expected.trained)

    result = json.loads(run(capsys, "eval", "--port", board.port, "--net", trained,
                            "--data", TEST, "--json"))
    assert (result["samples"], result["correct"]) == (len(Xv), round(acc * len(Xv)))
    assert result["loss"] == loss


def test_bench_on_the_board_runs_every_kernel_set_without_allocating(board, capsys):
    out = run(capsys, "bench", "--port", board.port, "--runtime", "cpython", "--steps", 10,
              "--samples", 20)
    rows = [ln.split() for ln in out.splitlines() if ln.startswith(f"board {board.port} ")]
    # runtime (2 words), kernels, us/step, MMAC/s, B alloc/step, ...; deploy sent the viper
    # kernels and the native build for the board's architecture
    assert sorted(r[2] for r in rows) == ["native", "pure", "viper"]
    assert all(r[5] == "0" for r in rows)


def test_keep_then_pull_the_weights(board, iris_net, tmp_path, capsys):
    kept, pulled, back = tmp_path / "kept.ebp", tmp_path / "pulled.npz", tmp_path / "back.ebp"
    run(capsys, "train", "--port", board.port, "--net", iris_net, "--data", TRAIN,
        "--epochs", 1, "--keep", "-o", kept)
    qnet, hyper, Xq, Tq, _, _ = iris(iris_net)
    expected = twin_run(qnet, hyper, Xq, Tq, 1).trained
    same_weights(kept, expected)
    # the board still serves the net: its weights, as floats, quantise back to the same ints
    out = run(capsys, "pull", "--port", board.port, "--net", kept, "-o", pulled)
    assert out.startswith("pulled the board's weights (4-8-3")
    run(capsys, "quantize", kept, "--weights", pulled, "-o", back)
    same_weights(back, expected)
    # and pull gave the board back to its REPL
    with mb.Board(board.port) as b:
        assert b.facts().platform == "qemu"


def test_an_interrupted_command_gives_the_board_back_to_its_repl(board, iris_net, capsys,
                                                                monkeypatch):
    real_train = Session.train

    def interrupted(self, Xq, Tq, order=None, **kw):
        def progress(done, total):
            if done >= 20:
                raise KeyboardInterrupt  # Ctrl-C on the host, frames in flight

        return real_train(self, Xq, Tq, order, **dict(kw, progress=progress))

    with monkeypatch.context() as m:
        m.setattr(Session, "train", interrupted)
        out = run(capsys, "train", "--port", board.port, "--net", iris_net, "--data", TRAIN,
                  "--epochs", 2, code=130)
    assert "interrupted" in out
    # the server has ended: the REPL answers mpremote at once, and deploy finds it all there
    with mb.Board(board.port) as b:
        assert b.facts().platform == "qemu"
    out = run(capsys, "deploy", "--port", board.port)
    n = len(mb.plan_deploy(ARCH[board.board.kind]).items)
    assert f"deployed  {n} files" in out and f"(0 written, {n} unchanged)" in out


def test_power_cut_mid_epoch_then_resume(board, iris_net, tmp_path, capsys, monkeypatch):
    epochs, seed, batch = 4, 3, 5
    common = ["--port", board.port, "--net", iris_net, "--data", TRAIN, "--epochs", epochs,
              "--seed", seed, "--batch", batch]
    real_train = Session.train
    calls, killed_at = [], []

    def train_then_power_cut(self, Xq, Tq, order=None, **kw):
        calls.append(len(order))
        if len(calls) < 3:
            return real_train(self, Xq, Tq, order, **kw)

        def progress(done, total):
            if done >= 50:
                killed_at.append(done)  # samples of the epoch the board had acknowledged
                board.board.kill()  # qemu dies at once: the power is cut
                raise KeyboardInterrupt  # and the user stops the command

        return real_train(self, Xq, Tq, order, **dict(kw, progress=progress))

    with monkeypatch.context() as m:
        m.setattr(Session, "train", train_then_power_cut)
        out = run(capsys, "train", *common, "--checkpoint-every", 3, code=130)
    assert "interrupted" in out and len(calls) == 3 and not board.board.running

    board.board.boot()  # power back on, on the same flash: RAM lost, files kept
    trained = tmp_path / "trained.ebp"
    common[1] = board.port
    out = run(capsys, "train", *common, "--resume", "--val", TEST, "-o", trained)
    resumed = int(out.split("resumed   checkpoint ")[1].split(": ")[1].split()[0])
    n = len(data.read(TRAIN))
    # from a checkpoint the board saved in epoch 3, where the power went
    assert 2 * n < resumed < 3 * n and killed_at[0] < n
    assert f"going on at epoch 3, sample {resumed - 2 * n + 1}" in out

    qnet, hyper, Xq, Tq, Xv, Tv = iris(iris_net, batch=batch, seed=seed)
    expected = twin_run(qnet, hyper, Xq, Tq, epochs, first=3, Xv=Xv, Tv=Tv)
    assert expected.lines[0] in out.splitlines()  # epoch 4, all of it after the resume
    same_weights(trained, expected.trained)


# -- a fleet (host/fleet) with this board among simulated ones --


def test_a_fleet_with_this_board_gives_the_same_weights_every_time(board):
    # four simulated boards and the emulated one (partition 4), a non-IID split, trained
    # through Flower's simulation engine: twice, the same global weights bit for bit, and
    # those of the twin's fleet (tests/fleetcheck.py). On the Cortex-M3 only: each run takes
    # half a minute and the rv32 board's training is tested above.
    if board.board.kind != "cortex-m3":
        pytest.skip("the fleet runs with the cortex-m3 board")
    import importlib.util

    if importlib.util.find_spec("flwr") is None or importlib.util.find_spec("ray") is None:
        pytest.skip('Flower with its simulation engine is not installed: pip install '
                    '"edgebp[fleet]"')
    from edgebp.host.fleet.config import Settings
    from edgebp.host.fleet.run import simulate
    from edgebp.host.fleet.workload import arrays_of
    from fleetcheck import iris_workload, same, twin_fleet

    wl = iris_workload(seed=2)
    st = Settings(clients=5, rounds=2, local_epochs=2, seed=2, partition="noniid",
                  boards=["sim"] * 4 + [board.port])
    runs = [simulate(wl, st, lambda row: None) for _ in range(2)]
    for h in runs:
        assert [r.reported for r in h.rows[1:]] == [[0, 1, 2, 3, 4]] * 2, \
            [r.left_out for r in h.rows]
    assert same(runs[0].arrays, runs[1].arrays)
    assert same(runs[0].arrays, twin_fleet(wl, st)[-1])
    assert not same(runs[0].arrays, arrays_of(wl.qnet))
# -- training from data kept on the board --


def _csv_parts(tmp_path: Path, cut: int) -> tuple[Path, Path]:
    head, *rows = Path(TRAIN).read_text().splitlines(keepends=True)
    a, b = tmp_path / "first.csv", tmp_path / "rest.csv"
    a.write_text(head + "".join(rows[:cut]))
    b.write_text(head + "".join(rows[cut:]))
    return a, b


def test_push_append_then_train_on_board_as_streamed(board, iris_net, tmp_path, capsys):
    first, rest = _csv_parts(tmp_path, 50)
    out = run(capsys, "data", "push", first, "--net", iris_net, "--port", board.port,
              "--name", "iris")
    assert "pushed    iris: 50 samples on the board, checked by its reader" in out
    out = run(capsys, "data", "push", rest, "--net", iris_net, "--port", board.port,
              "--name", "iris", "--append")
    assert "appending data/iris.ebd" in out and "iris: 120 samples on the board" in out
    run(capsys, "data", "push", TEST, "--net", iris_net, "--port", board.port,
        "--name", "iris_val")
    assert "iris_val " in run(capsys, "data", "list", "--port", board.port)

    epochs, seed, trained = 3, 2, tmp_path / "trained.ebp"
    out = run(capsys, "train", "--port", board.port, "--net", iris_net, "--on-board", "iris",
              "--on-board-val", "iris_val", "--epochs", epochs, "--seed", seed, "-o", trained)
    assert "data      120 samples on the board (iris), held out: 30 (iris_val)" in out
    assert "samples/s from the board's own data" in out
    # the rows of streaming the same samples in the same order: the twin's
    qnet, hyper, Xq, Tq, Xv, Tv = iris(iris_net, seed=seed)
    expected = twin_run(qnet, hyper, Xq, Tq, epochs, Xv=Xv, Tv=Tv)
    lines = out.splitlines()
    for line in expected.lines:
        assert line in lines
    assert expected.val is not None
    assert (f"held out  30 samples: loss {expected.val[0]:.4f}, accuracy "
            f"{100 * expected.val[1]:.1f}%") in out
    same_weights(trained, expected.trained)


def test_power_cut_while_training_on_board_then_resume(board, iris_net, tmp_path, capsys,
                                                       monkeypatch):
    run(capsys, "data", "push", TRAIN, "--net", iris_net, "--port", board.port,
        "--name", "iris")
    epochs, seed, batch = 4, 3, 5
    common = ["--port", board.port, "--net", iris_net, "--on-board", "iris", "--epochs",
              epochs, "--seed", seed, "--batch", batch]
    real = Session.train_on_board
    calls = []

    def power_cut_in_epoch_3(self, name, state, n, start=0, **kw):
        calls.append(start)
        if len(calls) < 3:
            return real(self, name, state, n, start, **kw)

        def progress(done, total):
            if done >= 16:
                board.board.kill()  # qemu dies at once: the power is cut
                raise KeyboardInterrupt  # and the user stops the command

        return real(self, name, state, n, start, **dict(kw, progress=progress))

    with monkeypatch.context() as m:
        m.setattr(Session, "train_on_board", power_cut_in_epoch_3)
        out = run(capsys, "train", *common, "--checkpoint-every", 3, code=130)
    assert "interrupted" in out and len(calls) == 3 and not board.board.running

    board.board.boot()  # power back on, on the same flash: RAM lost, files kept
    trained = tmp_path / "trained.ebp"
    common[1] = board.port
    out = run(capsys, "train", *common, "--resume", "-o", trained)
    resumed = int(out.split("resumed   checkpoint ")[1].split(": ")[1].split()[0])
    n = len(data.read(TRAIN))
    # a checkpoint every 3 updates of 5 samples: the last one before sample 16 of epoch 3
    assert resumed == 2 * n + 15
    assert f"going on at epoch 3, sample {resumed - 2 * n + 1}" in out
    qnet, hyper, Xq, Tq, _, _ = iris(iris_net, batch=batch, seed=seed)
    expected = twin_run(qnet, hyper, Xq, Tq, epochs, first=3)
    assert expected.lines[0] in out.splitlines()  # epoch 4, all of it after the resume
    same_weights(trained, expected.trained)
