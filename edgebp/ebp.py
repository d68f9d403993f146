# The .ebp net file: formats, int16 parameters and hyper-parameters of one net.
#
# Little-endian. L = number of layers (1..8); n_l = sizes[l].
#   off     size  field
#   0       4     magic b"EBPN"
#   4       1     format version (1)
#   5       1     L
#   6       1     loss code (fixed.LOSS_NAMES)
#   7       1     flags: bit 0 momentum buffers, bit 1 hyper-parameters present, bit 2 input
#                 map present, bit 3 Adam (edgebp/adam.py) in place of SGD, bit 4 SDLM
#                 (edgebp/sdlm.py) in place of SGD, bit 5 weight formats that follow the
#                 weights (edgebp/dynfmt.py; SGD only)
#   8       2     batch_max (1..32768)
#   10      2     alpha_q, leaky-ReLU slope in Q12 (int16)
#   12      12    hyper block: lr_m u8, lr_e u8, mu u8 (Q8), c_m u8, c_e u8, rounding u8,
#                 batch u16, seed u32 (30 bits used)
#   24      4     n_bytes: length of the net file, header to final CRC inclusive
#   28      2     n_0, the input width
#   30      1     shift_a[0]
#   31      1     logit_k: a softmax output reads its z in Q(12 - logit_k), 0..3 (0 with any
#                 other output)
#   32+6l   6     layer l: n_(l+1) u16, activation u8, shift_a[l+1] u8, shift_w u8, shift_d u8
#   32+6L   4     only with flag bit 3: the Adam block, c1 u16 = 1 - beta1 in Q15 (32..32768),
#                 c2 u16 = 1 - beta2 in Q15 (1..32768); a = 4 with it, else 0
#   32+6L   4+2L  only with flag bit 4: the SDLM block, mu_m u8, mu_e u8 (mu = mu_m *
#                 2**-mu_e), gamma u16 (Q14, 1..16384), then per layer fc u8 (Q of its
#                 units' curvature C), fh u8 (Q of its parameters' curvature HW, HB);
#                 a = 4 + 2L with it (a file never has both blocks)
#   32+6L   2L    only with flag bit 5: per layer the window of its weight format, lo u8,
#                 hi u8 (lo <= shift_w <= hi <= 24); a = 2L with it (never beside Adam or
#                 SDLM). shift_w in the layer record is the format the weights are in now.
#   32+6L+a 2     CRC-16 of every header byte before it (checked before anything is allocated)
#   34+6L+a ...   per layer: W (n_(l+1) x n_l int16, row-major), then B (n_(l+1) int16)
#   ...     21n_0+2  only with flag bit 2: the input map, per input i (of n_0)
#                 lo i32, hi i32, o i32, m i32, c i32, s u8, then the map's own CRC-16.
#                 It takes a raw integer input x to the net's input format:
#                   x_q = clamp(((clamp(x, lo, hi) - o) * m + c) >> s, -32767, 32767)
#                 (the rounding is folded into c; host/nets/inmap.py derives it and proves
#                 it: -2**29 <= lo <= o <= hi < 2**29 and |m| max|x - o| + |c| < 2**30,
#                 which the loader checks again). Without it the inputs are taken as x_q.
#   end-2   2     CRC-16 (crc.crc16) of everything before it
# A host-only trailer may follow (see host/nets/ebpfile.py); the board never reads past n_bytes.
#
# Loader parses the file as it arrives in pieces of any size (a file in memory, a stream,
# or LOAD_CHUNK payloads): it checks the header, builds the Net, then writes each parameter
# straight into the Net's arrays, so the board never holds the file and the net together.
# A net with Adam gets its optimiser state (edgebp.adam.attach, the moments M and V of every
# parameter) before its hyper-parameters are applied; edgebp.adam is imported only then, so
# that it costs an SGD net nothing. Adam takes the place of momentum: a file with both is
# refused. SDLM likewise (edgebp.sdlm.attach: C of every unit, HW, HB of every parameter),
# imported only by a file with its flag, and refused beside momentum or Adam.

import gc

