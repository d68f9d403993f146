# Adam in fixed point: the definition (kernel `adam`) and the optimiser state of a net.
#
# A net trained with Adam carries, per parameter, its first moment m (int32) and its second
# moment v (int32, a small float of its own) beside W and the gradient sum G: 8 bytes more
# than plain SGD's W and G, 14 bytes a parameter in all. This module is imported only by
# nets that use Adam.
#
# Units. The mean gradient of a parameter over the `count` samples of a sum G is, in units of
# twice the product d*x of its delta and input (the format of D times that of A),
#   x = round(G / count) << (kg - 1)      (kg = 0: round(G / count) >> 1)
# with |x| <= 2**29 (each term of G is (d*x) >> kg, |d*x| < 2**30). m is kept in the same
# units, so nothing of the gradient is lost below its smallest step.
#   m += floor((x - m) * c1 / 2**15)                   c1 = (1 - beta1) in Q15, 32..32768
#   v += floor((x*x - v) * c2 / 2**15)                 c2 = (1 - beta2) in Q15, 1..32768
# v spans x*x from 1 to 2**58, so it is a small float of its own: F * 4**E, stored as
# (E + 11) << 25 | F with E in -11..18, F < 2**25, and F >= 2**22 unless E = -11 (0 is F = 0,
# E = -11). x*x enters as a*a * 4**k, a = |x| * 2**-k its top 12 bits (2**11 <= a < 2**12,
# k in -11..18: a mean gradient of one unit keeps 12 bits too); the sum is formed at the
# larger of the two exponents (the other mantissa shifted down, to 0 past 24 bits), then the
# mantissa is shifted back up while it is below 2**22. Both products are split at bit 15 so
# that every intermediate stays a small int (< 2**30): a floor exactly.
#   rho = |m| / sqrt(v) in Q12: floor(|m| * 2**-E * 4096 / max(isqrt(F), 1)) (for E >= 0 with
# |m| >> E first), saturated at 32767, just below 8 (the epsilon of Adam is below 2**-11 of
# a unit of m here: the ratio's clamp bounds the step where v is still 0). The step in
# 2**-8 weight LSB is then
#   s = sign(m) * ((rho * am) >> u)
# where am * 2**-u carries the learning rate, the bias correction of this update and the
# layer's weight format (Adam.update). Weight decay (decoupled: on w, not on the gradient),
# the clamp and the rounding of the step are SGD's (edgebp.kernels.update). G is cleared.
# Positional arguments and index loops only: nothing here allocates.
#
# The bias correction sqrt(1 - beta2**t) / (1 - beta1**t) is formed once per update from
# beta1**t and beta2**t, kept in Q28 and multiplied by beta each update (split products
# again), in Q12; with c1 >= 32 it is at most 2**22, and lr_m times it below 2**30.

from edgebp.fixed import SMALL_MAX, V_MAX, const

ONE28 = const(1 << 28)
BIAS = const(11)  # v's exponent field is E + BIAS
RHO_MAX = const(32767)
C1_MIN = const(32)
AM_MAX = const(32767)
_M30 = const(0x3FFFFFFF)
M_MAX = const(1 << 29)  # |m| (checked in a checkpoint)
V_FIELD_MAX = const(29)  # v's exponent field: E + BIAS, E <= 18


def isqrt(n):
    # floor(sqrt(n)) for 0 <= n < 2**30, bit by bit
    r = 0
    b = 1 << 28
    while b > n:
        b >>= 2
    while b:
        if n >= r + b:
            n -= r + b
            r = (r >> 1) + b
        else:
            r >>= 1
        b >>= 2
    return r


def mul_q15(a, c):
    # floor(a * c / 2**15) for |a| < 2**30, 0 <= c <= 32768, with no intermediate >= 2**30
    return (a >> 15) * c + (((a & 32767) * c) >> 15)


