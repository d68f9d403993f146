"""Training from data kept on the board (edgebp/dataset.py, DATASET requests): bit for bit
what streaming the same samples in the same order gives, on every runtime, through resets;
damaged or wrong files refused with nothing learned; the flash planned before a push."""

from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import require_runtime, run_device_module
from edgebp import dataset, wire
from edgebp.host.boards import ondata
from edgebp.host.boards.session import Session
from edgebp.host.boards.sim import InProcessBoard, MicroPythonBoard
from edgebp.host.nets import ebpfile
from edgebp.host.nets.qnet import Hyper
from edgebp.host.nets.reference import epoch_order, epoch_state
from test_ebp import make_data, make_qnet
from test_server import Board as FrameBoard, error_of, stats

HYPER = Hyper(lr=0.05, batch=3, momentum=0.5, rounding="stochastic", seed=11)
TAG = b"\x01\x02\x03\x04"


def write(root, name: str, blob: bytes) -> Path:
    path = Path(root, dataset.path("", name))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return path


def two_pushes(X, T, per_block=5):
    # a file written, then appended to: the first part ends in a short block
    cut = 2 * per_block + 2
    return ondata.encode(X[:cut], T[:cut], TAG, per_block) + ondata.blocks(X[cut:], T[cut:],
                                                                          per_block)


def open_board(kind: str, root):
    if kind == "unix":
        require_runtime("unix")
        return MicroPythonBoard(root=root)
    return InProcessBoard(root=root)


def weights(s: Session):
    W, B = s.get_weights()
    return [w.tolist() for w in W + B]


# -- the same weights as streaming --


@pytest.mark.parametrize("kind,loss", [("cpython", "ce"), ("cpython", "mse"), ("unix", "ce")])
def test_training_from_the_board_is_streaming_bit_for_bit(kind, loss, tmp_path):
    q = make_qnet(loss, (6, 8, 3), momentum=True, batch_max=4)
    X, T = make_data(q, 29)
    N, epochs = len(X), 3
    with open_board(kind, tmp_path / "a") as board, Session(board.url) as s:
        s.load(q, HYPER)
        streamed = [s.train(X, T, epoch_order(N, HYPER.seed, e), update=True)
                    for e in range(epochs)]
        held = s.evaluate(X[:11], T[:11])
        expected = weights(s)
    with open_board(kind, tmp_path / "b") as board, Session(board.url) as s:
        write(board.root, "train", two_pushes(X, T))
        write(board.root, "held", ondata.encode(X[:11], T[:11], TAG, 4))
        s.load(q, HYPER)
        assert s.dataset("train").records == N and s.dataset("train").tag == TAG
        # tiny slices: many requests per epoch, each a few samples, change nothing
        got = [s.train_on_board("train", epoch_state(HYPER.seed, e), N,
                                slice_seconds=1e-4 if e == 1 else 1.0) for e in range(epochs)]
        assert got == streamed
        assert s.evaluate_on_board("held", 11) == held
        assert weights(s) == expected


def test_file_order_and_a_start_inside_the_epoch(tmp_path):
    q = make_qnet("ce", (5, 4, 3), momentum=True, batch_max=4)
    X, T = make_data(q, 17)
    with InProcessBoard(root=tmp_path / "a") as board, Session(board.url) as s:
        s.load(q, HYPER)
        s.train(X, T, np.arange(17), update=True)
        s.train(X, T, epoch_order(17, 3, 0)[9:], update=True)
        expected = weights(s)
    with InProcessBoard(root=tmp_path / "b") as board, Session(board.url) as s:
        write(board.root, "d", ondata.encode(X, T, TAG, 6))
        s.load(q, HYPER)
        s.train_on_board("d", 0, 17)
        assert s.train_on_board("d", epoch_state(3, 0), 17, 9).samples == 8
        assert weights(s) == expected


# -- through resets of the board --


