"""The wire codec: CRC-16, CRC-32, COBS framing, the incremental decoder; and its device-side
module."""

import binascii
import struct
import zlib
from array import array

import pytest
from hypothesis import given, settings, strategies as st

from conftest import run_device_module
from edgebp import wire
from edgebp.host.nets import ebpfile
from test_ebp import HYPER, make_data, make_qnet, reference_train


def test_crc16_is_ccitt_false():
    # the published check value of CRC-16/CCITT-FALSE
    assert wire.crc16(b"123456789", 0, 9) == 0x29B1


@given(st.binary(max_size=300), st.integers(0, 0xFFFF))
def test_crc16_matches_binascii(data, init):
    assert wire.crc16(data, 0, len(data), init) == binascii.crc_hqx(data, init)


def test_crc_table_stays_in_16_bits():
    assert isinstance(wire.CRC_TABLE, array) and max(wire.CRC_TABLE) <= 0xFFFF
    assert isinstance(wire.CRC32_LO, bytearray) and len(wire.CRC32_LO) == 256
    hi = wire.CRC32_HI
    assert isinstance(hi, array) and len(hi) == 256 and 0 <= min(hi) and max(hi) < 1 << 24


def test_crc32_is_the_zlib_one():
    # the published check value of CRC-32 (ISO-HDLC), and zlib on random data
    assert wire.crc32(b"123456789", 0, 9) == 0xCBF43926


@given(st.binary(max_size=300), st.integers(0, 300), st.integers(0, 300))
def test_crc32_matches_zlib(data, a, b):
    a, b = min(a, b, len(data)), min(max(a, b), len(data))
    assert wire.crc32(data, a, b) == zlib.crc32(data[a:b])
    buf = bytearray(6)
    wire.crc32_put(data, a, b, buf, 1)
    assert bytes(buf[1:5]) == struct.pack("<I", zlib.crc32(data[a:b])) and buf[0] == buf[5] == 0


def test_frames_end_in_the_crc32_of_seq_type_and_payload():
    dec = wire.Decoder(64)
    enc = wire.frame(7, wire.TRAIN, b"\x01\x00\x05")
    dec.feed(enc, 0, len(enc))
    assert dec.result == 5 and dec.last == 9
    assert bytes(dec.frame[5:9]) == struct.pack("<I", zlib.crc32(b"\x07\x05\x01\x00\x05"))


def test_a_doubled_byte_is_refused_where_crc16_let_it_pass():
    # Protocol 1 accepted this: CRC-16 without a final xor stays 0 through a zero byte, so
    # 04d20acf010100 (seq d2, STATS, payload cf, CRC 0000) with a code byte doubled decoded
    # as payload cf 00 with a valid CRC
    assert binascii.crc_hqx(bytes.fromhex("d20acf"), 0xFFFF) == 0
    assert binascii.crc_hqx(bytes.fromhex("d20acf00"), 0xFFFF) == 0
    # the same frames sealed with CRC-32, and frames full of zeros: every byte doubled in
    # turn is refused
    msgs = [(0xD2, wire.STATS, b"\xcf"), (0xD2, wire.STATS, b"\xcf\x00"), (0, wire.ACK, b"\x00"),
            (3, wire.TRAIN, bytes(12)), (9, wire.DATA, bytes(range(0, 40, 3)) * 2)]
    for m in msgs:
        ok = wire.frame(*m)
        for i in range(len(ok) - 1):
            results, frames = decode_all(ok[:i] + ok[i:i + 1] + ok[i:])
            assert frames == [] and results and results[0] < 0, (m, i)


def cobs(data):
    out = bytearray(wire.encoded_max(len(data)))
    return bytes(out[:wire.encode(data, len(data), out)])


# examples from the COBS paper / Wikipedia, each with the delimiter appended
VECTORS = [
    (b"\x00", b"\x01\x01\x00"),
    (b"\x00\x00", b"\x01\x01\x01\x00"),
    (b"\x00\x11\x00", b"\x01\x02\x11\x01\x00"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33\x00"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44\x00"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01\x00"),
    (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255)) + b"\x00"),
    (bytes(range(0, 255)), b"\x01\xff" + bytes(range(1, 255)) + b"\x00"),
    (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff\x00"),
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01\x00"),
    (bytes(range(3, 256)) + b"\x00\x01", b"\xfe" + bytes(range(3, 256)) + b"\x02\x01\x00"),
]


@pytest.mark.parametrize("raw,enc", VECTORS)
def test_cobs_vectors(raw, enc):
    assert cobs(raw) == enc


def decode_all(stream, size=4096, step=None):
    """(results, frames) from feeding `stream` to a Decoder in pieces of `step` bytes."""
    dec = wire.Decoder(size)
    results, frames = [], []
    step = step or len(stream) or 1
    for start in range(0, len(stream), step):
        piece = stream[start:start + step]
        i = 0
        while i < len(piece):
            i = dec.feed(piece, i, len(piece))
            if dec.result != wire.INCOMPLETE:
                results.append(dec.result)
                if dec.result > 0:
                    frames.append(wire.parse(dec, dec.result))
    return results, frames


