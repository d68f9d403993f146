"""The firmware server under CPython, fed frames from memory: every message type, and every
kind of bad input answered with an error naming it while the server goes on serving."""

import struct
from array import array

import numpy as np
import pytest

from edgebp import fixed, wire
from edgebp.firmware.server import Server
from edgebp.host.nets import ebpfile
from edgebp.host.nets.qnet import Hyper
from test_ebp import HYPER, make_data, make_qnet, reference_train


class Pipe:
    """Bytes in, bytes out, with the stream calls the server uses."""

    def __init__(self):
        self.inp = bytearray()
        self.pos = 0
        self.out = bytearray()

    def readinto(self, buf, n):
        k = min(n, len(self.inp) - self.pos)
        buf[:k] = self.inp[self.pos:self.pos + k]
        self.pos += k
        return k

    def write(self, buf, n):
        self.out += bytes(buf[:n])
        return n


class Board:
    def __init__(self, max_payload=256, credits=4, root="", heap=0):
        self.pipe = Pipe()
        budget = {"heap": heap} if heap else {}
        self.server = Server(self.pipe, self.pipe, max_payload, credits, "test", root=root,
                             **budget)
        self.seq = 0
        self.dec = wire.Decoder(70000)
        self.running = True

    def raw(self, data):
        """Feed bytes, serve until they are used up; the frames the server answered."""
        self.pipe.inp += data
        start = len(self.pipe.out)
        while self.running and self.pipe.pos < len(self.pipe.inp):
            self.running = self.server.step()
        out = bytes(self.pipe.out[start:])
        got, i = [], 0
        while i < len(out):
            i = self.dec.feed(out, i, len(out))
            if self.dec.result > 0:
                got.append(wire.parse(self.dec, self.dec.result))
            else:
                assert self.dec.result == wire.INCOMPLETE, "server sent a bad frame"
        return got

    def send(self, kind, payload=b"", seq=None):
        if seq is None:
            seq = self.seq
            self.seq = (seq + 1) & 0xFF
        return self.raw(wire.frame(seq, kind, payload))

    def ask(self, kind, payload=b""):
        seq = self.seq
        (reply,) = self.send(kind, payload)
        assert reply[0] == seq
        return reply

    def ok(self, kind, payload=b""):
        reply = self.ask(kind, payload)
        assert reply[1] == wire.ACK, error_of(reply)
        return reply

    def refused(self, kind, payload, code, words):
        _, k, p = self.ask(kind, payload)
        assert (k, p[0]) == (wire.ERROR, code), (k, p)
        assert words in p[1:].decode(), p[1:]
        # and the server goes on serving
        assert self.ask(wire.STATS, b"\x00")[1] == wire.COUNTS

    def load(self, qnet, hyper=HYPER, chunk=50):
        data = ebpfile.to_bytes(qnet, hyper, trailer=False)
        self.ok(wire.LOAD_BEGIN, struct.pack("<I", len(data)))
        for off in range(0, len(data), chunk):
            self.ok(wire.LOAD_CHUNK, struct.pack("<I", off) + data[off:off + chunk])
        self.ok(wire.LOAD_COMMIT)

    def weights(self, kind=wire.GET_WEIGHTS, size=2):
        net = self.server.net
        out = []
        for l in range(net.L):
            for part, n in ((wire.PART_W, net.sizes[l] * net.sizes[l + 1]),
                            (wire.PART_B, net.sizes[l + 1])):
                vals = []
                step = 20
                for off in range(0, n, step):
                    c = min(step, n - off)
                    head = struct.pack("<BBIH", l, part, off, c)
                    _, k, p = self.ask(kind, head)
                    assert k == wire.DATA and p[:8] == head
                    vals += struct.unpack(f"<{c}{'h' if size == 2 else 'i'}", p[8:])
                out.append(vals)
        return out


def error_of(reply):
    return wire.ERROR_NAMES.get(reply[2][0]), reply[2][1:] if reply[1] == wire.ERROR else reply


def samples(X, T, idx, flags=0):
    body = b"".join(X[i].astype("<i2").tobytes() + T[i].astype("<i2").tobytes() for i in idx)
    return bytes([len(idx), flags]) + body


