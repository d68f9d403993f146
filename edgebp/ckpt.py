# Checkpoints: a net's whole training state in one file on the board's filesystem.
#
# save() writes the checkpoint to NEW_NAME, closes it, then renames it over NAME. Whenever a
# reset or a power cut strikes, the filesystem holds a complete checkpoint: the old one
# (NAME), the new one (NEW_NAME, complete but not renamed yet), or both. find() checks both,
# length and CRC, and takes the valid one of the higher generation: never a torn file.
# Where rename() does not replace a file (FAT), the old one is removed first, and NEW_NAME,
# already complete, is what find() takes. (MicroPython has no fsync: this relies on a file's
# data being on the medium once it is closed, as littlefs and FAT give.)
#
# Everything the next update depends on is saved, so training resumed from a checkpoint is
# bit-identical to training that never stopped: weights, momentum or Adam's moments and
# step count or SDLM's curvature estimate and its sample count, the pending gradient sums
# and their count (a checkpoint may fall inside a batch), the hyper-parameters, the state of
# the stochastic-rounding generator and the sample counters. SDLM's unit curvature C is not
# saved: it is scratch of one sample, formed and consumed inside curvature() on the first
# sample of each sum, so no later step reads it.
#
# Layout, little-endian:
#   0   4  magic b"EBPC"
#   4   1  version (1)
#   5   1  flags: F_MOMENTUM (momentum buffers follow), F_PENDING (gradient sums follow),
#          F_ADAM (Adam's state follows), F_SDLM (SDLM's state follows)
#   6   2  every: period of automatic checkpoints, in weight updates (0: on request only)
#   8   4  generation: one more than any checkpoint on the filesystem when it was written
#   12  4  samples: training samples learned since the net was loaded
#   16  4  updates: weight updates since the net was loaded
#   20  4  seen, 24 correct, 28 loss_sum: the net's training counters
#   32  2  count: samples in the pending gradient sums; 34 2 grad_count
#   36  4  length of the whole file
#   40  4  length of the .ebp part
#   44  ..  the net as an .ebp board part (edgebp/ebp.py) with its hyper-parameters, its
#           Adam or SDLM block if it has either, its window of weight formats if they
#           follow the weights (its layer records then hold the formats of now) and its
#           input map if it has one; its seed
#           field holds the live state of the rounding generator
#   then VW, VB of each layer (int32) if F_MOMENTUM; if F_ADAM, Adam's MW, MB of each layer,
#   then its VW, VB of each layer (int32), then t, p1, p2 (u32 each: edgebp/adam.py); if
#   F_SDLM, SDLM's HW, HB of each layer (int16), then n (u32: edgebp/sdlm.py); then
#   GW, GB of each layer if F_PENDING
#   end-2  2  CRC-16 (crc.crc16) of everything before it
# Counters stay below 2**30; momentum, Adam's moments and gradient sums are small ints by the
# range proof, so their four bytes decode without leaving the small-int range. Writing and
# reading allocate (file objects, a 256-byte buffer): they run between frames, never inside a
# training step.
#
# A CRC tells a torn or damaged file, not one written wrong: load() checks every field
# against the net and the arithmetic contract (flags, lengths, counters below 2**30, a
# pending count within batch_max, |V| <= V_MAX, each gradient sum within what its samples
# can add; Adam's |M| <= 2**29, each of its V a well-formed small float, t and beta**t in
# step with each other; SDLM's curvatures within 0..32767, n below 2**30 and every
# curvature 0 while n is) and refuses with CheckpointError what the engine could not have
# written.

import os

from edgebp import ebp
from edgebp.crc import crc16
from edgebp.ebp import u16, u32
from edgebp.fixed import FV, SMALL_MAX, V_MAX, const

NAME = "ckpt.ebp"
NEW_NAME = "ckpt.new"
MAGIC = b"EBPC"
VERSION = const(1)
HEAD = const(44)
F_MOMENTUM = const(1)
F_PENDING = const(2)
F_ADAM = const(4)
F_SDLM = const(8)
_CHUNK = const(256)


class CheckpointError(ValueError):
    pass


def paths(root=""):
    # (current, new) file names under the directory `root` ("" is the working directory)
    if root and root[-1] != "/":
        root += "/"
    return root + NAME, root + NEW_NAME


