# Training data kept on the board's filesystem: samples in the net's input format, read one at
# a time into preallocated buffers, in a shuffled order drawn on the board.
#
# Layout, little-endian (every field and record at an even offset):
#   header, 16 bytes:
#     0   4  magic b"EBPD"
#     4   1  version (1)
#     5   1  flags (0)
#     6   2  n_in: int16 inputs per sample
#     8   2  n_t: int16 targets per sample (1, a class index, for softmax cross-entropy)
#     10  4  tag: the host's CRC-32 of the input and target maps the samples were quantised
#            with (opaque to the board: the host compares it with the net's)
#     14  2  CRC-16 (wire.crc16) of bytes 0..13
#   then blocks, each:
#     0   2  count: records in the block, 1..BLOCK_MAX
#     2   .. count records, each x int16 * n_in then t int16 * n_t, as TRAIN frames carry them
#     end 2  CRC-16 of the count and the records
# Appending adds blocks after the last one; a block torn by a reset or a power cut (the file
# ends inside it) or damaged (its CRC fails) is found when the file is opened, and the file is
# refused whole: nothing is learned from it until it is pushed again.
#
# Open (Data()) reads the whole file once: it checks every CRC, every value against the
# symmetric int16 range the arithmetic relies on (no -32768) and each class index against the
# net's outputs, and makes an array('i') of the records' file offsets (4 bytes of RAM per
# record). order() fills it in an epoch's order: a Fisher-Yates shuffle driven by
# fixed.xorshift30, the one edgebp.host.nets.reference.epoch_order draws (the host sends the
# epoch's starting state), so the host knows the order without being told. read() seeks to a
# record and reads its inputs and targets straight into the caller's array('h') buffers
# (int16 little-endian, the byte order of every board MicroPython runs on): it allocates
# nothing. Opening allocates (the file object, the offsets, a block buffer) and so does an
# error: between training steps only. Files are closed explicitly, never left to the gc (the
# boards' MicroPython runs no finalisers, and an unclosed littlefs file corrupts it).

from edgebp.fixed import const, xorshift30
from edgebp.wire import crc16

MAGIC = b"EBPD"
VERSION = const(1)
HEAD = const(16)
BLOCK_MAX = const(64)  # records per block
SUFFIX = ".ebd"
DIR = "data"  # under the server's root: where its datasets live
NAME_MAX = const(32)
_CHUNK = const(512)  # even: values never straddle two reads


class DataError(ValueError):
    pass


def check_name(name):
    # a dataset's name: 1..NAME_MAX letters, digits, '_', '-', '.', not starting with '.'
    if not 0 < len(name) <= NAME_MAX or name[0] == ".":
        return False
    for c in name:
        if not ("a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or c in "_-."):
            return False
    return True


def path(root, name):
    # where the dataset `name` lives under the directory `root` ("": the working directory)
    if root and root[-1] != "/":
        root += "/"
    return root + DIR + "/" + name + SUFFIX


def _u16(b, o):
    return b[o] | (b[o + 1] << 8)


class Data:
    """A dataset file checked whole; `n` records of n_in inputs and n_t targets.

    n_out: the net's outputs, for a class-index target (n_t == 1 with softmax_ce): each one is
    checked to be below it; 0 skips the check."""

    def __init__(self, fname, n_in, n_t, n_out=0):
        self.fname = fname
        self.n_in = n_in
        self.n_t = n_t
        self.rec = 2 * (n_in + n_t)
        f = open(fname, "rb")
        try:
            self._scan(f, n_out)
        finally:
            f.close()

    def _scan(self, f, n_out):
        # one pass over the file, checking it all: sets size, n, tag and the blocks' records
        head = bytearray(HEAD)
        if f.readinto(head) != HEAD or head[0:4] != MAGIC:
            raise DataError("not an edgebp dataset")
        if head[4] != VERSION:
            raise DataError("dataset version %d, this reader knows %d" % (head[4], VERSION))
        if crc16(head, 0, 14) != _u16(head, 14):
            raise DataError("damaged header (its CRC fails)")
        n_in = _u16(head, 6)
        n_t = _u16(head, 8)
        if n_in != self.n_in or n_t != self.n_t:
            raise DataError("samples of %d inputs and %d targets, the net takes %d and %d"
                            % (n_in, n_t, self.n_in, self.n_t))
        rec = self.rec
        ce = n_out > 0 and n_t == 1
        buf = bytearray(_CHUNK)
        two = memoryview(buf)[0:2]
        pos = HEAD
        n = 0
        starts = []  # type: list[int]  # file offset of each block's first record
        counts = []  # type: list[int]
        while True:
            block = len(counts)
            got = f.readinto(two)
            if not got:
                break
            if got != 2:
                raise DataError("block %d is torn: the file ends inside it" % block)
            count = _u16(buf, 0)
            if count < 1 or count > BLOCK_MAX:
                raise DataError("block %d (byte %d) says %d records: damaged"
                                % (block, pos, count))
            crc = crc16(buf, 0, 2)
            left = count * rec
            r = 0  # bytes of the current record seen
            while left:
                k = _CHUNK if left > _CHUNK else left
                got = f.readinto(memoryview(buf)[0:k]) if k < _CHUNK else f.readinto(buf)
                if got != k:
                    raise DataError("block %d is torn: the file ends inside it" % block)
                crc = crc16(buf, 0, k, crc)
                for i in range(0, k, 2):
                    lo = buf[i]
                    hi = buf[i + 1]
                    if hi == 0x80 and lo == 0:
                        raise DataError("block %d holds -32768, outside the symmetric int16 "
                                        "range" % block)
                    r += 2
                    if r == rec:
                        r = 0
                        if ce and (hi or lo >= n_out):
                            raise DataError("block %d holds class index %d, the net has %d "
                                            "outputs" % (block, lo | (hi << 8), n_out))
                left -= k
            if f.readinto(two) != 2:
                raise DataError("block %d is torn: the file ends inside it" % block)
            if _u16(buf, 0) != crc:
                raise DataError("block %d (records %d..%d) is damaged: its CRC fails"
                                % (block, n, n + count - 1))
            starts.append(pos + 2)
            counts.append(count)
            pos += 4 + count * rec
            n += count
        from array import array

        self.size = pos
        self.n = n
        self.tag = bytes(head[10:14])
        self.starts = array("i", starts)
        self.counts = array("i", counts)
        self.offs = array("i", bytes(4 * n))
        self.order(0)

    def order(self, state):
        # the records in the epoch order drawn from xorshift30 state `state` (0: file order),
        # as edgebp.host.nets.reference.epoch_order draws it; allocates nothing
        offs = self.offs
        rec = self.rec
        counts = self.counts
        starts = self.starts
        i = 0
        for b in range(len(counts)):
            at = starts[b]
            for _ in range(counts[b]):
                offs[i] = at
                at += rec
                i += 1
        if state:
            s = state
            for i in range(self.n - 1, 0, -1):
                s = xorshift30(s)
                j = s % (i + 1)
                v = offs[i]
                offs[i] = offs[j]
                offs[j] = v

    def read(self, f, k, x, t):
        # the k-th record of the order into x (n_in int16) and t (n_t int16); f: the file,
        # open. Allocates nothing.
        f.seek(self.offs[k])
        if f.readinto(x) != len(x) * 2 or f.readinto(t) != len(t) * 2:
            raise DataError("the dataset changed on the board while training")
