"""Sessions end to end: host link -> serial URL -> simulated board, on a clean and a lossy line.

Whatever the line, the board trains exactly as the core Net trains under CPython with the same
sample order: the weights are compared bit for bit.
"""

import os
import struct
import tty
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import require_runtime
from edgebp import wire
from edgebp.host.boards.link import (
    DeviceError,
    Link,
    LinkError,
    find_port,
    list_boards,
    open_serial,
)
from edgebp.host.boards.lossy import LossySerial
from edgebp.host.boards.session import Session, SessionError
from edgebp.host.boards.sim import InProcessBoard
from edgebp.host.nets import ebpfile
from edgebp.host.nets.qnet import Hyper
from test_ebp import HYPER, make_data, make_qnet


def same_as(ref, W, B):
    return all(W[l].ravel().tolist() == list(ref.W[l]) and B[l].tolist() == list(ref.B[l])
               for l in range(ref.L))


def train_and_compare(session, kind="ce", n=40, epochs=2, hyper=HYPER, sizes=(6, 9, 4)):
    q = make_qnet(kind, sizes=sizes, momentum=hyper.momentum > 0)
    X, T = make_data(q, n)
    rng = np.random.default_rng(11)
    orders = [rng.permutation(n) for _ in range(epochs)]
    session.load(q, hyper)
    ref = q.build(hyper)
    for order in orders:
        result = session.train(X, T, order)
        ref.reset_stats()
        for i in order:
            ref.learn(X[i].tolist(), T[i].tolist())
        assert (result.samples, result.loss, result.accuracy) == (
            n, ref.loss_sum / 4096 / n, ref.correct / n)
    W, B = session.get_weights()
    assert same_as(ref, W, B)
    return q, X, T, ref


@pytest.mark.parametrize("port", ["sim://", "sim://socket"])
def test_in_process_board_trains_bit_identically(port):
    with Session(port, timeout=0.5) as s:
        assert s.info.runtime.startswith("cpython")
        q, X, T, ref = train_and_compare(s, "ce")
        st = s.stats()
        assert (st.seen, st.correct, st.loss_sum) == (ref.seen, ref.correct, ref.loss_sum)
        assert s.bye()


def test_micropython_process_board_trains_bit_identically():
    require_runtime("unix")
    hyper = Hyper(lr=0.05, momentum=0.5, weight_decay=1e-3, batch=3, rounding="stochastic",
                  seed=3)
    with Session("sim://micropython", timeout=0.5) as s:
        assert s.info.runtime.startswith("micropython") and s.info.board == "unix"
        train_and_compare(s, "bce", hyper=hyper)
        board = s.board
        assert s.bye()
    assert board.proc.returncode == 0, board.stderr


def test_lossy_line_gives_the_same_weights():
    # 1% of the bytes dropped, 1% damaged, 1% doubled, both ways. Frames of one sample keep
    # the chance of an intact frame reasonable; the retries cover the rest.
    def lossy(ser):
        return LossySerial(ser, drop=0.01, corrupt=0.01, duplicate=0.01, seed=4)

    with InProcessBoard("pty") as board:
        with Session(board.url, timeout=0.03, retries=60, frame_bytes=16, wrap=lossy) as s:
            train_and_compare(s, "mse", n=30, epochs=1, sizes=(4, 5, 1))
            damage = s.link.ser.damage
            assert damage.dropped and damage.corrupted and damage.duplicated
            assert s.counters.resent > 0
        assert board.error is None


def test_evaluate_and_gradients_match_the_core():
    q = make_qnet("ce", sizes=(6, 9, 4), batch_max=16)
    X, T = make_data(q, 12)
    with Session("sim://", timeout=0.5) as s:
        s.load(q, HYPER)
        ev = s.evaluate(X, T)
        ref = q.build(HYPER)
        for i in range(12):
            ref.forward(X[i].tolist())
            ref.backward(T[i].tolist())
        assert ev.samples == 12
        assert ev.loss == ref.loss_sum / 4096 / 12 and ev.accuracy == ref.correct / 12
        s.train(X, T, accumulate=True)
        GW, GB = s.get_grads()
        assert all(GW[l].ravel().tolist() == list(ref.GW[l]) for l in range(ref.L))
        assert all(GB[l].tolist() == list(ref.GB[l]) for l in range(ref.L))
        assert s.stats().pending == 12
        s.train(X[:0], T[:0], update=True)
        ref.update()
        assert same_as(ref, *s.get_weights())
        assert s.pull().W[0].tolist() == np.asarray(ref.W[0]).reshape(9, 6).tolist()


def test_progress_and_loading_a_file(tmp_path):
    q = make_qnet("ce", sizes=(6, 9, 4))
    ebpfile.write(tmp_path / "n.ebp", q, HYPER)
    X, T = make_data(q, 25)
    seen = []
    with Session("sim://", timeout=0.5, frame_bytes=64) as s:
        s.load(tmp_path / "n.ebp", progress=lambda done, total: seen.append((done, total)))
        assert seen[-1][0] == seen[-1][1] == len(ebpfile.board_part(q, HYPER))
        seen.clear()
        s.train(X, T, progress=lambda done, total: seen.append((done, total)))
        assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1] == (25, 25)


