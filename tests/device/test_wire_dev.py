# The wire codec and the server on the device: the same results as on the host, and serving
# TRAIN and EVAL frames allocates nothing. wire_fixture (made by tests/test_wire.py) holds a
# net file, the frames that load it, TRAIN frames, their samples and the weights the host's
# reference training reached.
import wire_fixture as fx

from devtest import no_alloc
from edgebp import ebp, wire
from edgebp.firmware.server import Server


class MemStream:
    # input and output in buffers made up front: readinto and write allocate nothing
    def __init__(self, size_in, size_out):
        self.inp = bytearray(size_in)
        self.n_in = 0
        self.pos = 0
        self.out = bytearray(size_out)
        self.n_out = 0

    def push(self, data):
        for i in range(len(data)):
            self.inp[self.n_in + i] = data[i]
        self.n_in += len(data)

    def readinto(self, buf, n):
        k = self.n_in - self.pos
        if k > n:
            k = n
        p = self.pos
        inp = self.inp
        for i in range(k):
            buf[i] = inp[p + i]
        self.pos = p + k
        return k

    def write(self, buf, n):
        o = self.n_out
        out = self.out
        for i in range(n):
            out[o + i] = buf[i]
        self.n_out = o + n
        return n


def replies(s):
    # (seq, type, payload) of every frame the server wrote
    dec = wire.Decoder(2048)
    got = []
    i = 0
    while i < s.n_out:
        i = dec.feed(s.out, i, s.n_out)
        if dec.result > 0:
            got.append(wire.parse(dec, dec.result))
    return got


def serve_all(server):
    while server.step():
        pass


def test_crc16_check_value():
    assert wire.crc16(b"123456789", 0, 9) == 0x29B1


def test_crc32_check_value():
    # in bytes: the CRC-32 is no small int on a board
    b = bytearray(4)
    wire.crc32_put(b"123456789", 0, 9, b, 0)
    assert list(b) == [0x26, 0x39, 0xF4, 0xCB]


def test_cobs_round_trip():
    raw = bytearray(300)
    for i in range(300):
        raw[i] = (i * 7) % 5 * 60  # zeros and blocks of every length
    enc = bytearray(wire.encoded_max(300))
    dec = wire.Decoder(400)
    m = wire.seal(raw, 296)
    n = wire.encode(raw, m, enc)
    dec.feed(enc, 0, n)
    assert dec.result == 296
    for i in range(296):
        assert dec.frame[i] == raw[i]


def test_encode_and_decode_allocate_nothing():
    raw = bytearray(200)
    for i in range(196):
        raw[i] = i & 0x3F
    m = wire.seal(raw, 196)
    enc = bytearray(wire.encoded_max(200))
    dec = wire.Decoder(256)
    n = no_alloc(wire.encode, raw, m, enc)
    no_alloc(dec.feed, enc, 0, n)
    assert dec.result == 196
    enc[5] ^= 0x40  # a damaged frame is refused without allocating either
    no_alloc(dec.feed, enc, 0, n)
    assert dec.result == -wire.E_CRC


def test_parser_loads_the_host_file_in_pieces():
    ld = ebp.Loader(len(fx.NET))
    for i in range(0, len(fx.NET), 5):
        ld.feed(fx.NET, i, min(i + 5, len(fx.NET)))
    net = ld.finish()
    assert net.sizes == [6, 5, 3]


def test_serving_train_frames_allocates_nothing_and_matches_the_host():
    s = MemStream(len(fx.SETUP) + 2048, 8192)
    server = Server(s, s, 1024, 4, "test")
    s.push(fx.SETUP)
    serve_all(server)
    kinds = [r[1] for r in replies(s)]
    assert kinds == [wire.INFO, wire.ACK, wire.ACK, wire.ACK], kinds
    for f in fx.TRAIN:
        s.push(f)
    step = server.step
    for _ in fx.TRAIN:
        assert no_alloc(step) is True
    got = replies(s)[4:]
    # an allocation under the lock shows up as an answer saying "out of memory"
    assert [r[1] for r in got] == [wire.ACK] * len(fx.TRAIN), repr(got)
    net = server.net
    for l in range(net.L):
        assert list(net.W[l]) == fx.W[l], "weights of layer %d" % (l + 1)
        assert list(net.B[l]) == fx.B[l]
    # a slice of the last answer, fetched again, allocates nothing either
    last = got[-1][0]
    s.push(wire.frame(last, wire.AGAIN, b"\x00\x00\x08"))
    assert no_alloc(step) is True
    assert replies(s)[-1] == (last, wire.PART, bytes([wire.ACK, 1, 0, 0, 0]) + got[-1][2])


def test_serving_eval_frames_allocates_nothing():
    s = MemStream(len(fx.SETUP) + 2048, 8192)
    server = Server(s, s, 1024, 4, "test")
    s.push(fx.SETUP)
    serve_all(server)
    # the TRAIN frames' bytes with the type changed: the same samples, evaluated
    dec = wire.Decoder(1024)
    frames = []
    for f in fx.TRAIN:
        dec.feed(f, 0, len(f))
        raw = bytearray(dec.frame[0:dec.result])
        raw[1] = wire.EVAL
        m = len(raw)
        raw.extend(bytes(wire.TRAILER))
        m = wire.seal(raw, m)
        enc = bytearray(wire.encoded_max(m))
        frames.append(enc[:wire.encode(raw, m, enc)])
    for f in frames:
        s.push(f)
    step = server.step
    for _ in frames:
        assert no_alloc(step) is True
    got = replies(s)[4:]
    assert [r[1] for r in got] == [wire.COUNTS] * len(frames), repr(got)
    assert server.e_seen == len(fx.X)
    # evaluation leaves the net as it was
    assert server.net.seen == 0


def test_hostile_frames_get_errors_and_the_server_goes_on():
    s = MemStream(4096, 8192)
    server = Server(s, s, 256, 4, "test")
    s.push(fx.SETUP)
    s.push(wire.frame(4, wire.TRAIN, b"\x05\x00\x01"))  # says 5 samples, carries 1 byte
    s.push(wire.frame(5, 0x55))  # unknown type
    s.push(wire.frame(6, wire.GET_WEIGHTS, b"\x07\x00\x00\x00\x00\x00\x01\x00"))
    s.push(b"\x05\x01\x02\x03\x00")  # COBS block cut short
    s.push(wire.frame(7, wire.STATS, b"\x00"))
    serve_all(server)
    got = replies(s)[4:]
    assert [(r[1], r[2][0]) for r in got[:4]] == [
        (wire.ERROR, wire.E_LEN), (wire.ERROR, wire.E_TYPE), (wire.ERROR, wire.E_RANGE),
        (wire.ERROR, wire.E_FRAME)]
    assert got[3][0] == 7  # a link error names the frame expected next
    assert got[4][:2] == (7, wire.COUNTS)