from edgebp.crc import CRC_TABLE, crc16
from edgebp.fixed import SMALL_MAX
from edgebp.net import MAX_BATCH, MAX_LAYERS, MAX_WIDTH, Net, zeros

MAGIC = b"EBPN"
VERSION = 1
FIXED = 32  # header bytes before the layer records
HYPER_AT = 12
HYPER_LEN = 12
FLAG_MOMENTUM = 1
FLAG_HYPER = 2
FLAG_INMAP = 4
FLAG_ADAM = 8
FLAG_SDLM = 16
FLAG_DYNFMT = 32
ADAM_LEN = 4  # the Adam block: c1, c2
SDLM_LEN = 4  # the SDLM block before its per-layer formats: mu_m, mu_e, gamma
INMAP_REC = 21  # bytes per input in the input map
RAW_MAX = 1 << 29  # raw inputs of an input map lie in [-RAW_MAX, RAW_MAX)


class EbpError(ValueError):
    pass


class NoRoom(EbpError):
    # the net does not fit the free RAM: `need` and `free` in bytes (free -1: not known)
    def __init__(self, text, need, free):
        super().__init__(text)
        self.need = need
        self.free = free


class InMap:
    # The input map of a net file (layout above): raw integer inputs -> the input format.
    # lo, hi, o, m, c: array('i'), s: bytearray, one item per input.
    def __init__(self, n):
        self.n = n
        self.lo = zeros("i", n)
        self.hi = zeros("i", n)
        self.o = zeros("i", n)
        self.m = zeros("i", n)
        self.c = zeros("i", n)
        self.s = bytearray(n)

    def apply(self, x, xq):
        # x: n raw ints (any sequence), xq: array('h'); allocates nothing. Every
        # intermediate lies within [-2**30, 2**30): the loader refused a map that could
        # leave it
        lo = self.lo
        hi = self.hi
        o = self.o
        m = self.m
        c = self.c
        s = self.s
        for i in range(self.n):
            v = x[i]
            if v < lo[i]:
                v = lo[i]
            elif v > hi[i]:
                v = hi[i]
            v = ((v - o[i]) * m[i] + c[i]) >> s[i]
            if v > 32767:
                v = 32767
            elif v < -32767:
                v = -32767
            xq[i] = v


