"""Datasets kept on a board's flash (edgebp/dataset.py): written here, pushed with mpremote.

    blob = encode(Xq, Tq, tag_of(qnet))                   # header + blocks, CRC-protected
    with Board(port) as b:
        plan = plan_push(b, name, blob, append=False)      # bytes needed vs free, or PushError
        push(b, plan)

The samples are the int16 inputs and targets a TRAIN frame carries, quantised by the caller
with the net's input and target maps (QuantNet.quantize_inputs, quantize_targets), so that
training from the file is training from the stream. The header's tag is a CRC-32 of those
maps: the host refuses to train a net on data quantised for another.
"""

from __future__ import annotations

import ast
import base64
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from edgebp import dataset, fixed, wire
from edgebp.host.boards.board import Board, BoardError
from edgebp.host.nets.qnet import QuantNet

DIR = dataset.DIR  # on the board, under its working directory: where the server looks


class PushError(BoardError):
    """A push refused before anything was written, in one line."""


def tag_of(qnet: QuantNet) -> bytes:
    """4 bytes naming the input and target maps a sample's int16 values depend on."""
    n_t = 1 if qnet.loss == fixed.SOFTMAX_CE else qnet.sizes[-1]
    parts = [struct.pack("<HHBbb", qnet.sizes[0], n_t, qnet.loss, qnet.shift_a[0],
                         qnet.shift_a[-1])]
    for a in (qnet.in_offset, qnet.in_scale, qnet.out_offset):
        parts.append(b"-" if a is None else np.asarray(a, "<f8").tobytes())
    parts.append(b"-" if qnet.out_scale is None else struct.pack("<d", qnet.out_scale))
    parts.append("\n".join(map(str, qnet.classes)).encode())
    return struct.pack("<I", zlib.crc32(b"".join(parts)))


def header(n_in: int, n_t: int, tag: bytes) -> bytes:
    head = bytearray(struct.pack("<4sBBHH4s", dataset.MAGIC, dataset.VERSION, 0, n_in, n_t,
                                 tag))
    return bytes(head) + struct.pack("<H", wire.crc16(head, 0, 14))


def blocks(Xq, Tq, per_block: int = 32) -> bytes:
    """The records as blocks of `per_block` (the last one shorter), each with its CRC."""
    X = np.asarray(Xq).astype("<i2")
    T = np.asarray(Tq).astype("<i2").reshape(len(X), -1)
    if not 1 <= per_block <= dataset.BLOCK_MAX:
        raise ValueError(f"records per block {per_block} outside 1..{dataset.BLOCK_MAX}")
    if X.size and (X.min() < -32767 or T.min() < -32767):
        raise ValueError("values outside the symmetric int16 range [-32767, 32767]")
    rec = np.concatenate([X, T], axis=1).astype("<i2")
    out = []
    for i in range(0, len(rec), per_block):
        body = struct.pack("<H", len(rec[i:i + per_block])) + rec[i:i + per_block].tobytes()
        out.append(body + struct.pack("<H", wire.crc16(body, 0, len(body))))
    return b"".join(out)


def encode(Xq, Tq, tag: bytes, per_block: int = 32) -> bytes:
    X = np.asarray(Xq)
    n_t = 1 if np.asarray(Tq).ndim == 1 else np.asarray(Tq).shape[1]
    return header(X.shape[1], n_t, tag) + blocks(Xq, Tq, per_block)


def file_bytes(n: int, n_in: int, n_t: int, per_block: int = 32) -> int:
    """The size of a dataset file of n records."""
    full, rest = divmod(n, per_block)
    rec = 2 * (n_in + n_t)
    return dataset.HEAD + full * (4 + per_block * rec) + (4 + rest * rec if rest else 0)


