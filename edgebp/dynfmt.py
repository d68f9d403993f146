# Weight formats that follow the weights (dynamic fixed point): the rule and its state.
#
# A net whose file asks for it (edgebp/ebp.py, FLAG_DYNFMT) gives each layer a window
# lo..hi of weight formats (shift_w: W and B are Q(shift_w)). After every SGD update
# (edgebp.net.Net.update) each layer not frozen is looked at, in order:
#   m = max |w| over its W and B
#   m >= HIGH (2**14) and shift_w > lo: every w, and its momentum v, becomes (x + 1) >> 1,
#                                       and shift_w drops by one: one bit more of range
#   m <  LOW  (2**12) and shift_w < hi: every w and v doubles (v saturated at V_MAX), and
#                                       shift_w rises by one: one bit more of resolution
# and the layer's derived shifts (forward s_f, backward s_b, the update's shift) move with
# it. The gap between HIGH and LOW keeps a layer from moving back and forth: a layer just
# halved has m >= 2**13, one just doubled m < 2**13. A weight can never reach the int16
# limit while its layer has a lower format to go to, unless one update moves it from below
# 2**14 to 32767. The gradient sums are empty at that moment (the update cleared them).
# The twin (host/nets/twin.py) applies the same rule, and the range proof
# (host/nets/ranges.py) covers every format of each window. hi is where the learning rate
# was checked (Net.set_lr), so no format of the window makes the update's shift negative.
#
# Only SGD (with or without momentum) takes it: Adam and SDLM keep formats of their own.
# This module is imported only by nets that use it; follow() allocates nothing.

from edgebp.fixed import V_MAX, const

HIGH = const(16384)
LOW = const(4096)
FLAG = const(32)  # edgebp.ebp.FLAG_DYNFMT


def absmax(a, n):
    m = 0
    for i in range(n):
        v = a[i]
        if v < 0:
            v = -v
        if v > m:
            m = v
    return m


def halve(a, n):
    for i in range(n):
        a[i] = (a[i] + 1) >> 1


def double(a, n, lim):
    for i in range(n):
        v = a[i] << 1
        if v > lim:
            v = lim
        elif v < -lim:
            v = -lim
        a[i] = v


# the viper kernels once imported, or None once that failed (retrying leaks RAM)
_viper = []  # type: list[tuple | None]


def _kernels(k):
    # (absmax16, halve16, halve32, double16, double32) for a net's kernel set: the viper
    # ones beside viper or native kernels where the runtime compiles them, else the
    # definitions above
    n = k.__name__
    if n.endswith("native") or n.endswith("viper"):
        if not _viper:
            try:
                from edgebp import dynfmt_viper as v

                _viper.append((v.absmax16, v.halve16, v.halve32, v.double16, v.double32))
            except (ImportError, SyntaxError, ValueError, OSError):
                _viper.append(None)
        if _viper[0] is not None:
            return _viper[0]
    return absmax, halve, halve, _double16, _double32


def _double16(a, n):
    double(a, n, 32767)


def _double32(a, n):
    double(a, n, V_MAX)


def check(shift_w, lo, hi):
    # the reason a window breaks the rule's assumptions, raised as ValueError
    for l in range(len(shift_w)):
        if not lo[l] <= shift_w[l] <= hi[l] <= 24:
            raise ValueError("layer %d: weight format %d outside its window %d..%d (at most "
                             "24)" % (l + 1, shift_w[l], lo[l], hi[l]))


def parse(h, o, L):
    # the block of a .ebp header at h[o:] (edgebp/ebp.py): (lo, hi) per layer, 2L bytes
    lo = bytearray(L)
    hi = bytearray(L)
    for l in range(L):
        lo[l] = h[o + 2 * l]
        hi[l] = h[o + 2 * l + 1]
    return lo, hi


class Formats:
    # the windows of one net and the count of moves so far
    flag = FLAG

    def __init__(self, net, lo, hi):
        check(net.shift_w, lo, hi)
        self.lo = bytearray(lo)
        self.hi = bytearray(hi)
        self.moves = 0
        self.k = _kernels(net.k)

    def write_block(self, o):
        for l in range(len(self.lo)):
            o.byte(self.lo[l])
            o.byte(self.hi[l])

    def follow(self, net):
        absmax16, halve16, halve32, double16, double32 = self.k
        P = None if net._fused is None else net._fused[9]
        for l in range(net.frozen, net.L):
            W = net.W[l]
            B = net.B[l]
            nw = len(W)
            nb = len(B)
            m = absmax16(W, nw)
            mb = absmax16(B, nb)
            if mb > m:
                m = mb
            sw = net.shift_w[l]
            VW = net.VW[l]
            if m >= HIGH and sw > self.lo[l]:
                d = -1
                halve16(W, nw)
                halve16(B, nb)
                if VW is not None:
                    halve32(VW, nw)
                    halve32(net.VB[l], nb)
            elif m < LOW and sw < self.hi[l]:
                d = 1
                double16(W, nw)
                double16(B, nb)
                if VW is not None:
                    double32(VW, nw)
                    double32(net.VB[l], nb)
            else:
                continue
            net.shift_w[l] = sw + d
            net.s_f[l] += d
            if l:
                net.s_b[l] += d
            if P is not None:
                # edgebp.net.Net._fuse's table: 5 items, then 9 per layer (s_f at 4, s_b
                # at 7, the update's u0 at 8)
                i = 5 + 9 * l
                P[i + 4] += d
                if l:
                    P[i + 7] += d
                P[i + 8] -= d
            if self.moves < 0x3FFFFFFF:
                self.moves += 1


def attach(net, lo, hi):
    """Give `net` (SGD, with or without momentum) weight formats that follow its weights,
    layer l's within lo[l]..hi[l]."""
    if net.opt is not None:
        raise ValueError("dynamic weight formats are for SGD: this net has another optimiser")
    net.dyn = Formats(net, lo, hi)
    return net.dyn