def stats(board, reset=False):
    _, k, p = board.ask(wire.STATS, bytes([reset]))
    assert k == wire.COUNTS
    return struct.unpack("<6IH", p)


# -- every message type --

def test_hello_describes_the_board():
    b = Board(max_payload=300, credits=5)
    _, k, p = b.ask(wire.HELLO, b"\x01")
    assert k == wire.INFO
    assert struct.unpack_from("<BBH", p) == (wire.PROTOCOL, 5, 300)
    assert p[8] == 0  # no net yet
    b.load(make_qnet(sizes=(4, 8, 3)))
    _, _, p = b.ask(wire.HELLO, b"\x01")
    assert p[8:12] == bytes([1, 2, fixed.SOFTMAX_CE, 4])


@pytest.mark.parametrize("kind", ["ce", "bce", "mse"])
def test_train_frames_train_like_net_learn(kind):
    q = make_qnet(kind, sizes=(5, 6, 3))
    X, T = make_data(q, 20)
    order = np.random.default_rng(3).permutation(20)
    b = Board()
    b.load(q)
    for i in range(0, 20, 6):
        b.ok(wire.TRAIN, samples(X, T, order[i:i + 6]))
    ref = reference_train(q, HYPER, X, T, order)
    w = b.weights()
    assert w == [list(a) for l in range(ref.L) for a in (ref.W[l], ref.B[l])]
    seen, correct, loss, *_ = stats(b)
    assert (seen, correct, loss) == (ref.seen, ref.correct, ref.loss_sum)


def test_accumulate_then_get_grads_then_update():
    q = make_qnet("ce", sizes=(5, 6, 3), batch_max=8)
    X, T = make_data(q, 7)
    b = Board()
    b.load(q)
    b.ok(wire.TRAIN, samples(X, T, range(7), wire.F_ACCUMULATE))
    ref = q.build(HYPER)
    for i in range(7):
        ref.forward(array("h", X[i].tolist()))
        ref.backward(array("h", T[i].tolist()))
    grads = b.weights(wire.GET_GRADS, 4)
    assert grads == [list(a) for l in range(ref.L) for a in (ref.GW[l], ref.GB[l])]
    assert stats(b)[6] == 7  # pending
    # the sums hold at most batch_max samples
    b.refused(wire.TRAIN, samples(X, T, range(2), wire.F_ACCUMULATE), wire.E_STATE,
              "batch_max")
    b.ok(wire.TRAIN, bytes([0, wire.F_UPDATE]))
    ref.update()
    assert b.weights() == [list(a) for l in range(ref.L) for a in (ref.W[l], ref.B[l])]
    assert stats(b)[6] == 0


def test_eval_counts_without_learning():
    q = make_qnet("ce", sizes=(5, 6, 3))
    X, T = make_data(q, 9)
    b = Board()
    b.load(q)
    before = b.weights()
    _, k, p = b.ask(wire.EVAL, samples(X, T, range(4)))
    assert k == wire.COUNTS and struct.unpack("<6IH", p)[3] == 4
    b.ask(wire.EVAL, samples(X, T, range(4, 9)))
    assert b.weights() == before
    ref = q.build(HYPER)
    loss = correct = 0
    for i in range(9):
        ref.forward(array("h", X[i].tolist()))
        loss += ref.score(array("h", T[i].tolist()))
        correct += ref.good
    seen, _, _, e_seen, e_correct, e_loss, pending = stats(b, reset=True)
    assert (seen, pending) == (0, 0)
    assert (e_seen, e_correct, e_loss) == (9, correct, loss)
    assert stats(b)[3:6] == (0, 0, 0)


@pytest.mark.parametrize("kind", ["ce", "bce", "mse"])
def test_score_matches_backward_and_leaves_gradients(kind):
    q = make_qnet(kind, sizes=(4, 7, 1 if kind == "mse" else 3))
    X, T = make_data(q, 40, seed=5)
    net, ref = q.build(), q.build()
    for i in range(40):
        x, t = array("h", X[i].tolist()), array("h", T[i].tolist())
        net.forward(x)
        ref.forward(x)
        correct = ref.correct
        grads = [bytes(g) for g in net.GW]
        assert net.score(t) == ref.backward(t)
        assert net.good == ref.correct - correct
        assert [bytes(g) for g in net.GW] == grads and net.seen == 0