def test_board_refusals_become_one_line_session_errors():
    with Session("sim://", timeout=0.5) as s:
        with pytest.raises(SessionError, match="no net on the board"):
            s.train(np.zeros((1, 6)), np.zeros((1, 1)))
        s.load(make_qnet("ce", sizes=(6, 9, 4)), HYPER)
        with pytest.raises(SessionError, match="inputs have shape"):
            s.train(np.zeros((1, 5)), np.zeros((1, 1)))
        with pytest.raises(SessionError, match="class indices"):
            s.train(np.zeros((1, 6)), np.full((1, 1), 4))
        with pytest.raises(SessionError) as err:
            s.set_hyper(Hyper(lr=100.0))
        assert err.value.code == wire.E_VALUE
        assert str(err.value) == ("set hyper-parameters: the board refused: value out of "
                                  "range (learning rate too large for the formats of layer 1)")
        assert isinstance(err.value.__cause__, DeviceError)
        assert s.stats().seen == 0  # still serving
        with pytest.raises(SessionError, match="load: /nonexistent.ebp: .*No such file"):
            s.load("/nonexistent.ebp")
        with pytest.raises(SessionError, match="load: bad magic"):
            s.load(b"NOPE" + bytes(40))


def test_a_refused_frame_in_a_stream_is_reported_after_the_stream_drains():
    q = make_qnet("ce", sizes=(6, 9, 4))
    X, T = make_data(q, 6)
    with Session("sim://", timeout=0.5) as s:
        s.load(q, HYPER)
        good = bytes([1, 0]) + X[0].astype("<i2").tobytes() + T[0].astype("<i2").tobytes()
        bad = good[:-2] + struct.pack("<h", 9)  # class 9 of 4
        frames = [(wire.TRAIN, good, 1), (wire.TRAIN, bad, 1), (wire.TRAIN, good, 1)]
        with pytest.raises(DeviceError, match="TRAIN: board says value out of range"):
            s.link.stream(iter(frames))
        assert s.stats().seen == 2  # the frames after it were still served, in order


def test_no_board_on_the_line():
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        with pytest.raises(SessionError, match="no answer from the board after 3 tries"):
            Session(os.ttyname(slave), timeout=0.02, retries=3, connect_timeout=0)
    finally:
        os.close(master)
        os.close(slave)


def test_missing_port_is_a_link_error():
    with pytest.raises(LinkError, match="cannot open /dev/nonexistent-edgebp"):
        open_serial("/dev/nonexistent-edgebp")
    with pytest.raises(SessionError, match="cannot open"):
        Session("/dev/nonexistent-edgebp")


def fake_port(device, vid, description=""):
    return SimpleNamespace(device=device, vid=vid, pid=1, description=description)


def test_port_discovery():
    ports = [fake_port("/dev/ttyS0", None), fake_port("/dev/ttyACM0", 0x2E8A, "Board in FS"),
             fake_port("/dev/ttyUSB0", 0x0403), fake_port("/dev/ttyUSB1", 0x1234)]
    assert [b.device for b in list_boards(ports)] == ["/dev/ttyACM0", "/dev/ttyUSB0"]
    assert list_boards(ports)[0].kind.startswith("rp2")
    assert find_port("auto", ports[:2]) == "/dev/ttyACM0"
    assert find_port("/dev/ttyX", []) == "/dev/ttyX"
    with pytest.raises(LinkError, match="2 boards found: /dev/ttyACM0 .rp2"):
        find_port("auto", ports)
    with pytest.raises(LinkError, match="no board found"):
        find_port("auto", ports[3:])


def test_link_over_loop_url_sees_its_own_frames():
    # loop:// echoes: a frame comes back as sent, which is not an answer to it
    link = Link(open_serial("loop://"), timeout=0.05, retries=1)
    with pytest.raises(LinkError):
        link.request(wire.STATS, b"\x00")
    link.close()


def test_session_starts_the_server_from_the_repl_and_leaves_the_prompt():
    with InProcessBoard("pty", repl=True) as board:
        with Session(board.url, timeout=0.2, start=True) as s:
            assert s.info.board == "sim"
            s.load(make_qnet(), HYPER)
            assert s.bye()
        # a second session finds the prompt again and starts the server again
        with Session(board.url, timeout=0.2, start=True) as s:
            assert s.info.sizes is None
            # a session that ends without BYE leaves the server running: the next one
            # finds it answering and does not go through the REPL
        with Session(board.url, timeout=0.2, start=True) as s:
            assert s.info.board == "sim"
            assert s.bye()
        assert board.error is None


def test_missing_firmware_is_reported_from_the_traceback():
    with InProcessBoard("pty", repl=True, firmware=False) as board:
        with pytest.raises(SessionError, match="could not start the edgebp server: "
                           "ImportError: no module named 'edgebp.firmware'"):
            Session(board.url, timeout=0.2, start=True)