def adam(W, G, M, V, n, count, kg, c1, c2, am, u, c_m, c_s, mode, rng):
    half = count >> 1
    s = rng[0]
    for p in range(n):
        g = G[p]
        G[p] = 0
        if g >= 0:
            h = (g + half) // count
        else:
            h = -((half - g) // count)
        x = h << (kg - 1) if kg else h >> 1
        m = M[p]
        m += mul_q15(x - m, c1)
        M[p] = m
        a = x if x >= 0 else -x
        k = -BIAS
        xf = 0
        if a:
            k = 0
            while a >= 4096:
                a >>= 1
                k += 1
            while a < 2048:
                a <<= 1
                k -= 1
            xf = a * a
        q = V[p]
        e = (q >> 25) - BIAS
        f = q & 0x1FFFFFF
        if k > e:
            f = f >> (2 * (k - e)) if k - e < 13 else 0
            e = k
        elif e > k:
            xf = xf >> (2 * (e - k)) if e - k < 13 else 0
        f += mul_q15(xf - f, c2)
        if f == 0:
            e = -BIAS
        while e > -BIAS and f < 0x400000:
            f <<= 2
            e -= 1
        V[p] = ((e + BIAS) << 25) | f
        r = isqrt(f)
        if r == 0:
            r = 1
        mm = m if m >= 0 else -m
        if e >= 0:
            mm >>= e
            if mm >= r << 3:
                rho = RHO_MAX
            else:
                rho = (mm << 12) // r
        else:
            # (mm << -e) < 8 r exactly when mm is below the ceiling of 8 r / 2**-e
            if mm >= ((r << 3) + (1 << -e) - 1) >> -e:
                rho = RHO_MAX
            else:
                rho = ((mm << -e) << 12) // r
        v = (rho * am) >> u
        if m < 0:
            v = -v
        if v > V_MAX:
            v = V_MAX
        elif v < -V_MAX:
            v = -V_MAX
        w = W[p]
        if c_m:
            q = w * c_m
            if c_s > 0:
                v += (q >> c_s) + ((q >> (c_s - 1)) & 1)
            else:
                v += q
            if v > V_MAX:
                v = V_MAX
            elif v < -V_MAX:
                v = -V_MAX
        if mode:
            s ^= (s & (_M30 >> 9)) << 9
            s ^= s >> 11
            s ^= (s & (_M30 >> 12)) << 12
            w -= (v + (s >> 22)) >> 8
        else:
            w -= (v + 128) >> 8
        if w > 32767:
            w = 32767
        elif w < -32767:
            w = -32767
        W[p] = w
    rng[0] = s


def correction(p1, p2):
    # sqrt(1 - beta2**t) / (1 - beta1**t) in Q12 from beta**t in Q28
    d = (ONE28 - p1) >> 14
    if d < 1:
        d = 1
    return (isqrt(ONE28 - p2) << 12) // d


def scale(lr_m, corr):
    # lr_m * corr as am0 * 2**t with am0 <= AM_MAX; returns t (am0 = (lr_m * corr) >> t)
    P = lr_m * corr
    t = 0
    while (P >> t) > AM_MAX:
        t += 1
    return t


def layer_am(am0, u):
    # the multiplier of a layer whose shift u = lr_e + 16 - shift_w - t came out below 0:
    # am0 * 2**-u, saturated at AM_MAX (the shift is then 0)
    if -u >= 15:
        return AM_MAX
    am0 <<= -u
    return AM_MAX if am0 > AM_MAX else am0


def _kernel(k):
    # the adam kernel of the net's kernel set, from a module of its own (native:
    # adam_native.mpy; viper: adam_viper.py, compiled on the board), loaded only for nets that
    # use Adam
    n = k.__name__
    if n.endswith("native"):
        from edgebp import adam_native  # type: ignore[attr-defined]

        return adam_native.adam
    if n.endswith("viper"):
        from edgebp import adam_viper

        return adam_viper.adam
    return adam


class Adam:
    # The state of Adam for one net: moments of every W and B, t and beta**t. Made once, at
    # its final size (net.zeros); update() allocates nothing.
    curv = False  # no curvature pass (see edgebp.sdlm)
    sgd_lr = False  # its learning rate is not SGD's: set_lr does not check SGD's shifts
    flag = 8  # its flag in a .ebp file (edgebp.ebp.FLAG_ADAM)
    ckpt_flag = 4  # and in a checkpoint (edgebp.ckpt.F_ADAM)

    def __init__(self, net, c1, c2):
        from edgebp.net import _tensors

        check(c1, c2)
        self.c1 = c1
        self.c2 = c2
        sizes = net.sizes
        L = net.L
        self.MW = _tensors("i", sizes, L, 1, True)
        self.MB = _tensors("i", sizes, L, 1, False)
        self.VW = _tensors("i", sizes, L, 1, True)
        self.VB = _tensors("i", sizes, L, 1, False)
        self.t = 0
        self.p1 = ONE28
        self.p2 = ONE28
        self.k = _kernel(net.k)

    def reset(self):
        for l in range(len(self.MW)):
            for a in (self.MW[l], self.MB[l], self.VW[l], self.VB[l]):
                for i in range(len(a)):
                    a[i] = 0
        self.t = 0
        self.p1 = ONE28
        self.p2 = ONE28

    def update(self, net):
        # one Adam step of every unfrozen layer from the pending sums of net.count samples
        count = net.count
        if self.t < SMALL_MAX:
            self.t += 1
        self.p1 = mul_q15(self.p1, 32768 - self.c1)
        self.p2 = mul_q15(self.p2, 32768 - self.c2)
        corr = correction(self.p1, self.p2)
        t = scale(net.lr_m, corr)
        am0 = (net.lr_m * corr) >> t
        k = self.k
        kg = net.kg
        sizes = net.sizes
        c1 = self.c1
        c2 = self.c2
        for l in range(net.frozen, net.L):
            # am * 2**-u = lr * corr / 4096 * 2**(shift_w + 8) / 4096
            u = net.lr_e + 16 - net.shift_w[l] - t
            am = am0
            if u < 0:
                am = layer_am(am0, u)
                u = 0
            elif u > 30:
                u = 30
            n = sizes[l + 1]
            k(net.W[l], net.GW[l], self.MW[l], self.VW[l], sizes[l] * n, count, kg, c1, c2,
              am, u, net.c_m, net.c_s, net.mode, net.rng)
            k(net.B[l], net.GB[l], self.MB[l], self.VB[l], n, count, kg, c1, c2,
              am, u, net.c_m, net.c_s, net.mode, net.rng)


    # Its part of a .ebp header and of a checkpoint (edgebp/ebp.py, edgebp/ckpt.py): `o` is
    # the checkpoint's writer, `src` its reader (byte(), u32(), int32s()).
    def write_block(self, o):
        o.u16(self.c1)
        o.u16(self.c2)

    def state_len(self, params):
        return 8 * params + 12

    def write_state(self, o):
        for W, B in ((self.MW, self.MB), (self.VW, self.VB)):
            for l in range(len(W)):
                o.values(W[l], 4)
                o.values(B[l], 4)
        o.u32(self.t)
        o.u32(self.p1)
        o.u32(self.p2)

    def read_state(self, src):
        # the moments, t and beta**t, each checked as the kernel assumes them (ValueError)
        L = len(self.MW)
        for l in range(L):
            src.int32s(self.MW[l], M_MAX, "Adam first moment")
            src.int32s(self.MB[l], M_MAX, "Adam first moment")
        for l in range(2 * L):
            a = self.VB[l >> 1] if l & 1 else self.VW[l >> 1]
            # (E + BIAS) << 25 | F: the field at most V_FIELD_MAX, F at least 2**22 unless
            # the field is 0
            src.int32s(a, SMALL_MAX, "Adam second moment")
            for q in a:
                e = q >> 25
                if q < 0 or e > V_FIELD_MAX or (e and (q & 0x1FFFFFF) < 0x400000):
                    raise ValueError("Adam second moment 0x%08x is not a well-formed small "
                                     "float" % q)
        t = src.u32()
        p1 = src.u32()
        p2 = src.u32()
        if t < 0:
            raise ValueError("Adam step count beyond 2**30")
        if p1 < 0 or p1 > ONE28 or p2 < 0 or p2 > ONE28:
            raise ValueError("Adam beta**t (%d, %d) outside 0..2**28" % (p1, p2))
        # beta**t is 1 before the first update, below 1 after it (1 - beta2 >= 2**-15,
        # 1 - beta1 >= 2**-10)
        if (t == 0) != (p1 == ONE28) or (t == 0) != (p2 == ONE28):
            raise ValueError("Adam step count %d disagrees with beta**t (%d, %d)"
                             % (t, p1, p2))
        self.t = t
        self.p1 = p1
        self.p2 = p2


def parse(h, o, L):
    # the Adam block of a .ebp header at h[o:] (edgebp/ebp.py): (c1, c2), checked
    c1 = h[o] | (h[o + 1] << 8)
    c2 = h[o + 2] | (h[o + 3] << 8)
    check(c1, c2)
    return c1, c2


def check(c1, c2):
    if c1 < C1_MIN or c1 > 32768:
        raise ValueError("Adam beta1 outside 0..0.999 (1 - beta1 = %d/32768, not %d..32768)"
                         % (c1, C1_MIN))
    if c2 < 1 or c2 > 32768:
        raise ValueError("Adam beta2 outside 0..1 (1 - beta2 = %d/32768, not 1..32768)" % c2)


def attach(net, c1, c2):
    """Give `net` Adam (c1, c2: 1 - beta1 and 1 - beta2 in Q15) in place of SGD."""
    if net.VW[0] is not None:
        raise ValueError("Adam replaces momentum: a net with momentum buffers cannot take it")
    if net.opt is not None:
        raise ValueError("a net has one optimiser")
    net.opt = Adam(net, c1, c2)
    return net.opt
