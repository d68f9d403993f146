# Stochastic diagonal Levenberg-Marquardt in fixed point (LeCun, Bottou, Orr & Mueller,
# "Efficient BackProp", 1998): each weight steps by lr / (mu + h) times its mean gradient,
# h a running estimate of the weight's diagonal Gauss-Newton curvature d2E/dw2, computed by
# backpropagating second derivatives as delta is. The definition (kernels sq_t, curv_acc,
# sdlm) and the optimiser state of a net; imported only by nets that use it.
#
# Curvature, on the first sample of each gradient sum (its forward and delta pass done):
#   output layer  C = f'(z)**2 (mse: the Hessian of 1/2 (a - t)**2 in z, Gauss-Newton) or
#                 C = p (1 - p) (softmax and logistic cross-entropy: the diagonal of the
#                 Gauss-Newton matrix in z, which is also the Fisher's), in Q14
#   hidden layer  C[l-1] = f'(z)**2 o (W[l]**2)^T C[l], in Q(fc[l-1])
#   weights       h = C a**2 (biases: h = C, the bias's input being 1), averaged into HW,
#                 HB (int16, Q(fh[l])) with
#                 weight max(gamma, 1 / (n + 1)) in Q14 after n samples, so the first
#                 estimates are plain means
# f'**2 o e is the activation's backward kernel (act_bwd) applied twice, so every hidden
# activation has its curvature. C, h and the formats are non-negative; C and h saturate at
# 32767 (a saturated curvature underestimates, and mu still bounds the step).
# The step (sdlm): v = lr g in 2**-8 weight LSB as SGD forms it, then
#   v' = floor(|v| * 2**fh / (mu_q + h)) with the sign of v, mu_q = mu in Q(fh) (>= 1)
# by a two-part division whose pieces stay small ints, then SGD's weight decay, clamp and
# rounding. 2 bytes per parameter (h) and 2 per unit (C) beside SGD's W and G.
# Positional arguments and index loops only: nothing here allocates.

from edgebp.fixed import (
    MSE,
    SMALL_MAX,
    V_MAX,
    ceil_log2,
    const,
    mean_lr_shift,
    requant,
    rshift_round,
)

ONE_Q14 = const(16384)
_M30 = const(0x3FFFFFFF)


def sq_t(W, C, n_in, n_out, k, s, E):
    # E[i] = requant(sum_j (((|W[j,i]| C[j]) >> 15) |W[j,i]|) >> k, s): C sent back through
    # the squares of W, in two products each below 2**30 (0 <= C < 2**15), 2**k >= n_out
    for i in range(n_in):
        acc = 0
        p = i
        for j in range(n_out):
            w = W[p]
            if w < 0:
                w = -w
            acc += ((((w * C[j]) >> 15)) * w) >> k
            p += n_in
        E[i] = requant(acc, s)


def curv_acc(HW, HB, C, a, n_in, n_out, s_w, s_b, gam):
    # HW[j,i] += round((requant(((C[j] |a[i]|) >> 15) |a[i]|, s_w) - HW[j,i]) gam / 2**14),
    # HB[j] likewise with requant(C[j], s_b): one sample's curvature averaged in. Products
    # below 2**30; |difference| < 2**15 and gam <= 2**14.
    row = 0
    for j in range(n_out):
        c = C[j]
        d = (requant(c, s_b) - HB[j]) * gam
        HB[j] += (d >> 14) + ((d >> 13) & 1)
        for i in range(n_in):
            v = a[i]
            if v < 0:
                v = -v
            d = (requant(((c * v) >> 15) * v, s_w) - HW[row + i]) * gam
            HW[row + i] += (d >> 14) + ((d >> 13) & 1)
        row += n_in