def test_set_hyper_and_stats_reset():
    q = make_qnet(momentum=True)
    b = Board()
    b.load(q, hyper=None)
    h = Hyper(lr=0.02, momentum=0.5, weight_decay=1e-3, batch=3, rounding="stochastic",
              seed=11)
    b.ok(wire.SET_HYPER, ebpfile.hyper_block(h))
    ref = q.build(h)
    net = b.server.net
    for name in ("lr_m", "lr_e", "batch", "mu", "c_m", "c_s", "mode"):
        assert getattr(net, name) == getattr(ref, name), name
    assert net.rng[0] == ref.rng[0]


def test_bye_ends_serving():
    b = Board()
    b.ok(wire.BYE)
    assert not b.running


# -- bad input --

def test_requests_need_a_net():
    b = Board()
    b.refused(wire.TRAIN, b"\x00\x00", wire.E_NONET, "no net")
    b.refused(wire.GET_WEIGHTS, bytes(8), wire.E_NONET, "no net")
    b.refused(wire.SET_HYPER, bytes(12), wire.E_NONET, "no net")


def test_bad_lengths_and_values():
    q = make_qnet("ce", sizes=(4, 8, 3))
    X, T = make_data(q, 4)
    b = Board()
    b.load(q)
    good = samples(X, T, range(2))
    b.refused(wire.TRAIN, good[:-1], wire.E_LEN, "disagrees with the sample count")
    b.refused(wire.TRAIN, b"\x01", wire.E_LEN, "without a count")
    b.refused(wire.TRAIN, bytes([255, 0]) + good[2:], wire.E_LEN, "sample count")
    T2 = T.copy()
    T2[1, 0] = 3
    b.refused(wire.TRAIN, samples(X, T2, range(2)), wire.E_VALUE, "class index")
    assert stats(b)[0] == 0  # nothing of a refused frame was learned
    b.refused(wire.SET_HYPER, bytes(11), wire.E_LEN, "12-byte")
    b.refused(wire.SET_HYPER, ebpfile.hyper_block(Hyper(lr=0.05))[:1] + b"\x01" + bytes(10),
              wire.E_VALUE, "learning rate too large")
    b.refused(wire.STATS, b"", wire.E_LEN, "reset flag")
    b.refused(wire.LOAD_BEGIN, b"\x01", wire.E_LEN, "u32")
    b.refused(0x7E, b"", wire.E_TYPE, "unknown message type")


def test_tensor_requests_are_bounded():
    b = Board(max_payload=128)
    b.load(make_qnet(sizes=(4, 8, 3)))
    head = struct.Struct("<BBIH")
    b.refused(wire.GET_WEIGHTS, head.pack(2, 0, 0, 1), wire.E_RANGE, "no such layer")
    b.refused(wire.GET_WEIGHTS, head.pack(0, 3, 0, 1), wire.E_RANGE, "no such layer")
    b.refused(wire.GET_GRADS, head.pack(0, 2, 0, 1), wire.E_RANGE, "no such layer")
    # part 2 of the weights: the formats of the L layers, no more
    b.refused(wire.GET_WEIGHTS, head.pack(0, wire.PART_F, 0, 3), wire.E_RANGE, "beyond the end")
    b.refused(wire.GET_WEIGHTS, head.pack(0, 0, 30, 3), wire.E_RANGE, "beyond the end")
    b.refused(wire.GET_WEIGHTS, head.pack(0, 0, 0xFFFFFFFF, 1), wire.E_RANGE, "beyond the end")
    b.refused(wire.GET_GRADS, head.pack(0, 0, 0, 32), wire.E_RANGE, "more values than a frame")
    b.refused(wire.GET_WEIGHTS, head.pack(0, 0, 0, 1)[:7], wire.E_LEN, "8 bytes")


