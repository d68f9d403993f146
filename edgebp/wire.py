# The wire codec shared by the board and the host: CRC-32, COBS framing, message numbers.
# (CRC-16, re-exported from edgebp/crc.py, is for the file formats, edgebp/ebp.py and
# edgebp/ckpt.py.)
#
# A frame on the wire is COBS(raw) followed by one 0x00 delimiter, where
#   raw = [seq u8][type u8][payload 0..max_payload][crc u32 LE]
# and crc is CRC-32 (the zlib/Ethernet one: reflected poly 0xEDB88320, init and final xor
# 0xFFFFFFFF) of seq, type and payload. COBS leaves no zero byte inside a frame, so a receiver
# that lost its place resynchronises at the next 0x00; a run of zeros (the "flush") ends any
# half-received frame and is otherwise ignored (an empty frame).
#
# Why 32 bits: a bad cable damages many frames, and with a 16-bit check about one damaged
# frame in 65536 passes (more where COBS damage appends zeros: a CRC without a final xor is
# unchanged by a zero byte after a zero remainder). A corrupted COBS code byte moves or
# removes zeros and a lost delimiter splices two frames; no length field would catch the
# first, and every class of damage, bit errors included, passes CRC-32 with a chance near
# 2**-32 (host/bench/wirefuzz.py measures both).
#
# Every value fits a MicroPython small int: the CRC-32 is kept as its low byte and its high
# 24 bits, with a bytearray and an array('i') of 24-bit values as tables. Decoder and encode()
# work in caller-supplied preallocated bytearrays and allocate nothing, so the board can serve
# a training batch with the heap locked. frame() and parse() are host conveniences that
# allocate.
#
# Sequence numbers and flow: an answer carries the number of the frame it answers. The host may
# send `credits` frames (from INFO and ACK) ahead of the answers; the board processes frames in
# order, answers a repeated frame with its kept last answer without processing it again, and
# answers a damaged or early frame with a link ERROR naming the frame it expects (once per gap;
# an empty frame re-arms it). TRAIN flags: F_ACCUMULATE, F_UPDATE below.
#
# Multi-byte fields are little-endian. Payloads (host -> board, then the board's reply):
#   HELLO        [proto u8]                           -> INFO
#   AGAIN        [offset u16][count u8]               -> PART: payload bytes offset.. of the
#                kept answer to frame seq (not processed again), for a host that lost a long
#                answer; a frame not processed yet gets a link ERROR naming it
#   LOAD_BEGIN   [total u32]                          -> ACK
#   LOAD_CHUNK   [offset u32][bytes of the .ebp]      -> ACK
#   LOAD_COMMIT  []                                   -> ACK
#   TRAIN        [n u8][flags u8] n x (x i16*n_in, t i16*n_t)   -> ACK
#   EVAL         [n u8][flags u8] n x (x, t)          -> COUNTS (evaluation totals so far)
#   GET_WEIGHTS  [layer u8][part u8][offset u32][count u16]     -> DATA (int16 values; part
#                PART_F: the weight format of each layer, of any layer's request)
#   GET_GRADS    [layer u8][part u8][offset u32][count u16]     -> DATA (int32 values)
#   SET_HYPER    [12-byte hyper block, as in the .ebp header]   -> ACK
#   STATS        [reset u8]                           -> COUNTS
#   BYE          []                                   -> ACK, then the board leaves the server
#   CHECKPOINT   [flags u8][every u16]                -> CKPT
#                CK_NOW: save a checkpoint now; CK_EVERY: from now on save one after every
#                `every` weight updates (0: only on request). flags 0 asks for the state only.
#   RESUME       []                                   -> CKPT (the net of the newest valid
#                checkpoint on the board's filesystem replaces the one loaded)
#   DROP         []                                   -> ACK (the board lets go of its net)
#   DATASET      [flags u8][state u32][start u32][count u32][len u8][name]   -> COUNTS, then
#                [records u32][tag 4 bytes]: learn (or with D_EVAL evaluate) records
#                start..start+count-1 of the order of the dataset file `name` on the board's
#                filesystem (edgebp/dataset.py) that xorshift30 state `state` draws (0: file
#                order); F_UPDATE applies the pending gradient sums after them, as for
#                TRAIN. count 0 only opens (checks) the file and reports its records and tag.
#                Automatic checkpoints fall inside it as inside TRAIN frames. The host sends
#                an epoch as slices short enough that each answer comes within its timeout:
#                each answer is the run's progress.
# A net loaded or restored replaces the board's net only once it is whole: a load or RESUME
# refused leaves the old one in place. Where the new net does not fit beside the old one,
# the board refuses with E_ROOM (bytes needed and free); the host may DROP and try again.
# Replies:
#   ACK     [credits u8]
#   ERROR   [code u8][text]      (codes below 16 are link errors: seq is the frame expected)
#   INFO    [proto u8][credits u8][max_payload u16][free_ram u32][has_net u8]
#           [L u8][loss u8][sizes u16 * (L+1)]   (net fields only if has_net)
#           then three strings, each [len u8][ascii]: firmware version, runtime, board
#           then [word u8]: bytes per machine word of the board's heap (4 on a 32-bit MCU;
#           0 off MicroPython), [n u8][hole u32 * n]: the n largest free blocks of the heap,
#           [kernels u8]: the kernel set its nets run (0 pure Python, 1 viper, 2 native),
#           [by_address u8]: 1 if the blocks are listed lowest address first, 0 if largest
#           first; for the host's memory planner
#   PART    [kind u8][total u16][offset u16][payload bytes offset..offset+count of the kept
#           answer, fewer at its end]   (kind and total: the kept answer's type and length)
#   DATA    [layer u8][part u8][offset u32][count u16][values]
#   COUNTS  [seen u32][correct u32][loss u32][e_seen u32][e_correct u32][e_loss u32]
#           [pending u16]                           (losses are sums of Q12 values)
#   CKPT    [gen u32][saved u32][samples u32][updates u32][every u16][pending u16]
#           gen: number of the last checkpoint saved or restored (0: none); saved: the
#           sample counter it holds; samples, updates: training samples learned and weight
#           updates made since the net was loaded (a restored net goes on counting from the
#           checkpoint's); pending: samples in the gradient sums

