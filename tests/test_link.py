"""Sessions end to end: host link -> serial URL -> simulated board, on a clean and a lossy line.

Whatever the line, the board trains exactly as the core Net trains under CPython with the same
sample order: the weights are compared bit for bit.
"""

import binascii
import os
import struct
import threading
import time
import tty
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import require_runtime
from edgebp import wire
from edgebp.firmware.server import Server
from edgebp.host.boards import link as link_module
from edgebp.host.boards.link import (
    DeviceError,
    Link,
    LinkError,
    VersionError,
    find_port,
    list_boards,
    open_serial,
)
from edgebp.host.boards.lossy import LossySerial
from edgebp.host.boards.session import Session, SessionError, _parse_info
from edgebp.host.boards.sim import InProcessBoard
from edgebp.host.nets import ebpfile
from edgebp.host.nets.qnet import Hyper
from test_ebp import HYPER, make_data, make_qnet
from test_server import Board, Pipe


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


def test_a_server_that_stopped_is_named_by_its_traceback_not_blamed_on_the_link():
    # a board whose server died (out of memory building its buffers) printed why on the line
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        # printed while the host says HELLO (what came before, the session drops as stale),
        # again and again until the host gives up
        done = threading.Event()

        def board():
            while not done.wait(0.01):
                os.write(master, b'Traceback (most recent call last):\n  File "<stdin>", '
                                 b'line 1, in <module>\nMemoryError: memory allocation '
                                 b'failed, allocating 4120 bytes\n')

        printing = threading.Thread(target=board)
        printing.start()
        try:
            with pytest.raises(SessionError, match=r"the board's server stopped: MemoryError: "
                                                   r"memory allocation failed, allocating 4120"):
                Session(os.ttyname(slave), timeout=0.05, retries=3, connect_timeout=0)
        finally:
            done.set()
            printing.join()
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
    link = Link(open_serial("loop://"), timeout=0.05, retries=1, give_up=0.2)
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


# -- a bad line: the link keeps going, and when it stops it blames the line --

def test_five_percent_lost_damaged_and_doubled_each_way_gives_the_same_weights():
    # Each byte is lost, damaged or doubled with chance 0.15 both ways, so a frame of n bytes
    # arrives whole with 0.85**n: 4% for a 20-byte TRAIN frame, 3e-5 for the INFO answer to
    # HELLO in one piece. Copies of each frame and answers fetched in slices get through.
    def lossy(ser):
        return LossySerial(ser, drop=0.05, corrupt=0.05, duplicate=0.05, seed=4)

    with InProcessBoard("pty") as board:
        with Session(board.url, timeout=0.01, retries=3, frame_bytes=16, wrap=lossy,
                     connect_timeout=30) as s:
            assert s.info.board == "sim" and s.info.runtime.startswith("cpython")
            train_and_compare(s, "mse", n=10, epochs=1, sizes=(2, 3, 1))
            damage = s.link.ser.damage
            assert min(damage.dropped, damage.corrupted, damage.duplicated) > 0.04 * (
                damage.passed + damage.dropped + damage.corrupted + damage.duplicated)
            assert s.counters.parts > 0 and s.counters.bad > s.counters.good
        assert board.error is None


class FastClock:
    """Monotonic time running `speed` times faster than the real one."""

    def __init__(self, speed):
        self.speed = speed
        self.t0 = time.monotonic()

    def __call__(self):
        return self.t0 + (time.monotonic() - self.t0) * self.speed


def test_training_goes_on_after_a_30_second_stall(monkeypatch):
    # The link's clock and the stall run 20 times faster than real time: the stall is 30 s of
    # the clock the link waits and gives up by (1.5 s real), with the default give-up time
    # and a 0.4 s timeout (20 ms real); the board itself has no clock.
    clock = FastClock(20)
    monkeypatch.setattr(link_module, "_now", clock)
    with InProcessBoard("pty") as board:
        def cable(ser):
            return LossySerial(ser, clock=clock)

        with Session(board.url, timeout=0.4, frame_bytes=32, wrap=cable) as s:
            ser = s.link.ser
            stalled = []

            def progress(done, total):
                if done >= 8 and not stalled:
                    ser.stall(30.0)
                    stalled.append(clock())

            q = make_qnet("mse", sizes=(4, 5, 1))
            X, T = make_data(q, 24)
            s.load(q, HYPER)
            s.train(X, T, progress=progress)
            assert clock() - stalled[0] >= 30.0 and ser.damage.stalled > 0
            ref = q.build(HYPER)
            for i in range(24):
                ref.learn(X[i].tolist(), T[i].tolist())
            assert same_as(ref, *s.get_weights())
        assert board.error is None