def test_load_protocol_errors():
    q = make_qnet()
    data = ebpfile.to_bytes(q, HYPER, trailer=False)
    b = Board()
    b.refused(wire.LOAD_CHUNK, bytes(8), wire.E_STATE, "before LOAD_BEGIN")
    b.refused(wire.LOAD_COMMIT, b"", wire.E_STATE, "before LOAD_BEGIN")
    b.refused(wire.LOAD_BEGIN, struct.pack("<I", 0xFFFFFFFF), wire.E_RANGE, "2**30")
    b.ok(wire.LOAD_BEGIN, struct.pack("<I", len(data)))
    b.refused(wire.LOAD_CHUNK, struct.pack("<I", 7) + data[:10], wire.E_STATE,
              "chunk at offset 7, expected 0")
    b.ok(wire.LOAD_BEGIN, struct.pack("<I", len(data)))
    b.refused(wire.LOAD_CHUNK, struct.pack("<I", 0) + data + b"xx", wire.E_RANGE,
              "beyond the size")
    b.ok(wire.LOAD_BEGIN, struct.pack("<I", len(data)))
    b.ok(wire.LOAD_CHUNK, struct.pack("<I", 0) + data[:-5])
    b.refused(wire.LOAD_COMMIT, b"", wire.E_EBP, "truncated")


def _trained_board(q, n=6, **kw):
    # a board whose net has learned a few samples: what a refused load must not lose
    X, T = make_data(q, n)
    b = Board(**kw)
    b.load(q)
    b.ok(wire.TRAIN, samples(X, T, range(n)))
    return b, b.weights(), stats(b)[:3]


@pytest.mark.parametrize("damage,words", [
    (lambda d: b"MZ" + d[2:], "bad magic"),
    (lambda d: d[:4] + b"\x07" + d[5:], "unsupported format version 7"),
    (lambda d: d[:-3] + bytes([d[-3] ^ 1]) + d[-2:], "CRC mismatch"),
    (lambda d: d[:-5], "truncated"),
])
def test_bad_net_files_are_refused_and_the_trained_net_kept(damage, words):
    q = make_qnet()
    data = ebpfile.to_bytes(make_qnet(seed=4), HYPER, trailer=False)
    bad = damage(data)
    b, trained, counted = _trained_board(q)
    b.ok(wire.LOAD_BEGIN, struct.pack("<I", len(bad)))
    reply = b.ask(wire.LOAD_CHUNK, struct.pack("<I", 0) + bad)
    if reply[1] == wire.ACK:
        reply = b.ask(wire.LOAD_COMMIT)
    assert reply[1] == wire.ERROR and reply[2][0] == wire.E_EBP
    assert words in reply[2][1:].decode()
    assert b.weights() == trained and stats(b)[:3] == counted
    X, T = make_data(q, 2, seed=9)
    b.ok(wire.TRAIN, samples(X, T, range(2)))  # and it goes on training
    b.load(make_qnet(seed=4))  # and a good file loads after it
    assert b.weights() != trained


def test_a_load_never_committed_leaves_the_trained_net():
    q = make_qnet()
    data = ebpfile.to_bytes(make_qnet(seed=4), HYPER, trailer=False)
    b, trained, counted = _trained_board(q)
    b.ok(wire.LOAD_BEGIN, struct.pack("<I", len(data)))
    b.ok(wire.LOAD_CHUNK, struct.pack("<I", 0) + data[:60])
    # the host gave up on it: the net in use serves meanwhile and after
    assert b.weights() == trained and stats(b)[:3] == counted
    b.refused(wire.LOAD_CHUNK, struct.pack("<I", 0) + data[:10], wire.E_STATE, "expected 60")
    b.ok(wire.LOAD_BEGIN, struct.pack("<I", len(data)))
    assert b.weights() == trained
    _, _, p = b.ask(wire.HELLO, b"\x01")
    assert p[8] == 1  # HELLO still reports a net


def _big_ce(n_in, seed=0):
    return make_qnet("ce", sizes=(n_in, 16, 3), seed=seed)