from edgebp.crc import (
    CRC_TABLE as CRC_TABLE,  # re-exported: the CRC-16 of the files
    crc16 as crc16,
)
from edgebp.fixed import const

PROTOCOL = const(2)  # 1: frames sealed with CRC-16
HEADER = const(2)  # seq, type
TRAILER = const(4)  # crc
FLUSH_LEN = const(256)  # zeros that end any frame the board is still waiting on

# requests
HELLO = const(0x01)
LOAD_BEGIN = const(0x02)
LOAD_CHUNK = const(0x03)
LOAD_COMMIT = const(0x04)
TRAIN = const(0x05)
EVAL = const(0x06)
GET_WEIGHTS = const(0x07)
GET_GRADS = const(0x08)
SET_HYPER = const(0x09)
STATS = const(0x0A)
BYE = const(0x0B)
CHECKPOINT = const(0x0C)
RESUME = const(0x0D)
DROP = const(0x0E)
AGAIN = const(0x0F)
DATASET = const(0x10)
# replies
ACK = const(0x80)
ERROR = const(0x81)
INFO = const(0x82)
DATA = const(0x83)
COUNTS = const(0x84)
CKPT = const(0x85)
PART = const(0x86)

TYPE_NAMES = {
    HELLO: "HELLO", LOAD_BEGIN: "LOAD_BEGIN", LOAD_CHUNK: "LOAD_CHUNK",
    LOAD_COMMIT: "LOAD_COMMIT", TRAIN: "TRAIN", EVAL: "EVAL", GET_WEIGHTS: "GET_WEIGHTS",
    GET_GRADS: "GET_GRADS", SET_HYPER: "SET_HYPER", STATS: "STATS", BYE: "BYE",
    CHECKPOINT: "CHECKPOINT", RESUME: "RESUME", DROP: "DROP", AGAIN: "AGAIN", DATASET: "DATASET",
    ACK: "ACK", ERROR: "ERROR", INFO: "INFO", DATA: "DATA", COUNTS: "COUNTS", CKPT: "CKPT",
    PART: "PART",
}