@pytest.mark.parametrize("kind", ["cpython", "unix"])
def test_resets_mid_epoch_resume_bit_for_bit(kind, tmp_path):
    q = make_qnet("ce", (6, 8, 3), momentum=True, batch_max=4)
    X, T = make_data(q, 26)
    N, epochs = len(X), 2
    with InProcessBoard(root=tmp_path / "ref") as board, Session(board.url) as s:
        s.load(q, HYPER)
        for e in range(epochs):
            s.train(X, T, epoch_order(N, HYPER.seed, e), update=True)
        expected = weights(s)
    with open_board(kind, tmp_path / "b") as board, Session(board.url, timeout=0.3,
                                                            retries=2) as s:
        write(board.root, "d", ondata.encode(X, T, TAG, 4))
        s.load(q, HYPER)
        s.checkpoint(every=2, now=False)
        resets = [9, 40]  # samples of the run after which the board resets
        done = 0
        for e in range(epochs):

            def progress(n, total, done=done):
                if resets and done + n >= resets[0]:
                    resets.pop(0)
                    board.reset()

            r = s.train_on_board("d", epoch_state(HYPER.seed, e), N, resume=True,
                                 progress=progress, slice_seconds=1e-4)
            assert r.samples == N
            done += N
        assert not resets, "every reset happened"
        assert s.checkpoint_state().samples == epochs * N
        assert weights(s) == expected


# -- refused, nothing learned --


def request(flags=0, state=0, start=0, count=0, name=b"d"):
    return struct.pack("<BIIIB", flags, state, start, count, len(name)) + name


def test_bad_requests_and_bad_files_are_refused_and_nothing_is_learned(tmp_path):
    q = make_qnet("ce", (4, 5, 3), momentum=True, batch_max=4)
    X, T = make_data(q, 20)
    root = str(tmp_path)
    b = FrameBoard(root=root)
    b.refused(wire.DATASET, request(count=1), wire.E_NONET, "no net")
    b.load(q, None)  # without hyper-parameters
    good = ondata.encode(X, T, TAG, 6)
    write(root, "d", good)
    before = b.weights()
    # no learning rate yet: the net was loaded without hyper-parameters
    b.refused(wire.DATASET, request(count=1), wire.E_STATE, "no learning rate")
    b.ok(wire.SET_HYPER, ebpfile.hyper_block(HYPER))

    def fresh():
        b = FrameBoard(root=root)
        b.load(q, HYPER)
        return b

    b.refused(wire.DATASET, request(count=1) + b"x", wire.E_LEN, "DATASET takes")
    b.refused(wire.DATASET, request(count=1, name=b"../d"), wire.E_VALUE, "name")
    b.refused(wire.DATASET, request(flags=0x80, count=1), wire.E_VALUE, "flags")
    b.refused(wire.DATASET, request(count=1, name=b"none"), wire.E_DATA, "no dataset none")
    b.refused(wire.DATASET, request(start=15, count=6), wire.E_RANGE, "records 15..20 of 20")
    b.refused(wire.DATASET, request(state=1 << 30, count=1), wire.E_RANGE, "beyond 2**30")
    head, block = dataset.HEAD, 4 + 6 * 2 * (4 + 1)
    damaged = bytearray(good)
    damaged[head + 2 * block + 7] ^= 0x40  # the third block of four
    torn = good[:-3]
    wide = ondata.encode(np.hstack([X, X[:, :1]]), T, TAG, 6)
    big = ondata.encode(X, np.full_like(T, 3), TAG, 6)  # class 3 of a 3-output net
    for blob, words in ((bytes(damaged), "block 2 (records 12..17) is damaged"),
                        (torn, "block 3 is torn"), (wide, "the net takes 4 and 1"),
                        (big, "class index 3")):
        write(root, "d", blob)
        b = fresh()  # a new session: a file is checked whole once per session (below)
        b.refused(wire.DATASET, request(count=20), wire.E_DATA, words)
        assert stats(b)[0] == 0 and b.weights() == before
    # a file checked whole in this session is not read whole again unless its size changed
    # (nothing else writes the board's files while the server runs); a new session checks it
    write(root, "d", good)
    assert b.ask(wire.DATASET, request(flags=wire.D_EVAL, count=20))[1] == wire.COUNTS
    write(root, "d", bytes(damaged))
    assert b.ask(wire.DATASET, request(flags=wire.D_EVAL, count=20))[1] == wire.COUNTS
    write(root, "d", torn)
    b.refused(wire.DATASET, request(flags=wire.D_EVAL, count=20), wire.E_DATA, "torn")
    write(root, "d", bytes(damaged))
    b = fresh()
    b.refused(wire.DATASET, request(flags=wire.D_EVAL, count=20), wire.E_DATA, "damaged")
    # and the file made whole again is learned
    write(root, "d", good)
    _, k, p = b.ask(wire.DATASET, request(count=20, flags=wire.F_UPDATE))
    assert k == wire.COUNTS, error_of((0, k, p))
    assert struct.unpack_from("<I", p, 26)[0] == 20 and p[30:34] == TAG
    assert b.weights() != before