def test_a_net_that_fits_only_alone_is_refused_beside_the_trained_one():
    # a budget for one net of this size and the server's buffers (under 8 KiB with frames
    # of 1024 bytes), not for two: each takes 6 bytes per parameter and more (int16 weights,
    # int32 gradient sums)
    params = 16 * 201 + 3 * 17
    b, trained, counted = _trained_board(_big_ce(200), n=2, max_payload=1024,
                                         heap=8192 + int(1.5 * 6 * params))
    big = _big_ce(200, seed=4)
    data = ebpfile.to_bytes(big, HYPER, trailer=False)
    b.ok(wire.LOAD_BEGIN, struct.pack("<I", len(data)))
    _, k, p = b.ask(wire.LOAD_CHUNK, struct.pack("<I", 0) + data[:200])
    assert (k, p[0]) == (wire.ERROR, wire.E_ROOM), (k, p)
    text = p[1:].decode()
    need, free = (int(w) for w in text.replace(",", " ").split() if w.isdigit())
    assert need >= 6 * params and free < need, text
    assert b.weights() == trained and stats(b)[:3] == counted
    # dropped on request, the big one fits
    b.ok(wire.DROP)
    b.refused(wire.TRAIN, b"\x00\x00", wire.E_NONET, "no net")
    b.load(big, chunk=200)
    assert b.server.net.sizes == [200, 16, 3]
    # and one of four times its size does not fit even alone: out of memory, nothing built
    huge = ebpfile.to_bytes(_big_ce(800), HYPER, trailer=False)
    b.ok(wire.DROP)
    b.ok(wire.LOAD_BEGIN, struct.pack("<I", len(huge)))
    b.refused(wire.LOAD_CHUNK, struct.pack("<I", 0) + huge[:200], wire.E_MEM, "bytes of RAM")


def test_adam_moments_count_in_the_ram_budget():
    # a budget that holds the net with SGD (6 bytes per parameter and more) but not with
    # Adam (8 more: M and V, int32)
    from edgebp import ebp
    from edgebp.host.nets.qnet import adam_q

    params = 16 * 201 + 3 * 17
    sgd = _big_ce(200)
    adam = _big_ce(200)
    adam.adam = adam_q()
    b = Board(max_payload=1024, heap=8192 + 10 * params)
    b.load(sgd, chunk=200)
    b.ok(wire.DROP)
    data = ebpfile.to_bytes(adam, HYPER, trailer=False)
    b.ok(wire.LOAD_BEGIN, struct.pack("<I", len(data)))
    _, k, p = b.ask(wire.LOAD_CHUNK, struct.pack("<I", 0) + data[:200])
    assert (k, p[0]) == (wire.ERROR, wire.E_MEM), (k, p)
    need = ebp.ram_need(sgd.sizes, False, True)
    assert f"about {need} bytes" in p[1:].decode() and need >= 14 * params
    # with room for it, it loads, and what it holds is out of the free budget
    b = Board(max_payload=1024, heap=8192 + 16 * params)
    b.load(adam, chunk=200)
    assert b.server.net.opt is not None
    b2 = Board(max_payload=1024, heap=8192 + 16 * params)
    b2.load(sgd, chunk=200)
    assert b2.server.budget_free() - b.server.budget_free() == 8 * params


# the header of one 4096x4096 layer: 96 MB of training state announced in 44 bytes
HUGE_HEADER = bytes.fromhex("4542504e01010000010000000000000000000000000000002a20000200100c00"
                            "0010000c0c0c6466")


def test_a_huge_net_is_refused_before_it_is_allocated():
    import tracemalloc

    b = Board(heap=256 * 1024)
    b.ok(wire.LOAD_BEGIN, struct.pack("<I", 0x2000202A))
    tracemalloc.start()
    try:
        _, k, p = b.ask(wire.LOAD_CHUNK, struct.pack("<I", 0) + HUGE_HEADER)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (k, p[0]) == (wire.ERROR, wire.E_MEM), (k, p)
    assert peak < 1 << 20, f"{peak} bytes allocated"