# TRAIN / EVAL flags
F_ACCUMULATE = const(1)  # forward + backward only: gradient sums grow, no update
F_UPDATE = const(2)  # apply the pending gradient sums after the samples

# DATASET flags (F_UPDATE as for TRAIN)
D_EVAL = const(4)

# CHECKPOINT flags
CK_NOW = const(1)
CK_EVERY = const(2)

# GET_WEIGHTS / GET_GRADS part
PART_W = const(0)
PART_B = const(1)
PART_F = const(2)  # GET_WEIGHTS only: shift_w of layers 0..L-1

# error codes; below LINK_ERRORS the frame was not processed (a request to resend)
E_CRC = const(1)
E_FRAME = const(2)
E_LONG = const(3)
E_SEQ = const(4)
LINK_ERRORS = const(16)
E_TYPE = const(16)
E_LEN = const(17)
E_NONET = const(18)
E_EBP = const(19)
E_VALUE = const(20)
E_STATE = const(21)
E_MEM = const(22)
E_RANGE = const(23)
E_INTERNAL = const(24)
E_CKPT = const(25)
E_ROOM = const(26)
E_DATA = const(27)

ERROR_NAMES = {
    E_CRC: "crc mismatch",
    E_FRAME: "malformed frame",
    E_LONG: "frame too long",
    E_SEQ: "frame out of sequence",
    E_TYPE: "unknown message type",
    E_LEN: "bad payload length",
    E_NONET: "no net loaded",
    E_EBP: "bad net file",
    E_VALUE: "value out of range",
    E_STATE: "request out of order",
    E_MEM: "out of memory",
    E_RANGE: "index out of range",
    E_INTERNAL: "internal error",
    E_CKPT: "checkpoint failed",
    E_ROOM: "no room beside the loaded net",
    E_DATA: "bad dataset file",
}

# Decoder.read() results other than a frame length
EOF = const(-256)
INCOMPLETE = const(-257)


def _make_table32():
    # T[k] = CRC-32 step of byte k, split as its low 8 bits and its high 24 (a 32-bit
    # value is no small int on a board; 24 bits are)
    from array import array

    lo = bytearray(256)
    hi = array("i", bytes(1024))
    for k in range(256):
        c = k
        h = 0
        for _ in range(8):
            if c & 1:
                c = ((c >> 1) | ((h & 1) << 7)) ^ 0x20
                h = (h >> 1) ^ 0xEDB883
            else:
                c = (c >> 1) | ((h & 1) << 7)
                h >>= 1
        lo[k] = c
        hi[k] = h
    return lo, hi


CRC32_LO, CRC32_HI = _make_table32()


def crc32_put(buf, start, end, dst, at):
    # Write the CRC-32 of buf[start:end] into dst[at:at+4], little-endian; allocates nothing.
    # The remainder is kept as its low byte `lo` and its high 24 bits `hi`: a step is then
    # crc >> 8 ^ T[lo ^ b], which is (hi & 0xFF) ^ T_lo and hi >> 8 ^ T_hi.
    tl = CRC32_LO
    th = CRC32_HI
    lo = 0xFF
    hi = 0xFFFFFF
    for i in range(start, end):
        k = lo ^ buf[i]
        lo = (hi & 0xFF) ^ tl[k]
        hi = (hi >> 8) ^ th[k]
    hi ^= 0xFFFFFF
    dst[at] = lo ^ 0xFF
    dst[at + 1] = hi & 0xFF
    dst[at + 2] = (hi >> 8) & 0xFF
    dst[at + 3] = hi >> 16


def crc32(buf, start, end):
    # the CRC-32 as one int (host side: on a board it is no small int)
    b = bytearray(4)
    crc32_put(buf, start, end, b, 0)
    return b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)


def encoded_max(n):
    # COBS adds one code byte per 254 data bytes plus one; then the delimiter
    return n + n // 254 + 2


def seal(buf, n):
    # append the CRC-32 of buf[0:n]; returns the new length
    crc32_put(buf, 0, n, buf, n)
    return n + TRAILER