def fit_records(free: int, block_size: int, n_in: int, n_t: int, per_block: int = 32) -> int:
    """How many records a new dataset file may hold on a filesystem with `free` bytes in
    blocks of `block_size` (as plan_push counts what a file needs)."""
    lo, hi = 0, max(1, free // (2 * (n_in + n_t)) + 1)
    while hi - lo > 1:
        m = (lo + hi) // 2
        if _need(file_bytes(m, n_in, n_t, per_block), block_size) <= free:
            lo = m
        else:
            hi = m
    return lo


def _need(nbytes: int, block_size: int) -> int:
    # flash a file of nbytes takes on littlefs: its data blocks rounded up, plus a block for
    # its metadata and one for the copy-on-write of the block being appended to
    return (-(-nbytes // block_size) + 2) * block_size


# One exec on the board: the filesystem's block size and free blocks, and the file if there
_STAT = """
import os
try:
    os.mkdir(%(dir)r)
except OSError:
    pass
_s = os.statvfs(%(dir)r)
try:
    _n = os.stat(%(path)r)[6]
except OSError:
    _n = -1
try:
    from edgebp import dataset as _d
    _d = 1
except ImportError:
    _d = 0
print(repr((_s[0], _s[0] * _s[3], _n, _d)))
"""

# The board's own reader checks the file it holds before anything is appended to it
_CHECK = """
from edgebp import dataset
try:
    _d = dataset.Data(%(path)r, %(n_in)d, %(n_t)d)
    print(repr(('ok', _d.n, _d.tag, _d.size)))
    _d = None
except (dataset.DataError, OSError) as e:
    print(repr(('bad', str(e))))
"""


@dataclass
class PushPlan:
    path: str  # on the board
    data: bytes  # what is written (appended)
    append: bool
    records: int  # in the file afterwards
    need: int  # flash bytes the write takes
    free: int  # flash bytes free before it
    block_size: int


def _literal(b: Board, code: str, what: str):
    out = b.exec(code)
    try:
        return ast.literal_eval(out.decode().strip().splitlines()[-1])
    except (ValueError, SyntaxError, IndexError, UnicodeDecodeError):
        raise BoardError(f"{what}: unexpected answer {out[:80]!r}") from None


def plan_push(b: Board, name: str, Xq, Tq, tag: bytes, append: bool = False,
              per_block: int = 32) -> PushPlan:
    """What pushing the samples as dataset `name` writes, checked against the board's free
    flash (and, to append, against the file there): PushError before anything is written."""
    if not dataset.check_name(name):
        raise PushError(f"dataset name {name!r}: 1 to {dataset.NAME_MAX} letters, digits, "
                        "'_', '-' or '.', not starting with '.'")
    path = f"{DIR}/{name}{dataset.SUFFIX}"
    X = np.asarray(Xq)
    T = np.asarray(Tq).reshape(len(X), -1)
    n_in, n_t = X.shape[1], T.shape[1]
    bsize, free, size, reader = _literal(b, _STAT % {"dir": DIR, "path": path},
                                         "reading the flash")
    if not reader:
        raise PushError("the board has no edgebp that reads datasets: edgebp deploy --port "
                        "PORT first")
    records = len(X)
    if append and size >= 0:
        got = _literal(b, _CHECK % {"path": path, "n_in": n_in, "n_t": n_t},
                       f"checking {path}")
        if got[0] != "ok":
            raise PushError(f"{path} on the board is refused by its reader ({got[1]}): push "
                            "the data again without --append")
        _, n_there, tag_there, size_there = got
        tag_there = bytes(tag_there)
        if tag_there != tag:
            raise PushError(f"{path} on the board holds samples quantised for another net's "
                            "input or target map: push to a new --name, or without --append")
        if size_there != size:
            raise PushError(f"{path} on the board ends after byte {size_there} of {size}")
        data = blocks(X, T, per_block)
        records += n_there
        need = _need(len(data), bsize)
        # the free count already holds the file's own blocks
    else:
        data = encode(X, T, tag, per_block)
        need = _need(len(data), bsize)
        if size >= 0:
            free += -(-size // bsize) * bsize  # the old file goes
    if need > free:
        raise PushError(f"{len(X)} samples need {need:,} bytes of the board's flash "
                        f"({len(data):,} of data in {bsize}-byte blocks), {free:,} are free: "
                        f"about {fit_records(free, bsize, n_in, n_t, per_block):,} samples of "
                        "this net fit")
    return PushPlan(path, data, append and size >= 0, records, need, free, bsize)


def check(b: Board, path: str, n_in: int, n_t: int) -> tuple[int, bytes]:
    """(records, tag) of the dataset file at `path`, as the board's own reader finds it
    (every block's CRC checked); BoardError if it refuses the file."""
    got = _literal(b, _CHECK % {"path": path, "n_in": n_in, "n_t": n_t}, f"checking {path}")
    if got[0] != "ok":
        raise BoardError(f"{path}: the board's reader refuses it: {got[1]}")
    return got[1], bytes(got[2])


def size_of(b: Board, path: str) -> int:
    return int(_literal(b, f"import os\nprint(os.stat({path!r})[6])", f"reading {path}"))


def push(b: Board, plan: PushPlan, chunk: int = 1024) -> None:
    """Write (or append) the plan's bytes, then have the board's reader check the whole
    file. A new file is written beside the old one and renamed over it once whole."""
    if plan.append:
        code = f"f = open({plan.path!r}, 'ab')"
        target = plan.path
    else:
        target = plan.path + ".new"
        code = f"f = open({target!r}, 'wb')"
    # base64 where the board decodes it (in C, about a third more bytes on the link than the
    # data), else bytes literals (up to four characters a byte, parsed by the board)
    b64 = b.exec("try:\n    from binascii import a2b_base64 as _a\n    print(1)\n"
                 "except ImportError:\n    print(0)").strip() == b"1"
    b.exec(code)
    try:
        step = 3 * chunk if b64 else chunk
        for i in range(0, len(plan.data), step):
            piece = plan.data[i:i + step]
            if b64:
                b.exec(f"f.write(_a({base64.b64encode(piece)!r}))")
            else:
                b.exec(f"f.write({piece!r})")
    finally:
        b.exec("f.close()\nf = None")
    if not plan.append:
        b.exec(f"import os\ntry:\n    os.remove({plan.path!r})\nexcept OSError:\n    pass\n"
               f"os.rename({target!r}, {plan.path!r})")