def test_train_before_a_learning_rate_is_refused_and_learns_nothing():
    q = make_qnet("ce", sizes=(2, 4, 3))
    X, T = make_data(q, 3)
    b = Board()
    b.load(q, hyper=None)
    before = b.weights()
    b.refused(wire.TRAIN, samples(X, T, range(3)), wire.E_STATE, "learning rate")
    b.ok(wire.TRAIN, samples(X, T, range(2), wire.F_ACCUMULATE))  # no update: allowed
    b.refused(wire.TRAIN, bytes([0, wire.F_UPDATE]), wire.E_STATE, "learning rate")
    assert b.weights() == before and stats(b)[0] == 2
    b.ok(wire.SET_HYPER, ebpfile.hyper_block(HYPER))
    b.ok(wire.TRAIN, samples(X, T, range(3)))
    assert b.weights() != before


def test_a_checkpoint_that_cannot_be_written_says_what_was_learned(tmp_path):
    q = make_qnet("ce", sizes=(3, 5, 3), batch_max=2)
    X, T = make_data(q, 5)
    b = Board(root=str(tmp_path / "missing"))
    b.load(q)  # HYPER: batch 2, so the first update falls after sample 2
    _, k, p = b.ask(wire.CHECKPOINT, struct.pack("<BH", wire.CK_EVERY, 1))
    assert k == wire.CKPT
    _, k, p = b.ask(wire.TRAIN, samples(X, T, range(5)))
    assert (k, p[0]) == (wire.ERROR, wire.E_CKPT)
    assert p[1:].decode().startswith("3 not learned, update applied"), p
    ref = reference_train(q, HYPER, X, T, range(2))
    assert b.weights() == [list(a) for l in range(ref.L) for a in (ref.W[l], ref.B[l])]
    assert stats(b)[0] == 2
    _, k, p = b.ask(wire.CHECKPOINT, b"\x00\x00\x00")
    gen, saved, learned, updates, every, pending = struct.unpack("<4I2H", p)
    assert (gen, learned, updates, pending) == (0, 2, 1, 0)
    # the frames the host sent ahead are refused unlearned until a checkpoint is settled
    b.refused(wire.TRAIN, samples(X, T, range(2, 5)), wire.E_CKPT, "automatic checkpoint")
    assert stats(b)[0] == 2 and b.weights() == [list(a) for l in range(ref.L)
                                                 for a in (ref.W[l], ref.B[l])]
    _, k, p = b.ask(wire.CHECKPOINT, struct.pack("<BH", wire.CK_EVERY, 0))
    assert k == wire.CKPT
    b.ok(wire.TRAIN, samples(X, T, range(2, 5)))
    ref = reference_train(q, HYPER, X, T, range(5))
    assert b.weights() == [list(a) for l in range(ref.L) for a in (ref.W[l], ref.B[l])]


def test_a_crash_in_a_handler_is_an_internal_error():
    b = Board()
    b.load(make_qnet())

    def broken(x, t):
        raise ZeroDivisionError("boom")

    b.server.net.learn = broken
    X, T = make_data(make_qnet(), 1)
    b.refused(wire.TRAIN, samples(X, T, [0]), wire.E_INTERNAL, "ZeroDivisionError: boom")


# -- the link layer: damaged, repeated and missing frames --

def test_damaged_frames_ask_for_the_expected_frame():
    b = Board()
    b.ask(wire.HELLO, b"\x01")
    good = wire.frame(b.seq, wire.STATS, b"\x00")
    bad = bytearray(good)
    bad[2] ^= 0x40  # the type byte: COBS intact, CRC wrong
    for data, code in [(bytes(bad), wire.E_CRC),
                       (good[:4] + b"\x00", wire.E_FRAME),
                       (b"\x02\x07\x00", wire.E_FRAME),
                       (wire.frame(b.seq, wire.TRAIN, bytes(300)), wire.E_LONG)]:
        (reply,) = b.raw(b"\x00" + data)  # the zero ends the gap of the previous test
        assert reply[0] == b.seq and reply[1] == wire.ERROR and reply[2][0] == code
        assert reply[2][1:].decode() == {1: "crc mismatch", 2: "malformed frame",
                                         3: "frame longer than the buffer"}[code]
    assert b.ask(wire.STATS, b"\x00")[1] == wire.COUNTS


