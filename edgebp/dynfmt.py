# Formats that follow the weights (dynamic fixed point): the rule and its state.
#
# A net whose file asks for it (edgebp/ebp.py, FLAG_DYNFMT) gives each layer a window
# lo..hi of weight formats (shift_w: W and B are Q(shift_w)). After every SGD update
# (edgebp.net.Net.update) each layer not frozen is looked at, in order:
#   m = max |w| over its W and B
#   m >= HIGH (2**14) and shift_w > lo: every w, and its momentum v, becomes (x + 1) >> 1,
#                                       and shift_w drops by one: one bit more of range
#   m <  LOW  (2**12) and shift_w < hi: every w and v doubles (v saturated at V_MAX), and
#                                       shift_w rises by one: one bit more of resolution
# The gap between HIGH and LOW keeps a layer from moving back and forth: a layer just
# halved has m >= 2**13, one just doubled m < 2**13. A weight can never reach the int16
# limit while its layer has a lower format to go to, unless one update moves it from below
# 2**14 to 32767. The gradient sums are empty at that moment (the update cleared them).
#
# The formats of what the weights produce follow them by the same step d (-1 or +1):
#   forward   z of layer l and the activations it feeds, where their format is free
#             (identity, relu, leaky units of a hidden layer), and on through the layers
#             above while those are free too: each keeps its forward shift s_f; the first
#             layer of fixed format (squashing or gated units, the output) takes the step
#             in its s_f instead
#   backward  the delta of every layer below (W^T d scales with W): every backward shift
#             s_b stays as it is
# and the update's shift of every layer whose formats moved (u = lr_e + shift_d + shift_a -
# kg - shift_w - 16 before the batch's part) moves with them. So a delta sent down through
# weights grown eightfold has eight times the range, as the weights have, and a hidden z
# fed by them likewise; nothing is rescaled but the weights and momentum, since every
# activation and delta is formed anew from the next sample on. A move that would take the
# update's shift of any layer below zero at the learning rate now (where Net.set_lr would
# refuse the rate) is not made: the layer keeps its format until the others' allow it.
# The twin (host/nets/twin.py) applies the same rule, and derived() gives the formats of
# any combination of weight formats (the host's range proof visits every combination of
# the windows whose shifts the learning rate keeps at zero or above: host/nets/ranges.py).
#
# Only SGD (with or without momentum) takes it: Adam and SDLM keep formats of their own.
# This module is imported only by nets that use it; follow() allocates nothing.

from edgebp.fixed import LEAKY, V_MAX, const

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


def free(acts, l):
    # z of layer l has a format of its own choosing: hidden identity, relu or leaky units
    return l < len(acts) - 1 and acts[l] <= LEAKY


def derived(acts, shift_a, shift_d, shift_w, sw):
    """(shift_a, shift_d) of a net now in formats shift_a, shift_w, shift_d once its weight
    formats are sw (new lists; the rule's forward and backward steps, summed)."""
    L = len(shift_w)
    sa = list(shift_a)
    sd = list(shift_d)
    for l in range(L):
        d = sw[l] - shift_w[l]
        if d:
            m = l
            while free(acts, m):
                m += 1
                sa[m] += d
            for j in range(l):
                sd[j] += d
    return sa, sd


def allowed(net, l, d):
    # whether moving layer l by d keeps the update's shift of every layer at zero or above
    # at the learning rate now (the condition of Net.set_lr; frozen layers too, so that
    # unfreezing one finds it so): the shift of layer l falls as its format rises, those of
    # the layers its formats reach fall as it drops
    least = net.kg + 16 - net.lr_e  # shift_d + shift_a - shift_w may not go below this
    if d > 0:
        return net.shift_d[l] + net.shift_a[l] - net.shift_w[l] - d >= least
    m = l
    while free(net.acts, m):
        m += 1
        if net.shift_d[m] + net.shift_a[m] + d - net.shift_w[m] < least:
            return False
    for j in range(l):
        if net.shift_d[j] + d + net.shift_a[j] - net.shift_w[j] < least:
            return False
    return True


def check(net, lo, hi):
    # the reason windows break the rule's assumptions, raised as ValueError: every format
    # within the core's limits at every combination (the extremes are where all are lowest
    # or all highest: each derived format rises with every weight format), and no forward
    # shift below -15 (requant maps 0 to 0 from there up)
    sw = net.shift_w
    L = net.L
    for l in range(L):
        if not lo[l] <= sw[l] <= hi[l] <= 24:
            raise ValueError("layer %d: weight format %d outside its window %d..%d (at most "
                             "24)" % (l + 1, sw[l], lo[l], hi[l]))
    for ends in (lo, hi):
        sa, sd = derived(net.acts, net.shift_a, net.shift_d, sw, ends)
        for l in range(L):
            if not 0 <= sa[l + 1] <= 14 or not 0 <= sd[l] <= 24:
                raise ValueError("layer %d: the windows of weight formats take its output or "
                                 "delta format outside the core's limits" % (l + 1))
            sz = sa[l + 1] if free(net.acts, l) else net.shift_z[l]
            if ends[l] + sa[l] - net.k_f[l] - sz < -15:
                raise ValueError("layer %d: the windows of weight formats take its forward "
                                 "shift below -15" % (l + 1))


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
        check(net, lo, hi)
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
            if m >= HIGH and sw > self.lo[l] and allowed(net, l, -1):
                d = -1
                halve16(W, nw)
                halve16(B, nb)
                if VW is not None:
                    halve32(VW, nw)
                    halve32(net.VB[l], nb)
            elif m < LOW and sw < self.hi[l] and allowed(net, l, 1):
                d = 1
                double16(W, nw)
                double16(B, nb)
                if VW is not None:
                    double32(VW, nw)
                    double32(net.VB[l], nb)
            else:
                continue
            net.shift_w[l] = sw + d
            # edgebp.net.Net._fuse's table P: 5 items, then 9 per layer (one at 2, s_f at
            # 4, the update's u0 at 8)
            if P is not None:
                P[13 + 9 * l] -= d
            m = l
            while free(net.acts, m):
                net.shift_z[m] += d
                m += 1
                net.shift_a[m] += d
                net.one[m] = 1 << net.shift_a[m]
                if P is not None:
                    P[7 + 9 * m] = net.one[m]
                    P[13 + 9 * m] += d
            net.s_f[m] += d
            if P is not None:
                P[9 + 9 * m] += d
            for j in range(l):
                net.shift_d[j] += d
                if P is not None:
                    P[13 + 9 * j] += d
            if self.moves < 0x3FFFFFFF:
                self.moves += 1


def attach(net, lo, hi):
    """Give `net` (SGD, with or without momentum) weight formats that follow its weights,
    layer l's within lo[l]..hi[l]."""
    if net.opt is not None:
        raise ValueError("dynamic weight formats are for SGD: this net has another optimiser")
    net.dyn = Formats(net, lo, hi)
    return net.dyn