class _Out:
    # buffered writer keeping the CRC of the whole file and of the current part
    def __init__(self, f):
        self.f = f
        self.buf = bytearray(_CHUNK)
        self.n = 0
        self.crc = 0xFFFF
        self.part = 0xFFFF
        self.sec = 0xFFFF  # of the input map section

    def flush(self):
        n = self.n
        if n:
            buf = self.buf
            self.crc = crc16(buf, 0, n, self.crc)
            self.part = crc16(buf, 0, n, self.part)
            self.sec = crc16(buf, 0, n, self.sec)
            self.f.write(buf if n == _CHUNK else memoryview(buf)[0:n])
            self.n = 0

    def byte(self, v):
        self.buf[self.n] = v & 0xFF
        self.n += 1
        if self.n == _CHUNK:
            self.flush()

    def u16(self, v):
        self.byte(v)
        self.byte(v >> 8)

    def u32(self, v):
        self.byte(v)
        self.byte(v >> 8)
        self.byte(v >> 16)
        self.byte(v >> 24)

    def values(self, arr, size):
        for v in arr:
            self.byte(v)
            self.byte(v >> 8)
            if size == 4:
                self.byte(v >> 16)
                self.byte(v >> 24)


class _In:
    # buffered reader over an open checkpoint
    def __init__(self, f, buf):
        self.f = f
        self.buf = buf
        self.pos = 0
        self.end = 0

    def _fill(self):
        self.end = self.f.readinto(self.buf) or 0
        self.pos = 0
        if not self.end:
            raise CheckpointError("checkpoint ends early")

    def feed(self, ld, n):
        while n:
            if self.pos == self.end:
                self._fill()
            k = min(n, self.end - self.pos)
            ld.feed(self.buf, self.pos, self.pos + k)
            self.pos += k
            n -= k

    def byte(self):
        if self.pos == self.end:
            self._fill()
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def u32(self):
        # a u32 below 2**30, else -1 (the bytes are read either way)
        lo = self.byte() | (self.byte() << 8) | (self.byte() << 16)
        hi = self.byte()
        return -1 if hi >= 0x40 else lo | (hi << 24)

    def int32s(self, arr, bound, what):
        # int32 values, each within -bound..bound
        for i in range(len(arr)):
            lo = self.byte() | (self.byte() << 8) | (self.byte() << 16)
            hi = self.byte()
            if 0x40 <= hi < 0xC0:
                raise CheckpointError("%s beyond the small-int range" % what)
            lo |= (hi & 0x3F) << 24
            # -2**30 + lo, without forming 2**30 (not a small int on a board)
            v = lo - SMALL_MAX - 1 if hi & 0x80 else lo
            if v > bound or v < -bound:
                raise CheckpointError("%s %d beyond %d" % (what, v, bound))
            arr[i] = v


def _params(net):
    n = 0
    for l in range(net.L):
        n += net.sizes[l + 1] * (net.sizes[l] + 1)
    return n


def _kind(net):
    # the net's optimiser state in a checkpoint: F_ADAM, F_SDLM or 0 (SGD)
    return 0 if net.opt is None else net.opt.ckpt_flag


def _write_ebp(o, net, momentum, opt):
    # the net as an .ebp board part, byte for byte what host/nets/ebpfile.py writes
    L = net.L
    sizes = net.sizes
    hyper = net.lr_m != 0  # hyper-parameters were set (a learning rate is never 0)
    o.flush()
    o.part = 0xFFFF
    for b in ebp.MAGIC:
        o.byte(b)
    o.byte(ebp.VERSION)
    o.byte(L)
    o.byte(net.loss_kind)
    inmap = net.inmap
    kind = _kind(net)
    o.byte((ebp.FLAG_MOMENTUM if momentum else 0) | (ebp.FLAG_HYPER if hyper else 0)
           | (ebp.FLAG_INMAP if inmap is not None else 0) | (opt.flag if opt else 0)
           | (net.dyn.flag if net.dyn else 0))
    o.u16(net.batch_max)
    o.u16(net.alpha)
    if hyper:
        o.byte(net.lr_m)
        o.byte(net.lr_e)
        o.byte(net.mu)
        o.byte(net.c_m)
        o.byte(net.c_s + FV if net.c_m else 0)
        o.byte(net.mode)
        o.u16(net.batch)
        o.u32(net.rng[0])
    else:
        for _ in range(ebp.HYPER_LEN):
            o.byte(0)
    o.u32(ebp.file_len(sizes, inmap is not None, kind == F_ADAM, kind == F_SDLM,
                       net.dyn is not None))
    o.u16(sizes[0])
    o.byte(net.shift_a[0])
    o.byte(net.logit_k)
    for l in range(L):
        o.u16(sizes[l + 1])
        o.byte(net.acts[l])
        o.byte(net.shift_a[l + 1])
        o.byte(net.shift_w[l])
        o.byte(net.shift_d[l])
    if opt:
        opt.write_block(o)
    if net.dyn:
        net.dyn.write_block(o)
    o.flush()
    o.u16(o.part)
    for l in range(L):
        o.values(net.W[l], 2)
        o.values(net.B[l], 2)
    if inmap is not None:
        o.flush()
        o.sec = 0xFFFF
        for i in range(inmap.n):
            o.u32(inmap.lo[i])
            o.u32(inmap.hi[i])
            o.u32(inmap.o[i])
            o.u32(inmap.m[i])
            o.u32(inmap.c[i])
            o.byte(inmap.s[i])
        o.flush()
        o.u16(o.sec)
    o.flush()
    o.u16(o.part)