def test_one_error_per_gap_until_the_gap_is_filled():
    b = Board()
    b.ask(wire.HELLO, b"\x01")
    first = b.seq
    ahead = [wire.frame(first + k, wire.STATS, b"\x00") for k in (1, 2, 3)]
    replies = b.raw(b"".join(ahead))
    assert [(r[0], r[1], r[2][0]) for r in replies] == [(first, wire.ERROR, wire.E_SEQ)]
    replies = b.raw(wire.frame(first, wire.STATS, b"\x00") + b"".join(ahead))
    assert [(r[0], r[1]) for r in replies] == [(first + k, wire.COUNTS) for k in range(4)]


def test_repeated_frames_get_the_same_answer_and_are_not_processed_again():
    q = make_qnet()
    X, T = make_data(q, 3)
    b = Board()
    b.load(q)
    train = wire.frame(b.seq, wire.TRAIN, samples(X, T, range(3)))
    b.seq += 1
    (first,) = b.raw(train)
    assert b.raw(train) == [first]
    assert stats(b)[0] == 3
    # an older repeat gets the latest answer: the host matches answers by number
    assert b.raw(train) == [b.raw(wire.frame(b.seq - 1, wire.STATS, b"\x00"))[0]]


def test_hello_restarts_the_numbering():
    b = Board()
    b.ask(wire.STATS, b"\x00")
    assert b.send(wire.HELLO, b"\x01", seq=200)[0][1] == wire.INFO
    b.seq = 201
    assert b.ask(wire.STATS, b"\x00")[1] == wire.COUNTS


def test_a_checkpoint_that_fits_only_alone_is_refused_beside_the_trained_net(tmp_path):
    from edgebp import ckpt

    params = 16 * 201 + 3 * 17  # as above: room for one such net, not two
    saved = _big_ce(200, seed=4)
    ckpt.save(saved.build(HYPER), str(tmp_path), 0, 0, 0)
    b, trained, counted = _trained_board(_big_ce(200), n=2, max_payload=1024,
                                         root=str(tmp_path), heap=8192 + int(1.5 * 6 * params))
    b.refused(wire.RESUME, b"", wire.E_ROOM, "free beside the loaded net")
    assert b.weights() == trained and stats(b)[:3] == counted
    b.ok(wire.DROP)
    _, k, _ = b.ask(wire.RESUME)
    assert k == wire.CKPT
    assert b.weights() == [a.ravel().tolist() for l in range(saved.L)
                           for a in (saved.W[l], saved.B[l])]


def test_sdlm_curvatures_count_in_the_ram_budget():
    # a budget that holds the net with SGD but not with SDLM (2 bytes more per parameter and
    # per unit: HW, HB and C, int16)
    from edgebp import ebp
    from edgebp.host.nets.qnet import sdlm_q

    params = 16 * 201 + 3 * 17
    sgd = _big_ce(200)
    sdlm = _big_ce(200)
    sdlm.sdlm = sdlm_q(0.1, 0.05, (12, 14), (9, 9))
    b = Board(max_payload=1024, heap=4096 + 7 * params)
    b.load(sgd, chunk=200)
    b.ok(wire.DROP)
    data = ebpfile.to_bytes(sdlm, HYPER, trailer=False)
    b.ok(wire.LOAD_BEGIN, struct.pack("<I", len(data)))
    _, k, p = b.ask(wire.LOAD_CHUNK, struct.pack("<I", 0) + data[:200])
    assert (k, p[0]) == (wire.ERROR, wire.E_MEM), (k, p)
    need = ebp.ram_need(sgd.sizes, False, sdlm=True)
    assert f"about {need} bytes" in p[1:].decode() and need >= 8 * params
    # with room for it, it loads, and what it holds is out of the free budget
    b = Board(max_payload=1024, heap=8192 + 10 * params)
    b.load(sdlm, chunk=200)
    assert b.server.net.opt.curv
    b2 = Board(max_payload=1024, heap=8192 + 10 * params)
    b2.load(sgd, chunk=200)
    units = 16 + 3
    assert (b2.server.budget_free() - b.server.budget_free()
            == 2 * params + 2 * units + 10 * (16 + 4 * 2))