def test_a_line_that_loses_too_much_is_blamed_not_the_board():
    def hopeless(ser):
        return LossySerial(ser, drop=0.3, corrupt=0.3, duplicate=0.2, seed=1)

    with InProcessBoard("pty") as board:
        with pytest.raises(SessionError, match=r"hello: HELLO: serial link failing: (\d+) of "
                           r"\1 frames damaged or lost in 0\.\d s .*check the cable"):
            Session(board.url, timeout=0.01, wrap=hopeless, connect_timeout=0.5)


def test_a_stopped_line_after_answers_is_blamed_not_the_board():
    with InProcessBoard("pty") as board:
        with Session(board.url, timeout=0.02, give_up=0.3, wrap=LossySerial) as s:
            s.link.ser.stall(60)
            with pytest.raises(SessionError, match=r"stats: STATS: serial link silent: no "
                               r"answer to \d+ frames in 0\.\d s, after 1 answers before"):
                s.stats()


# -- protocol versions: a board and a host of different versions say so --

def old_frame(seq, kind, payload):
    # a frame of protocol 1: sealed with CRC-16/CCITT-FALSE
    raw = bytes([seq, kind]) + payload
    raw += struct.pack("<H", binascii.crc_hqx(raw, 0xFFFF))
    out = bytearray(wire.encoded_max(len(raw)))
    return bytes(out[:wire.encode(raw, len(raw), out)])


class OldBoard:
    """A serial-like board of protocol 1: every frame of protocol 2 fails its CRC-16, and it
    answers each with a link error, as its server did."""

    timeout = 0.01

    def __init__(self):
        self.out = b""

    def write(self, data):
        for piece in bytes(data).split(b"\x00"):
            if piece:
                self.out += old_frame(0, wire.ERROR, bytes([wire.E_CRC]) + b"crc mismatch")
        return len(data)

    def read(self, n=1):
        got, self.out = self.out[:n], self.out[n:]
        return got

    @property
    def in_waiting(self):
        return len(self.out)

    def close(self):
        pass


def test_a_board_of_protocol_1_is_refused_by_name():
    link = Link(OldBoard(), timeout=0.01)
    with pytest.raises(VersionError, match="the board speaks protocol 1 .frames sealed with "
                       "CRC-16., this host 2: deploy the matching firmware"):
        link.request(wire.HELLO, bytes([wire.PROTOCOL]))


def test_a_host_of_protocol_1_gets_an_info_it_can_refuse():
    pipe = Pipe()
    server = Server(pipe, pipe, 256, 4, "test")
    pipe.inp += old_frame(7, wire.HELLO, b"\x01")
    assert server.step()
    # the answer is sealed with protocol 1's CRC-16 (not the CRC-32: the decoder refuses it),
    # an INFO that a host of protocol 1 parses, saying protocol 2
    dec = wire.Decoder(256)
    dec.feed(pipe.out, 0, len(pipe.out))
    assert dec.result == -wire.E_CRC
    raw = bytes(dec.frame[:dec.last])
    assert binascii.crc_hqx(raw[:-2], 0xFFFF) == struct.unpack("<H", raw[-2:])[0]
    assert raw[:2] == bytes([7, wire.INFO])
    info = _parse_info(raw[2:-2])
    assert (info.protocol, info.firmware, info.sizes) == (2, "", None)
    # and the board goes on serving protocol 2
    pipe.inp += wire.frame(0, wire.HELLO, bytes([wire.PROTOCOL]))
    pipe.out.clear()
    assert server.step()
    dec.feed(pipe.out, 0, len(pipe.out))
    assert dec.result > 0 and dec.frame[1] == wire.INFO


def test_again_fetches_slices_of_the_kept_answer_and_leaves_it_kept():
    b = Board()
    b.ask(wire.HELLO, bytes([wire.PROTOCOL]))
    seq, kind, counts = b.ask(wire.STATS, b"\x00")
    assert kind == wire.COUNTS and len(counts) == 26

    def part(off, count, seq=seq):
        return b.send(wire.AGAIN, struct.pack("<HB", off, count), seq=seq)

    assert part(0, 10) == [(seq, wire.PART, struct.pack("<BHH", wire.COUNTS, 26, 0) + counts[:10])]
    assert part(20, 200) == [(seq, wire.PART, struct.pack("<BHH", wire.COUNTS, 26, 20)
                              + counts[20:])]
    assert part(300, 5) == [(seq, wire.PART, struct.pack("<BHH", wire.COUNTS, 26, 26))]
    # not done yet: the board names the frame it expects; nor is AGAIN done as a request
    (err,) = part(0, 10, seq=seq + 1)
    assert err[:2] == (seq + 1, wire.ERROR) and err[2][0] == wire.E_SEQ
    # the kept answer is still whole for a repeat, and the numbering goes on
    assert b.send(wire.STATS, b"\x00", seq=seq) == [(seq, wire.COUNTS, counts)]
    assert b.ask(wire.STATS, b"\x00")[:2] == (seq + 1, wire.COUNTS)