def inmap_check(lo, hi, o, m, c, s):
    # the reason the record of one input breaks the arithmetic contract, None if it keeps it
    # (each test in small ints: lo, hi, o within +-2**29, so their differences are small)
    if lo < -RAW_MAX or hi >= RAW_MAX or lo > hi:
        return "raw range %d..%d outside -2**29..2**29-1 or empty" % (lo, hi)
    if o < lo or o > hi:
        return "centre %d outside the raw range %d..%d" % (o, lo, hi)
    if s > 30:
        return "shift %d above 30" % s
    d = o - lo if o - lo > hi - o else hi - o
    am = m if m >= 0 else -m
    ac = c if c >= 0 else -c
    if ac > SMALL_MAX or (am and d > (SMALL_MAX - ac) // am):
        return "(x - o) * m + c can leave [-2**30, 2**30)"
    return None


def head_len(L, adam=False, sdlm=False, dyn=False):
    return (FIXED + 6 * L + (ADAM_LEN if adam else 0) + (SDLM_LEN + 2 * L if sdlm else 0)
            + (2 * L if dyn else 0) + 2)


def inmap_len(n_in):
    return INMAP_REC * n_in + 2


def file_len(sizes, inmap=False, adam=False, sdlm=False, dyn=False):
    n = head_len(len(sizes) - 1, adam, sdlm, dyn) + 2 + (inmap_len(sizes[0]) if inmap else 0)
    for l in range(len(sizes) - 1):
        n += 2 * sizes[l + 1] * (sizes[l] + 1)
    return n


def ram_need(sizes, momentum, adam=False, sdlm=False):
    # bytes of RAM a net of these sizes takes, about: W or B int16, G int32, V int32 per
    # parameter (momentum), Adam's M and V int32 per parameter, SDLM's HW or HB int16 per
    # parameter and C int16 per unit, Z, A, D, the bias and gradient bookkeeping per unit
    per = 6 + (4 if momentum else 0) + (8 if adam else 0) + (2 if sdlm else 0)
    unit = 8 + (2 if sdlm else 0)
    L = len(sizes) - 1
    need = 0
    for l in range(L):
        need += per * sizes[l + 1] * (sizes[l] + 1) + unit * sizes[l + 1] + 2 * sizes[l]
    if sdlm:
        # its seven lists of one small int per layer (mu, kq, sq, s_w, s_b, fc, fh) and
        # its three of arrays (C, HW, HB), a list and its items at most 4 words each
        need += 10 * (16 + 4 * L)
    return need


def net_need(net):
    # ram_need of a built net: its momentum buffers and its optimiser's state (SDLM's is the
    # one with a curvature pass)
    o = net.opt
    return ram_need(net.sizes, net.VW[0] is not None, o is not None and not o.curv,
                    o is not None and o.curv)


def apply_hyper(net, b, o):
    # the 12-byte hyper block at b[o:]; all or nothing (ValueError names the bad value)
    lr_m = b[o]
    lr_e = b[o + 1]
    mu = b[o + 2]
    c_m = b[o + 3]
    c_e = b[o + 4]
    mode = b[o + 5]
    batch = b[o + 6] | (b[o + 7] << 8)
    seed = b[o + 8] | (b[o + 9] << 8) | (b[o + 10] << 16) | ((b[o + 11] & 0x3F) << 24)
    if mode > 1:
        raise ValueError("rounding mode %d unknown" % mode)
    old = (net.lr_m, net.lr_e, net.batch, net.mu, net.c_m, net.c_s, net.mode, net.rng[0])
    try:
        net.set_lr(lr_m, lr_e)
        net.set_batch(batch)
        net.set_momentum(mu)
        net.set_decay(c_m, c_e)
    except ValueError:
        net.lr_m, net.lr_e, net.batch, net.mu, net.c_m, net.c_s, net.mode, net.rng[0] = old
        raise
    net.set_rounding(mode, seed)


def u16(b, o):
    return b[o] | (b[o + 1] << 8)


def i30(b, o):
    # a little-endian int32 inside [-2**30, 2**30), decoded without leaving the small ints;
    # None if it is outside
    hi = b[o + 3]
    if 0x40 <= hi < 0xC0:
        return None
    v = b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | ((hi & 0x3F) << 24)
    return v - SMALL_MAX - 1 if hi & 0x80 else v


def u32(b, o):
    # 30-bit values only: a larger one would not be a small int on a board
    if b[o + 3] >= 0x40:
        return -1
    return b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)


def _opt_module(adam):
    # edgebp.adam or edgebp.sdlm, imported by the first net that has that optimiser
    try:
        if adam:
            from edgebp import adam as mod
        else:
            from edgebp import sdlm as mod  # type: ignore[no-redef]
    except ImportError:
        n = "adam" if adam else "sdlm"
        raise EbpError("an %s net, and this board has no edgebp/%s"
                       % ("Adam" if adam else "SDLM", n)) from None
    return mod