def _generation(path):
    # the generation in a checkpoint's header, valid or not; 0 if there is none
    try:
        f = open(path, "rb")
    except OSError:
        return 0
    try:
        head = bytearray(HEAD)
        if f.readinto(head) != HEAD or head[0:4] != MAGIC:
            return 0
        return max(0, u32(head, 8))
    finally:
        f.close()


def _replace(src, dst):
    try:
        os.rename(src, dst)
    except OSError:
        # FAT will not rename over a file: from here until the rename, src alone is complete
        os.remove(dst)
        os.rename(src, dst)


def save(net, root="", every=0, samples=0, updates=0):
    """Write the checkpoint of `net` under `root`; returns its generation."""
    cur, new = paths(root)
    gen = max(_generation(cur), _generation(new)) + 1
    if gen > SMALL_MAX:
        raise CheckpointError("checkpoint generations exhausted")
    momentum = net.VW[0] is not None
    opt = net.opt
    kind = _kind(net)
    pending = net.count > 0
    params = _params(net)
    ebp_len = ebp.file_len(net.sizes, net.inmap is not None, kind == F_ADAM, kind == F_SDLM,
                           net.dyn is not None)
    total = HEAD + ebp_len + 2 + (opt.state_len(params) if opt else 0)
    if momentum:
        total += 4 * params
    if pending:
        total += 4 * params
    f = open(new, "wb")
    try:
        o = _Out(f)
        for b in MAGIC:
            o.byte(b)
        o.byte(VERSION)
        o.byte((F_MOMENTUM if momentum else 0) | (F_PENDING if pending else 0) | kind)
        o.u16(every)
        o.u32(gen)
        o.u32(samples)
        o.u32(updates)
        o.u32(net.seen)
        o.u32(net.correct)
        o.u32(net.loss_sum)
        o.u16(net.count)
        o.u16(net.grad_count)
        o.u32(total)
        o.u32(ebp_len)
        _write_ebp(o, net, momentum, opt)
        for l in range(net.L):
            if momentum:
                o.values(net.VW[l], 4)
                o.values(net.VB[l], 4)
        if opt:
            opt.write_state(o)
        for l in range(net.L):
            if pending:
                o.values(net.GW[l], 4)
                o.values(net.GB[l], 4)
        o.flush()
        c = o.crc
        o.byte(c)
        o.byte(c >> 8)
        o.flush()
    finally:
        f.close()
    _replace(new, cur)
    return gen


def _check(path, buf):
    # the header of the checkpoint at `path` if the file is whole (length and CRC), else None
    try:
        f = open(path, "rb")
    except OSError:
        return None
    try:
        head = bytearray(HEAD)
        if f.readinto(head) != HEAD or head[0:4] != MAGIC or head[4] != VERSION:
            return None
        total = u32(head, 36)
        if total < HEAD + 2:
            return None
        body = total - 2  # bytes under the CRC
        crc = crc16(head, 0, HEAD)
        got = HEAD
        tail = 0
        while True:
            n = f.readinto(buf) or 0
            if not n:
                break
            if got + n > total:
                return None
            k = body - got
            if k > n:
                k = n
            if k > 0:
                crc = crc16(buf, 0, k, crc)
            else:
                k = 0
            for i in range(k, n):
                tail |= buf[i] << (8 * (got + i - body))
            got += n
        if got != total or crc != tail:
            return None
        return head
    finally:
        f.close()


def find(root=""):
    """(path, header) of the newest whole checkpoint under `root`, or None.

    A whole new file that was not renamed yet is renamed now, so that the next save cannot
    leave only an older checkpoint behind."""
    cur, new = paths(root)
    buf = bytearray(_CHUNK)
    a = _check(cur, buf)
    b = _check(new, buf)
    if b is not None and (a is None or u32(b, 8) > u32(a, 8)):
        _replace(new, cur)
        a = b
    if a is None:
        return None
    return cur, a