def sdlm(W, G, H, n, m, u, mu_q, fh, c_m, c_s, mode, rng):
    # one step per parameter: SGD's v = clamp(((G >> 8) m) >> u) divided by (mu_q + H) / 2**fh,
    # then SGD's decay, clamp and rounding (edgebp.kernels.update); G = 0. fh 0..14 and
    # mu_q + H < 2**16, so the remainder times 2**fh stays below 2**30.
    s = rng[0]
    lim = V_MAX >> fh
    for p in range(n):
        g = G[p]
        G[p] = 0
        w = W[p]
        v = ((g >> 8) * m) >> u
        a = v if v >= 0 else -v
        den = mu_q + H[p]
        q = a // den
        if q > lim:
            a = V_MAX
        else:
            a = (q << fh) + (((a - q * den) << fh) // den)
            if a > V_MAX:
                a = V_MAX
        v = a if v >= 0 else -a
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


def _kernels(k):
    # the module with sq_t, curv_acc and sdlm for the net's kernel set, one of its own
    # (native: sdlm_native.mpy; viper: sdlm_viper.py, compiled on the board), loaded only for
    # nets that use SDLM
    n = k.__name__
    if n.endswith("native"):
        from edgebp import sdlm_native  # type: ignore[attr-defined]

        return sdlm_native
    if n.endswith("viper"):
        from edgebp import sdlm_viper

        return sdlm_viper
    import edgebp.sdlm as pure

    return pure


class Sdlm:
    # The state of SDLM for one net: the curvature C of every layer's units (this sample's),
    # the running curvature HW, HB of every parameter, formats, mu and the sample count of the
    # estimate. Made once at its final size; curvature() and update() allocate nothing.
    curv = True  # Net.backward calls curvature() on the first sample of each sum
    sgd_lr = True  # the learning rate is SGD's (set_lr's check applies)
    flag = 16  # its flag in a .ebp file (edgebp.ebp.FLAG_SDLM)
    ckpt_flag = 8  # and in a checkpoint (edgebp.ckpt.F_SDLM)

    def __init__(self, net, mu_m, mu_e, gamma, fc, fh):
        from edgebp.net import _tensors

        L = net.L
        check(L, mu_m, mu_e, gamma, fc, fh)
        sizes = net.sizes
        self.C = _tensors("h", sizes, L, 1, False)
        self.HW = _tensors("h", sizes, L, 1, True)
        self.HB = _tensors("h", sizes, L, 1, False)
        self.fc = fc
        self.fh = fh
        self.mu_m = mu_m
        self.mu_e = mu_e
        self.gamma = gamma
        self.n = 0
        self.mu = []
        self.kq = []
        self.sq = []
        self.s_w = []
        self.s_b = []
        for l in range(L):
            sa = net.shift_a[l]
            self.mu.append(mu_in(mu_m, mu_e, fh[l], l))
            self.s_w.append(fc[l] + 2 * sa - 15 - fh[l])
            self.s_b.append(fc[l] - fh[l])
            if l > 0:
                kq = ceil_log2(sizes[l + 1])
                self.kq.append(kq)
                self.sq.append(2 * net.shift_w[l] - 15 + fc[l] - kq - fc[l - 1])
            else:
                self.kq.append(0)
                self.sq.append(0)
        self.k = _kernels(net.k)

    def reset(self):
        for l in range(len(self.HW)):
            for a in (self.C[l], self.HW[l], self.HB[l]):
                for i in range(len(a)):
                    a[i] = 0
        self.n = 0

    def curvature(self, net):
        # the Gauss-Newton curvature of the last sample (its forward and delta pass done),
        # backpropagated to every unfrozen layer and averaged into HW, HB
        L = net.L
        k = net.k
        K = self.k
        sizes = net.sizes
        alpha = net.alpha
        n = sizes[L]
        a = net.A[L]
        c = self.C[L - 1]
        if net.loss_kind == MSE:
            z = net.Z[L - 1]
            act = net.acts[L - 1]
            for i in range(n):
                c[i] = ONE_Q14
            k.act_bwd(act, c, z, a, c, n, alpha)
            k.act_bwd(act, c, z, a, c, n, alpha)
        else:
            for i in range(n):
                p = a[i] * (ONE_Q14 - a[i])
                c[i] = (p >> 14) + ((p >> 13) & 1)
        for l in range(L - 1, net.frozen, -1):
            e = self.C[l - 1]
            K.sq_t(net.W[l], self.C[l], sizes[l], sizes[l + 1], self.kq[l], self.sq[l], e)
            act = net.acts[l - 1]
            z = net.Z[l - 1]
            a = net.A[l]
            k.act_bwd(act, e, z, a, e, sizes[l], alpha)
            k.act_bwd(act, e, z, a, e, sizes[l], alpha)
        m = self.n
        gam = ONE_Q14 // (m + 1)
        if gam < self.gamma:
            gam = self.gamma
        for l in range(net.frozen, L):
            K.curv_acc(self.HW[l], self.HB[l], self.C[l], net.A[l], sizes[l], sizes[l + 1],
                       self.s_w[l], self.s_b[l], gam)
        if m < SMALL_MAX:
            self.n = m + 1

    def update(self, net):
        # one step of every unfrozen layer from the pending sums of net.count samples
        count = net.count
        q = (net.lr_m << 22) // count
        t = mean_lr_shift(q)
        m = rshift_round(q, t)
        e = net.lr_e + 22 - t
        K = self.k
        kg = net.kg
        sizes = net.sizes
        for l in range(net.frozen, net.L):
            u = e + net.shift_d[l] + net.shift_a[l] - kg - net.shift_w[l] - 16
            n = sizes[l + 1]
            mu = self.mu[l]
            fh = self.fh[l]
            K.sdlm(net.W[l], net.GW[l], self.HW[l], sizes[l] * n, m, u, mu, fh, net.c_m,
                   net.c_s, net.mode, net.rng)
            K.sdlm(net.B[l], net.GB[l], self.HB[l], n, m, u, mu, fh, net.c_m, net.c_s,
                   net.mode, net.rng)


    # Its part of a .ebp header and of a checkpoint (edgebp/ebp.py, edgebp/ckpt.py): `o` is
    # the checkpoint's writer, `src` its reader (byte(), u32()). C is not saved: it is
    # scratch of one sample, formed and consumed inside curvature().
    def write_block(self, o):
        o.byte(self.mu_m)
        o.byte(self.mu_e)
        o.u16(self.gamma)
        for l in range(len(self.fc)):
            o.byte(self.fc[l])
            o.byte(self.fh[l])

    def state_len(self, params):
        return 2 * params + 4

    def write_state(self, o):
        for l in range(len(self.HW)):
            o.values(self.HW[l], 2)
            o.values(self.HB[l], 2)
        o.u32(self.n)

    def read_state(self, src):
        # the running curvatures (int16 within 0..32767) and their sample count: with no
        # sample in the estimate yet, every curvature is still 0 (ValueError otherwise)
        got = 0
        for l in range(2 * len(self.HW)):
            a = self.HB[l >> 1] if l & 1 else self.HW[l >> 1]
            for i in range(len(a)):
                v = src.byte() | (src.byte() << 8)
                if v > 32767:
                    raise ValueError("SDLM curvature %d outside 0..32767" % (v - 65536))
                a[i] = v
                got |= v
        n = src.u32()
        if n < 0 or (n == 0 and got):
            raise ValueError("SDLM sample count %d: beyond 2**30, or no sample for its "
                             "curvature" % n)
        self.n = n


def parse(h, o, L):
    # the SDLM block of a .ebp header at h[o:] (edgebp/ebp.py): (mu_m, mu_e, gamma, fc, fh),
    # checked before anything of the net is allocated
    fc = []
    fh = []
    for l in range(L):
        fc.append(h[o + 4 + 2 * l])
        fh.append(h[o + 5 + 2 * l])
    mu_m = h[o]
    mu_e = h[o + 1]
    gamma = h[o + 2] | (h[o + 3] << 8)
    check(L, mu_m, mu_e, gamma, fc, fh)
    for l in range(L):
        mu_in(mu_m, mu_e, fh[l], l)
    return mu_m, mu_e, gamma, fc, fh


def mu_in(mu_m, mu_e, fh, l):
    # mu = mu_m * 2**-mu_e in Q(fh), rounded half up: at least 1, below 2**15
    if mu_e >= fh:
        q = rshift_round(mu_m, mu_e - fh)
    elif fh - mu_e > 14:
        q = 1 << 15
    else:
        q = mu_m << (fh - mu_e)
    if q < 1 or q > 32767:
        raise ValueError("layer %d: SDLM mu %d/2**%d is %s for the curvature format Q%d"
                         % (l + 1, mu_m, mu_e, "too small" if q < 1 else "too large", fh))
    return q


def check(L, mu_m, mu_e, gamma, fc, fh):
    if mu_m < 1 or mu_m > 255 or mu_e < 0 or mu_e > 30:
        raise ValueError("SDLM mu mantissa %d or exponent %d outside 1..255, 0..30"
                         % (mu_m, mu_e))
    if gamma < 1 or gamma > ONE_Q14:
        raise ValueError("SDLM gamma %d outside 1..16384 (Q14)" % gamma)
    if len(fc) != L or len(fh) != L:
        raise ValueError("SDLM formats: one per layer")
    for l in range(L):
        if fc[l] < 0 or fc[l] > 24 or fh[l] < 0 or fh[l] > 14:
            raise ValueError("layer %d: SDLM curvature formats Q%d, Q%d outside Q0..Q24, "
                             "Q0..Q14" % (l + 1, fc[l], fh[l]))
    if fc[L - 1] != 14:
        raise ValueError("SDLM: the output layer's curvature is Q14")


def attach(net, mu_m, mu_e, gamma, fc, fh):
    """Give `net` SDLM (mu = mu_m * 2**-mu_e, gamma in Q14, curvature formats fc, fh per
    layer) in place of SGD."""
    if net.VW[0] is not None:
        raise ValueError("SDLM replaces momentum: a net with momentum buffers cannot take it")
    if net.opt is not None:
        raise ValueError("a net has one optimiser")
    net.opt = Sdlm(net, mu_m, mu_e, gamma, list(fc), list(fh))
    return net.opt