def encode(src, n, dst):
    # COBS-encode src[0:n] into dst and append the delimiter; returns the length written
    code_at = 0
    o = 1
    code = 1
    for i in range(n):
        b = src[i]
        if b:
            dst[o] = b
            o += 1
            code += 1
            # a full block ends without an implied zero; start the next only if data follows
            if code == 0xFF and i + 1 < n:
                dst[code_at] = code
                code_at = o
                o += 1
                code = 1
        else:
            dst[code_at] = code
            code_at = o
            o += 1
            code = 1
    dst[code_at] = code
    dst[o] = 0
    return o + 1


class Decoder:
    """Incremental COBS decoder: feed bytes, get whole CRC-checked frames in `frame`.

    After feed() stops at a delimiter, `result` is the frame length without the CRC
    (seq + type + payload, >= 2), 0 for an empty frame, or -code (E_FRAME, E_LONG, E_CRC);
    `last` is the number of bytes decoded into `frame` (the CRC included).
    """

    def __init__(self, size, chunk=255):
        self.frame = bytearray(size)
        self.blk = bytearray(chunk)  # what read() got from the stream and has not fed yet
        self.pos = 0
        self.end = 0
        self.result = INCOMPLETE
        self.last = 0
        self.chk = bytearray(TRAILER)  # the CRC the frame should end in
        self._reset()

    def _reset(self):
        self.n = 0  # bytes decoded into frame
        self.left = 0  # data bytes still to come in the current block
        self.code = 0  # code of the current block, 0 before the first
        self.err = 0  # the frame is already bad: skip to the delimiter

    def feed(self, src, i, end):
        # Decode src[i:end] up to and including the first delimiter. Returns the index after
        # the last byte consumed; `result` says whether a frame ended there.
        f = self.frame
        cap = len(f)
        n = self.n
        left = self.left
        code = self.code
        err = self.err
        while i < end:
            b = src[i]
            i += 1
            if b == 0:
                if err:
                    r = -err
                elif left:
                    r = -E_FRAME  # the frame stopped inside a block
                elif n == 0:
                    r = 0
                elif n < HEADER + TRAILER:
                    r = -E_FRAME
                else:
                    c = self.chk
                    m = n - TRAILER
                    crc32_put(f, 0, m, c, 0)
                    if c[0] != f[m] or c[1] != f[m + 1] or c[2] != f[m + 2] or c[3] != f[m + 3]:
                        r = -E_CRC
                    else:
                        r = m
                self.last = n
                self._reset()
                self.result = r
                return i
            if err:
                continue
            if left == 0:
                if code and code != 0xFF:
                    if n == cap:
                        err = E_LONG
                        continue
                    f[n] = 0
                    n += 1
                code = b
                left = b - 1
            else:
                if n == cap:
                    err = E_LONG
                    continue
                f[n] = b
                n += 1
                left -= 1
        self.n = n
        self.left = left
        self.code = code
        self.err = err
        self.result = INCOMPLETE
        return i

    def read(self, readinto):
        # Read one frame from a stream: readinto(buf, n) -> count, or None when nothing came
        # yet (a UART timeout). Asks for the rest of the current COBS block plus the byte
        # after it, so a clean stream is never read past a frame's delimiter. Returns like
        # `result`, or EOF.
        blk = self.blk
        while True:
            if self.pos < self.end:
                self.pos = self.feed(blk, self.pos, self.end)
                if self.result != INCOMPLETE:
                    return self.result
                continue
            want = 1 if self.err else self.left + 1
            got = readinto(blk, want)
            if got is None:
                continue
            if got == 0:
                return EOF
            self.pos = 0
            self.end = got


def frame(seq, kind, payload=b""):
    # One complete wire frame as bytes (allocates: host side and tests).
    n = len(payload)
    raw = bytearray(HEADER + n + TRAILER)
    raw[0] = seq & 0xFF
    raw[1] = kind
    raw[HEADER:HEADER + n] = payload
    m = seal(raw, HEADER + n)
    out = bytearray(encoded_max(m))
    return bytes(out[:encode(raw, m, out)])


def parse(dec, n):
    # (seq, type, payload bytes) of the frame of length n in decoder `dec` (allocates)
    f = dec.frame
    return f[0], f[1], bytes(f[HEADER:n])