@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255),
                          st.binary(max_size=600)), max_size=5),
       st.integers(1, 700))
@settings(deadline=None)
def test_frames_survive_any_split(msgs, step):
    stream = b"".join(wire.frame(*m) for m in msgs)
    for m in msgs:
        enc = wire.frame(*m)
        assert b"\x00" not in enc[:-1] and enc[-1] == 0
        assert len(enc) <= wire.encoded_max(len(m[2]) + 2 + wire.TRAILER)
    results, frames = decode_all(stream, step=step)
    assert frames == [(s, k, p) for s, k, p in msgs]
    assert results == [2 + len(p) for _, _, p in msgs]


def test_decoder_reports_each_kind_of_damage_and_recovers():
    ok = wire.frame(5, wire.ACK, b"\x04")
    bad_crc = bytearray(ok)
    bad_crc[2] ^= 0x01
    cut = ok[:3] + b"\x00"  # ends inside a COBS block
    short = b"\x02\x07\x00"  # one byte: no room for seq, type and CRC
    long = wire.frame(1, wire.TRAIN, bytes(range(1, 200)))
    stream = b"\x00\x00" + bytes(bad_crc) + cut + short + long + ok
    results, frames = decode_all(stream, size=64)
    assert results == [0, 0, -wire.E_CRC, -wire.E_FRAME, -wire.E_FRAME, -wire.E_LONG, 3]
    assert frames == [(5, wire.ACK, b"\x04")]


def test_garbage_ends_at_the_next_zero():
    # REPL text before the server started: one bad frame, up to the first zero. (Without
    # that zero the next frame would be swallowed too: the host sends zeros first.)
    frame = wire.frame(0, wire.INFO, b"hi")
    results, frames = decode_all(b"\x01\x02\x03>>> \x00" + frame)
    assert len(results) == 2 and results[0] < 0 and results[1] == 4
    assert frames == [(0, wire.INFO, b"hi")]
    results, frames = decode_all(b"\x01\x02\x03>>> " + frame)
    assert frames == []


class CountingStream:
    """readinto(buf, n) from bytes, remembering how far it has been read."""

    def __init__(self, data):
        self.data = data
        self.pos = 0
        self.calls = 0

    def readinto(self, buf, n):
        self.calls += 1
        k = min(n, len(self.data) - self.pos)
        buf[:k] = self.data[self.pos:self.pos + k]
        self.pos += k
        return k


def test_read_never_reads_past_a_clean_frame():
    # the board blocks in readinto until it has all it asked for, so asking beyond the end
    # of the last frame sent would stall it
    first = wire.frame(1, wire.TRAIN, bytes(range(256)) * 2)
    second = wire.frame(2, wire.STATS, b"\x00")
    s = CountingStream(first + second)
    dec = wire.Decoder(1024)
    assert dec.read(s.readinto) == 2 + 512
    assert s.pos == len(first)
    assert dec.read(s.readinto) == 3 and s.pos == len(first + second)
    assert dec.read(s.readinto) == wire.EOF
    # whole COBS blocks are read at once, not byte by byte
    assert s.calls * 20 < len(first)


def test_read_resynchronises_after_a_lost_byte():
    first = bytearray(wire.frame(1, wire.TRAIN, b"\x01\x02\x03\x04" * 20))
    del first[10]
    second = wire.frame(2, wire.STATS, b"\x00")
    s = CountingStream(bytes(first) + second + bytes(wire.FLUSH_LEN))
    dec = wire.Decoder(1024)
    assert dec.read(s.readinto) == -wire.E_FRAME
    assert dec.read(s.readinto) == 3 and dec.frame[0] == 2


def device_fixture():
    """Source of a module the device test imports: a net file, frames and the answers."""
    q = make_qnet("ce", sizes=(6, 5, 3))
    X, T = make_data(q, 12)
    net = ebpfile.to_bytes(q, HYPER, trailer=False)
    frames = [wire.frame(0, wire.HELLO, bytes([wire.PROTOCOL])),
              wire.frame(1, wire.LOAD_BEGIN, len(net).to_bytes(4, "little")),
              wire.frame(2, wire.LOAD_CHUNK, bytes(4) + net),
              wire.frame(3, wire.LOAD_COMMIT)]
    seq = 4
    for i in range(0, len(X), 3):
        body = b"".join(X[j].astype("<i2").tobytes() + T[j].astype("<i2").tobytes()
                        for j in range(i, i + 3))
        frames.append(wire.frame(seq, wire.TRAIN, bytes([3, 0]) + body))
        seq += 1
    ref = reference_train(q, HYPER, X, T)
    lines = [
        f"NET = {net!r}",
        f"SETUP = {b''.join(frames[:4])!r}",
        f"TRAIN = {[f for f in frames[4:]]!r}",
        f"X = {X.tolist()!r}",
        f"T = {T.tolist()!r}",
        f"W = {[list(w) for w in ref.W]!r}",
        f"B = {[list(b) for b in ref.B]!r}",
    ]
    return "\n".join(lines) + "\n"


def test_device_module(runtime):
    run_device_module(runtime, "tests/device/test_wire_dev.py",
                      extra_files={"wire_fixture.py": device_fixture()}, timeout=120)