class Loader:
    """Parse a .ebp arriving in pieces: feed(buf, start, end) ..., then finish() -> Net.

    `total` is the number of bytes that will be fed, if known (-1 if not): a file shorter
    than its header says is refused before the net is allocated. Raises EbpError.
    """

    def __init__(self, total=-1, kernels=None, mem_free=None):
        self.total = total
        self.kernels = kernels
        self.mem_free = mem_free if mem_free is not None else getattr(gc, "mem_free", None)
        self.head = bytearray(head_len(MAX_LAYERS, True, True, True))
        self.need = FIXED  # header bytes needed (known in full once L is)
        self.got = 0  # bytes consumed
        self.net = None
        self.n_bytes = 0
        self.has_hyper = False  # the file has a hyper block (self.hyper)
        self.crc = 0xFFFF
        self.phase = 0  # 0 header, 1 parameters, 4 input map, 2 final CRC, 3 done
        self.l = 0  # layer, part (0 W, 1 B), index in the part
        self.part = 0
        self.idx = 0
        self.lo = -1  # low byte of an int16 split between pieces
        self.tail = 0  # final CRC as received
        self.inmap = None  # the file's InMap, filled in phase 4
        self.rec = None  # one record of it as it arrives
        self.rec_n = 0
        self.rec_i = 0  # input of that record
        self.icrc = 0xFFFF

    def feed(self, buf, start, end):
        i = start
        while i < end:
            if self.phase == 0:
                i = self._feed_head(buf, i, end)
            elif self.phase == 1:
                i = self._feed_params(buf, i, end)
            elif self.phase == 4:
                i = self._feed_inmap(buf, i, end)
            elif self.phase == 2:
                self.tail |= buf[i] << (8 * (self.got - self.n_bytes + 2))
                self.got += 1
                i += 1
                if self.got == self.n_bytes:
                    self.phase = 3
            else:
                # a trailer for the host
                self.got += end - i
                i = end

    def _feed_head(self, buf, i, end):
        h = self.head
        while i < end and self.got < self.need:
            h[self.got] = buf[i]
            self.got += 1
            i += 1
        g = self.got
        if g >= 4 and (h[0] != MAGIC[0] or h[1] != MAGIC[1] or h[2] != MAGIC[2]
                       or h[3] != MAGIC[3]):
            raise EbpError("bad magic %r: not an edgebp net file" % bytes(h[0:4]))
        if g >= 5 and h[4] != VERSION:
            raise EbpError("unsupported format version %d (this firmware reads %d)"
                           % (h[4], VERSION))
        if g >= 6 and self.need == FIXED:
            L = h[5]
            if L < 1 or L > MAX_LAYERS:
                raise EbpError("%d layers: a net has 1 to %d" % (L, MAX_LAYERS))
        if g >= 8 and self.need == FIXED:
            # the flags say whether the Adam or SDLM block lengthens the header
            self.need = head_len(h[5], h[7] & FLAG_ADAM, h[7] & FLAG_SDLM, h[7] & FLAG_DYNFMT)
        if g == self.need and self.need > FIXED:
            self._parse_head()
        return i

    def _parse_head(self):
        h = self.head
        L = h[5]
        flags = h[7]
        n = self.need - 2
        if crc16(h, 0, n) != u16(h, n):
            raise EbpError("header CRC mismatch")
        if flags & ~(FLAG_MOMENTUM | FLAG_HYPER | FLAG_INMAP | FLAG_ADAM | FLAG_SDLM
                     | FLAG_DYNFMT):
            raise EbpError("unknown flags 0x%02x" % flags)
        batch_max = u16(h, 8)
        if batch_max < 1 or batch_max > MAX_BATCH:
            raise EbpError("batch_max %d outside 1..%d" % (batch_max, MAX_BATCH))
        alpha = u16(h, 10)
        if alpha >= 32768:
            alpha -= 65536
        sizes = [u16(h, 28)]
        acts = []
        shift_a = [h[30]]
        shift_w = []
        shift_d = []
        logit_k = h[31]
        for l in range(L):
            o = FIXED + 6 * l
            sizes.append(u16(h, o))
            acts.append(h[o + 2])
            shift_a.append(h[o + 3])
            shift_w.append(h[o + 4])
            shift_d.append(h[o + 5])
        for l in range(L + 1):
            if sizes[l] < 1 or sizes[l] > MAX_WIDTH:
                what = "input" if l == 0 else "layer %d output" % l
                raise EbpError("%s width %d out of range 1..%d" % (what, sizes[l], MAX_WIDTH))
        n_bytes = u32(h, 24)
        adam = flags & FLAG_ADAM
        sdlm = flags & FLAG_SDLM
        dyn = flags & FLAG_DYNFMT
        expect = file_len(sizes, flags & FLAG_INMAP, adam, sdlm, dyn)
        if n_bytes != expect:
            raise EbpError("header says %d bytes but the layer sizes need %d"
                           % (n_bytes, expect))
        if self.total >= 0 and self.total < n_bytes:
            raise EbpError("truncated: %d bytes of %d" % (self.total, n_bytes))
        self.n_bytes = n_bytes
        momentum = bool(flags & FLAG_MOMENTUM)
        mod = None
        if adam or sdlm:
            if momentum or (adam and sdlm):
                raise EbpError("%s together: a net has one optimiser"
                               % ("Adam and SDLM" if adam and sdlm else "%s and momentum"
                                  % ("Adam" if adam else "SDLM")))
            mod = _opt_module(adam)
            try:
                args = mod.parse(h, FIXED + 6 * L, L)
            except ValueError as e:
                raise EbpError(str(e)) from None
        if dyn:
            if adam or sdlm:
                raise EbpError("dynamic weight formats are for SGD, not %s"
                               % ("Adam" if adam else "SDLM"))
            try:
                from edgebp import dynfmt
            except ImportError:
                raise EbpError("a net with dynamic weight formats, and this board has no "
                               "edgebp/dynfmt") from None
            window = dynfmt.parse(h, FIXED + 6 * L, L)
        self._check_memory(sizes, momentum, adam, sdlm)
        try:
            net = Net(sizes, acts, shift_a, shift_w, shift_d, h[6], batch_max, momentum,
                      alpha, self.kernels, logit_k)
            if mod is not None:
                mod.attach(net, *args)
            if dyn:
                dynfmt.attach(net, *window)
        except MemoryError:
            raise NoRoom("out of memory building a net of %d parameters" % (expect // 2),
                         ram_need(sizes, momentum, adam, sdlm), -1) from None
        except ValueError as e:
            raise EbpError("net: %s" % e) from None
        except (ImportError, AttributeError):
            # the optimiser's kernels for these kernels (edgebp.adam._kernel,
            # edgebp.sdlm._kernels) are not on the board: no edgebp/adam_viper.py,
            # edgebp/adam_native.mpy, edgebp/sdlm_viper.py or edgebp/sdlm_native.mpy
            k = "" if self.kernels is None else self.kernels.__name__
            raise EbpError("no %s kernel for the %s kernels"
                           % ("Adam" if adam else "SDLM", k[k.rfind("_") + 1:] if "_" in k
                              else "python")) from None
        if flags & FLAG_HYPER:
            try:
                apply_hyper(net, h, HYPER_AT)
            except ValueError as e:
                raise EbpError("hyper-parameters: %s" % e) from None
            self.has_hyper = True
        if flags & FLAG_INMAP:
            try:
                self.inmap = InMap(sizes[0])
                self.rec = bytearray(INMAP_REC)
            except MemoryError:
                raise NoRoom("out of memory for the input map of %d inputs" % sizes[0],
                             INMAP_REC * sizes[0], -1) from None
        self.net = net
        self.crc = crc16(h, 0, n + 2)
        self.phase = 1

    @property
    def hyper(self):
        # the hyper block as bytes, None if the file has none (made when asked for: the
        # board never asks)
        return bytes(self.head[HYPER_AT:HYPER_AT + HYPER_LEN]) if self.has_hyper else None

    def _check_memory(self, sizes, momentum, adam, sdlm):
        if self.mem_free is None:
            return
        # before anything of the net is allocated
        need = ram_need(sizes, momentum, adam, sdlm)
        free = self.mem_free()
        if need > free:
            # garbage is free RAM too: MicroPython collects only when an allocation fails, so
            # what imports and file transfers left behind is counted as used until then
            gc.collect()
            free = self.mem_free()
        if need > free:
            raise NoRoom("net needs about %d bytes of RAM, %d free" % (need, free), need, free)

    def _feed_params(self, buf, i, end):
        net = self.net
        assert net is not None  # phase 1 starts once the net is built
        t = CRC_TABLE
        i0 = i
        crc = self.crc
        lo = self.lo
        arr = net.B[self.l] if self.part else net.W[self.l]
        size = len(arr)
        idx = self.idx
        while i < end:
            b = buf[i]
            i += 1
            crc = ((crc << 8) & 0xFF00) ^ t[((crc >> 8) ^ b) & 0xFF]
            if lo < 0:
                lo = b
                continue
            v = lo | (b << 8)
            lo = -1
            if v >= 32768:
                v -= 65536
                if v == -32768:
                    raise EbpError("layer %d %s: -32768 outside the symmetric int16 range"
                                   % (self.l + 1, "bias" if self.part else "weight"))
            arr[idx] = v
            idx += 1
            if idx == size:
                idx = 0
                if self.part == 0:
                    self.part = 1
                else:
                    self.part = 0
                    self.l += 1
                if self.l == net.L:
                    self.phase = 2 if self.inmap is None else 4
                    break
                arr = net.B[self.l] if self.part else net.W[self.l]
                size = len(arr)
        self.got += i - i0
        self.crc = crc
        self.lo = lo
        self.idx = idx
        return i

    def _feed_inmap(self, buf, i, end):
        # records of INMAP_REC bytes, decoded as each completes, then the map's CRC
        rec = self.rec
        mp = self.inmap
        assert rec is not None and mp is not None  # phase 4 starts with both made
        t = CRC_TABLE
        crc = self.crc
        icrc = self.icrc
        i0 = i
        while i < end:
            b = buf[i]
            i += 1
            crc = ((crc << 8) & 0xFF00) ^ t[((crc >> 8) ^ b) & 0xFF]
            rec[self.rec_n] = b
            self.rec_n += 1
            if self.rec_i < mp.n:
                icrc = ((icrc << 8) & 0xFF00) ^ t[((icrc >> 8) ^ b) & 0xFF]
                if self.rec_n == INMAP_REC:
                    self._inmap_record(rec, self.rec_i)
                    self.rec_i += 1
                    self.rec_n = 0
            elif self.rec_n == 2:
                if icrc != u16(rec, 0):
                    raise EbpError("input map CRC mismatch: the map is damaged")
                self.phase = 2
                break
        self.got += i - i0
        self.crc = crc
        self.icrc = icrc
        return i

    def _inmap_record(self, rec, k):
        mp = self.inmap
        lo = i30(rec, 0)
        hi = i30(rec, 4)
        o = i30(rec, 8)
        m = i30(rec, 12)
        c = i30(rec, 16)
        s = rec[20]
        if lo is None or hi is None or o is None or m is None or c is None:
            why = "a field beyond [-2**30, 2**30)"
        else:
            why = inmap_check(lo, hi, o, m, c, s)
        if why is not None:
            raise EbpError("input map, input %d: %s" % (k, why))
        mp.lo[k] = lo
        mp.hi[k] = hi
        mp.o[k] = o
        mp.m[k] = m
        mp.c[k] = c
        mp.s[k] = s

    def finish(self):
        # the Net, once every byte of the file arrived intact
        if self.phase == 0:
            if self.got < 6:
                raise EbpError("truncated in the header: %d bytes" % self.got)
            raise EbpError("truncated in the header: %d of %d bytes" % (self.got, self.need))
        if self.phase == 1:
            raise EbpError("truncated in the %s of layer %d"
                           % ("biases" if self.part else "weights", self.l + 1))
        if self.phase == 4:
            raise EbpError("truncated in the input map")
        if self.phase == 2:
            raise EbpError("truncated in the final CRC")
        if self.tail != self.crc:
            raise EbpError("CRC mismatch: file says 0x%04x, contents give 0x%04x"
                           % (self.tail, self.crc))
        net = self.net
        assert net is not None  # phase 3 comes after the net is built
        net.inmap = self.inmap
        return net


def load(src, kernels=None):
    """A Net from a whole .ebp file (bytes-like) or a stream with readinto()."""
    if hasattr(src, "readinto"):
        ld = Loader(-1, kernels)
        buf = bytearray(256)
        while True:
            n = src.readinto(buf)
            if not n:
                break
            ld.feed(buf, 0, n)
    else:
        ld = Loader(len(src), kernels)
        ld.feed(src, 0, len(src))
    return ld.finish()