def test_the_tag_names_the_input_and_target_maps():
    q = make_qnet("ce", (4, 5, 3), batch_max=4)
    same = replace(q, W=[w + 1 for w in q.W])  # other weights, the same maps
    assert ondata.tag_of(same) == ondata.tag_of(q)
    for other in (replace(q, shift_a=[11, *q.shift_a[1:]]),
                  replace(q, in_offset=np.zeros(4)), replace(q, in_scale=np.full(4, 0.5)),
                  replace(q, classes=["a", "b", "c"])):
        assert ondata.tag_of(other) != ondata.tag_of(q)


# -- the flash, planned before anything is written --


class StubBoard:
    """What plan_push asks a board (its filesystem's block size, free bytes, the file's
    size), answered as a littlefs board with `free` bytes would."""

    def __init__(self, free: int, block: int = 4096, size: int = -1, deployed: int = 1):
        self.answer = repr((block, free, size, deployed)).encode() + b"\r\n"
        self.written = False

    def exec(self, code: str) -> bytes:
        assert "statvfs" in code, "only the flash is read before the plan"
        return self.answer


def test_a_push_beyond_the_free_flash_is_refused_with_the_numbers():
    q = make_qnet("ce", (64, 32, 10), batch_max=4)
    X, T = make_data(q, 1000)
    size = ondata.file_bytes(1000, 64, 1)
    assert size == len(ondata.encode(X, T, TAG)) == 16 + 31 * (4 + 32 * 130) + 4 + 8 * 130
    need = (-(-size // 4096) + 2) * 4096
    plan = ondata.plan_push(StubBoard(need), "digits", X, T, TAG)
    assert (plan.need, plan.records, plan.append) == (need, 1000, False)
    with pytest.raises(ondata.PushError) as e:
        ondata.plan_push(StubBoard(need - 4096), "digits", X, T, TAG)
    fit = ondata.fit_records(need - 4096, 4096, 64, 1)
    assert f"1000 samples need {need:,} bytes" in str(e.value)
    assert f"{need - 4096:,} are free: about {fit:,} samples" in str(e.value)
    assert 900 < fit < 1000
    assert ondata.fit_records(need, 4096, 64, 1) >= 1000
    with pytest.raises(ondata.PushError, match="dataset name"):
        ondata.plan_push(StubBoard(need), "../x", X, T, TAG)
    with pytest.raises(ondata.PushError, match="edgebp deploy"):
        ondata.plan_push(StubBoard(need, deployed=0), "digits", X, T, TAG)


# -- the reader on every runtime --


def test_device_reader(runtime):
    q = make_qnet("ce", (5, 6, 3), momentum=True, batch_max=4)
    X, T = make_data(q, 23)
    per = 4
    blob = two_pushes(X, T, per)
    # 12 records in blocks of 4, then 11 appended: 4, 4 and the last block of 3
    last = len(blob) - (4 + 3 * 2 * 6)
    records = np.hstack([X, T]).ravel().tolist()
    state = epoch_state(5, 2)
    bad_x = X.copy()
    bad_x[7, 2] = -32768
    min16 = ondata.header(5, 1, TAG) + ondata.blocks(X, T, per).replace(
        X[7].astype("<i2").tobytes(), bad_x[7].astype("<i2").tobytes())
    big = ondata.encode(X, np.full_like(T, 3), TAG, per)
    fixture = "\n".join([
        f"BLOB = {blob!r}", f"N_IN = {X.shape[1]}", "N_T = 1", "N_OUT = 3", f"N = {len(X)}",
        f"TAG = {TAG!r}", f"RECORDS = {records!r}", f"STATE = {state}",
        f"ORDER = {epoch_order(len(X), 5, 2).tolist()!r}", f"LAST_BLOCK = {last}",
        f"MIN16 = {min16!r}", f"BIG_CLASS = {big!r}",
        f"NET = {ebpfile.board_part(q, HYPER)!r}", f"BATCH = {HYPER.batch}"]) + "\n"
    run_device_module(runtime, "tests/device/test_dataset_dev.py",
                      extra_files={"data_fixture.py": fixture}, timeout=120)


# -- the command line, on a unix MicroPython with a stock REPL (a stand-in for a board) --


def test_push_then_train_on_board_is_train_data_on_a_stock_board(tmp_path, capsys):
    require_runtime("unix")
    from edgebp.host.cli import parser as cli
    from edgebp.host.nets import ebpfile as ef

    repo = Path(__file__).resolve().parent.parent
    train = repo / "examples" / "data" / "iris_train.csv"
    spec, net = tmp_path / "iris.json", tmp_path / "iris.ebp"

    def run(*args, code=0):
        got = cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        assert got == code, err or out
        return out + err

    run("init", spec, "--data", train, "--hidden", 6)
    run("quantize", spec, "-o", net, "--calib", train)
    with MicroPythonBoard(stock=True, root=tmp_path / "fs") as board:
        run("deploy", "--port", board.url)
        out = run("data", "push", train, "--net", net, "--port", board.url)
        assert "pushed    iris_train: 120 samples on the board, checked by its reader" in out
        assert (tmp_path / "fs" / "data" / "iris_train.ebd").stat().st_size == \
            ondata.file_bytes(120, 4, 1)
        common = ["--port", board.url, "--net", net, "--epochs", 2, "--seed", 4,
                  "--batch", 5]
        a, b = tmp_path / "streamed.ebp", tmp_path / "on_board.ebp"
        streamed = run("train", *common, "--data", train, "-o", a)
        on_board = run("train", *common, "--on-board", "iris_train", "-o", b)
        rows = [ln for ln in streamed.splitlines() if ln[:6].strip().isdigit()]
        assert len(rows) == 2 and all(r in on_board.splitlines() for r in rows)
        qa, qb = ef.read(a)[0], ef.read(b)[0]
        assert all(np.array_equal(x, y) for x, y in zip(qa.W + qa.B, qb.W + qb.B, strict=True))
        # refused in one line: a name it does not hold, a net of other input maps, --data too
        assert "no dataset nothing on the board" in run("train", *common, "--on-board",
                                                        "nothing", code=1)
        spec2, other = tmp_path / "other.json", tmp_path / "other.ebp"
        run("init", spec2, "--data", train, "--hidden", 6, "--input-min", 0, "--input-max", 10)
        run("quantize", spec2, "-o", other, "--calib", train)  # another input map
        assert "quantised for another net's input or target map" in run(
            "train", "--port", board.url, "--net", other, "--on-board", "iris_train", code=2)
        assert "no --data" in run("train", *common, "--on-board", "iris_train", "--data",
                                  train, code=2)


def test_a_checkpoint_the_board_cannot_write_stops_training_from_its_data(tmp_path):
    from edgebp import ckpt
    from edgebp.host.boards.session import SessionError, UnsavedError

    q = make_qnet("ce", (4, 5, 3), batch_max=4)
    X, T = make_data(q, 30)
    hyper = Hyper(lr=0.05, batch=2)
    order = epoch_order(30, 9, 0)
    with InProcessBoard(root=tmp_path / "ref") as board, Session(board.url) as s:
        s.load(q, hyper)
        s.train(X, T, order[:6])
        six = weights(s)
        s.train(X, T, order[6:], update=True)
        whole = weights(s)
    root = tmp_path / "b"
    write(root, "d", ondata.encode(X, T, TAG, 8))
    (root / ckpt.NEW_NAME).mkdir()  # where a checkpoint is written first: it cannot be
    with InProcessBoard(root=root) as board, Session(board.url) as s:
        s.load(q, hyper)
        s.checkpoint(every=3, now=False)
        with pytest.raises(UnsavedError) as caught:
            s.train_on_board("d", epoch_state(9, 0), 30)
        # the third update, after sample 6, was due to be saved: the request stopped there
        assert (caught.value.learned, caught.value.pending) == (6, 0)
        assert "learned 6 of the 30 samples" in str(caught.value)
        assert weights(s) == six
        with pytest.raises(SessionError, match="automatic checkpoint"):
            s.train_on_board("d", epoch_state(9, 0), 30, 6)
        assert weights(s) == six  # held: nothing learned
        s.checkpoint(every=0, now=False)
        assert s.train_on_board("d", epoch_state(9, 0), 30, 6).samples == 24
        assert weights(s) == whole