def _grad_bound(count, kg):
    # |G| after `count` samples: each adds (d x) >> kg with |d|, |x| <= 32767
    # (kernels.outer_acc; a bias adds (d one) >> kg, one <= 2**14, less)
    one = (32767 * 32767 + (1 << kg) - 1) >> kg
    return SMALL_MAX if one > SMALL_MAX // count else one * count


def _check_head(head):
    # the header's own fields, before anything is allocated
    flags = head[5]
    if flags & ~(F_MOMENTUM | F_PENDING | F_ADAM | F_SDLM):
        raise CheckpointError("unknown flags 0x%02x" % flags)
    if flags & F_SDLM and flags & F_ADAM or flags & (F_ADAM | F_SDLM) and flags & F_MOMENTUM:
        raise CheckpointError("state of two optimisers (momentum, Adam, SDLM): a net has one")
    for at, what in ((8, "generation"), (12, "samples"), (16, "updates"), (20, "seen"),
                     (24, "correct"), (28, "loss sum")):
        if u32(head, at) < 0:
            raise CheckpointError("%s counter beyond 2**30" % what)
    if u32(head, 8) < 1:
        raise CheckpointError("generation 0")
    if u32(head, 24) > u32(head, 20):
        raise CheckpointError("more samples correct than seen")
    count = u16(head, 32)
    if (count > 0) != bool(flags & F_PENDING):
        raise CheckpointError("pending count %d disagrees with the flags" % count)
    if count and u16(head, 34) != count:
        raise CheckpointError("gradient count %d is not the pending count %d"
                              % (u16(head, 34), count))


def load(path, head, kernels=None, mem_free=None):
    """The Net saved in the checkpoint at `path` (found by find(), with its header).

    CheckpointError (or ebp.EbpError for its net part) if a field is outside what the engine
    can write; ebp.NoRoom if the net does not fit the free RAM (mem_free() as in
    ebp.Loader)."""
    _check_head(head)
    flags = head[5]
    ebp_len = u32(head, 40)
    total = u32(head, 36)
    f = open(path, "rb")
    try:
        buf = bytearray(_CHUNK)
        f.readinto(bytearray(HEAD))
        src = _In(f, buf)
        if ebp_len < ebp.FIXED or ebp_len > total - HEAD - 2:
            raise CheckpointError("net part of %d bytes in a file of %d" % (ebp_len, total))
        ld = ebp.Loader(ebp_len, kernels, mem_free)
        src.feed(ld, ebp_len)
        net = ld.finish()
        if ld.n_bytes != ebp_len:
            raise CheckpointError("net part of %d bytes, its header says %d"
                                  % (ebp_len, ld.n_bytes))
        momentum = net.VW[0] is not None
        if flags & F_MOMENTUM and not momentum:
            raise CheckpointError("momentum state for a net without momentum buffers")
        if momentum and not flags & F_MOMENTUM:
            raise CheckpointError("no momentum state for a net with momentum buffers")
        opt = net.opt
        kind = _kind(net)
        if flags & (F_ADAM | F_SDLM) != kind:
            if flags & (F_ADAM | F_SDLM):
                t = "%s state for a net without %s"
                k = flags
            else:
                t = "no %s state for a net with %s"
                k = kind
            k = "Adam" if k & F_ADAM else "SDLM"
            raise CheckpointError(t % (k, k))
        params = _params(net)
        expect = (HEAD + ebp_len + 2 + (opt.state_len(params) if opt else 0)
                  + 4 * params * ((1 if momentum else 0) + (1 if flags & F_PENDING else 0)))
        if total != expect:
            raise CheckpointError("file of %d bytes, its fields need %d" % (total, expect))
        count = u16(head, 32)
        if count > net.batch_max or u16(head, 34) > net.batch_max:
            raise CheckpointError("%d samples pending, %d gradients, beyond batch_max %d"
                                  % (count, u16(head, 34), net.batch_max))
        if momentum:
            for l in range(net.L):
                src.int32s(net.VW[l], V_MAX, "momentum")
                src.int32s(net.VB[l], V_MAX, "momentum")
        if opt:
            try:
                opt.read_state(src)
            except ValueError as e:
                raise CheckpointError(str(e)) from None
        if count:
            bound = _grad_bound(count, net.kg)
            for l in range(net.L):
                src.int32s(net.GW[l], bound, "gradient sum")
                src.int32s(net.GB[l], bound, "gradient sum")
    finally:
        f.close()
    net.seen = u32(head, 20)
    net.correct = u32(head, 24)
    net.loss_sum = u32(head, 28)
    net.count = count
    net.grad_count = u16(head, 34)
    return net


def generation(head):
    return u32(head, 8)


def every(head):
    return u16(head, 6)


def samples(head):
    return u32(head, 12)


def updates(head):
    return u32(head, 16)
