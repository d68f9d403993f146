"""The integer twin: edgebp's fixed-point net in vectorised numpy, bit-identical to the core.

`TwinNet` holds the same state as `edgebp.net.Net` (W, B, GW, GB, VW, VB, Z, A, D, rng, count,
seen, correct, loss_sum, the settings, and its opt: with Adam MW, MB, VW, VB, t, p1, p2, with
SDLM C, HW, HB, n) and reproduces `Net` with the pure-Python kernels bit for bit, but fast
enough to train whole data sets on the host: `train_epoch` and `evaluate`. SDLM's curvature
comes from the first sample of each gradient sum, as in the core: the first row of a batch
that starts a sum.

Formats are the core's (see edgebp/net.py). All arrays here are int64, which holds every
intermediate of the core exactly (the core keeps them inside [-2**30, 2**30)); `>>` on int64
is an arithmetic shift, i.e. floor division by a power of two, as on Python ints. Each product
is shifted by its guard before it is summed, as in the kernels, so sums cannot use np.dot.

Parameters live in one flat vector in the order in which the core updates them (layer 0 W
row-major, layer 0 B, layer 1 W, ...); W[l] (n_out x n_in) and B[l] are views into it, and the
same holds for the gradient sums, momentum and Adam's moments. An update is then one vectorised
step over all parameters. Stochastic rounding needs the core's xorshift30 state for every
parameter: the generator is linear over GF(2), so the state k steps after s is the XOR of the
images of s's set bits under k steps, which are tabulated once per net (`Xorshift30Jumps`).

Samples that share weights (one mini-batch) go through forward and backward together: the
gradient sums are integer sums, so their order does not matter.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import numpy as np

from edgebp import adam as core_adam, dynfmt as core_dynfmt, luts, luts_act, sdlm as core_sdlm
from edgebp.fixed import (
    BCE,
    IDENTITY,
    LEAKY,
    MISH,
    MSE,
    NEAREST,
    Q_MAX,
    RELU,
    SIGMOID,
    SMALL_MAX,
    SOFTMAX,
    SOFTMAX_CE,
    SWISH,
    TANH,
    V_MAX,
    mean_lr_shift,
    rshift_round,
    seed30,
)
from edgebp.net import Net

I64 = np.int64
_M30 = 0x3FFFFFFF
_LOG2E_Q12 = 5909  # round(log2(e) * 4096), as in edgebp.kernels
# Largest (samples x outputs x inputs) product tensor formed at once by the batched paths.
_CHUNK_ELEMS = 1 << 20


# -- elementwise primitives (any shape, int64) --


def clip_v(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    # np.clip costs several microseconds of overhead per call on small arrays
    return np.minimum(np.maximum(x, lo), hi)


def rshift_round_v(x: np.ndarray, s: int) -> np.ndarray:
    """fixed.rshift_round: x * 2**-s rounded half up (s <= 0: x unchanged)."""
    if s <= 0:
        return x
    s = min(s, 63)  # beyond 63 the core's result is already 0 (x >> s is 0 or -1)
    return (x >> s) + ((x >> (s - 1)) & 1)


def requant_v(acc: np.ndarray, s: int) -> np.ndarray:
    """fixed.requant: scale by 2**-s, round half up, saturate to [-Q_MAX, Q_MAX]."""
    if s > 0:
        return clip_v(rshift_round_v(acc, s), -Q_MAX, Q_MAX)
    if s == 0:
        return clip_v(acc, -Q_MAX, Q_MAX)
    n = -s
    if n >= 16:
        # every non-zero acc saturates; zero stays zero
        return np.sign(acc) * I64(Q_MAX)
    lim = 32768 >> n
    return clip_v(clip_v(acc, -lim, lim) << n, -Q_MAX, Q_MAX)


def lut_v(table: tuple[int, ...], zq: np.ndarray) -> np.ndarray:
    """kernels._lut: 129-point table over z in [-8, 8], z in Q12 (any int16 z)."""
    T = np.asarray(table, I64)
    u = zq + 32768
    i = u >> 9
    lo = T[i]
    p = (T[i + 1] - lo) * (u & 511)
    return lo + (p >> 9) + ((p >> 8) & 1)


def exp_neg_v(x: np.ndarray) -> np.ndarray:
    """kernels.exp_neg: exp(-x) in Q14 for x >= 0 in Q12."""
    E = np.asarray(luts.EXP2, I64)
    y = rshift_round_v(x * _LOG2E_Q12, 12)
    ip = y >> 12
    fp = y & 4095
    i = fp >> 6
    lo = E[i]
    v = lo + rshift_round_v((E[i + 1] - lo) * (fp & 63), 6)
    ipc = clip_v(ip, 1, 15)
    shifted = (v >> ipc) + ((v >> (ipc - 1)) & 1)
    return np.where(ip == 0, v, np.where(ip >= 15, 0, shifted))


def nlog_q14_v(p: np.ndarray) -> np.ndarray:
    """net.nlog_q14: -ln(p / 16384) in Q12 for p in Q14 (p < 1 read as 1)."""
    p = np.maximum(p, 1)
    e = np.zeros_like(p)
    for b in range(1, 63):
        e += (p >> b) > 0
    m = np.where(e <= 12, p << np.maximum(12 - e, 0), p >> np.maximum(e - 12, 0))
    f = m - 4096
    i = f >> 6
    L2 = np.asarray(luts.LOG2, I64)
    lo = L2[i]
    l2 = lo + rshift_round_v((L2[i + 1] - lo) * (f & 63), 6)
    return rshift_round_v((((14 - e) << 12) - l2) * 2839, 12)


class _Tables:
    """Every elementwise function of an int16 argument, tabulated once over all of int16."""

    def __init__(self) -> None:
        q = np.arange(-32768, 32768, dtype=I64)
        self.sigmoid = lut_v(luts.SIGMOID, q)
        self.tanh = lut_v(luts.TANH, q)
        self.nlog = nlog_q14_v(q)
        # derivatives from the cached output a (Q14): a(1-a) and 1-a^2, rounded as in act_bwd
        self.dsigmoid = rshift_round_v(q * (16384 - q), 14)
        self.dtanh = 16384 - rshift_round_v(q * q, 14)
        # swish and mish: z * gate rounded to Q12, and f'(z) in Q14 (kernels.gated, gated_bwd)
        self.swish = rshift_round_v(q * self.sigmoid, 14)
        self.mish = rshift_round_v(q * lut_v(luts_act.MISH_G, q), 14)
        self.dswish = lut_v(luts_act.SWISH_D, q)
        self.dmish = lut_v(luts_act.MISH_D, q)
        # exp(-x) for x = max(z) - z in [0, 65535]
        self.exp_neg = exp_neg_v(np.arange(65536, dtype=I64))


_tables: _Tables | None = None


def tables() -> _Tables:
    global _tables
    if _tables is None:
        _tables = _Tables()
    return _tables


def softmax_v(z: np.ndarray, k: int = 0) -> np.ndarray:
    """kernels.softmax over the last axis: z in Q(12 - k), result in Q14."""
    e = tables().exp_neg[np.minimum((z.max(axis=-1, keepdims=True) - z) << k, 65535)]
    tot = e.sum(axis=-1, keepdims=True)
    return (e * 16384 + (tot >> 1)) // tot


def act_fwd_v(kind: int, z: np.ndarray, alpha: int) -> np.ndarray:
    """kernels.act_fwd: alpha is the leaky-ReLU slope, or a softmax's logit_k."""
    if kind == IDENTITY:
        return z
    if kind == RELU:
        return np.maximum(z, 0)
    if kind == LEAKY:
        return np.where(z > 0, z, rshift_round_v(z * alpha, 12))
    if kind == SIGMOID:
        return tables().sigmoid[z + 32768]
    if kind == TANH:
        return tables().tanh[z + 32768]
    if kind == SWISH:
        return tables().swish[z + 32768]
    if kind == MISH:
        return tables().mish[z + 32768]
    return softmax_v(z, alpha)


def act_bwd_v(kind: int, e: np.ndarray, z: np.ndarray, a: np.ndarray, alpha: int) -> np.ndarray:
    if kind == RELU:
        return np.where(z > 0, e, 0)
    if kind == LEAKY:
        return np.where(z > 0, e, rshift_round_v(e * alpha, 12))
    if kind == SIGMOID:
        return rshift_round_v(e * tables().dsigmoid[a + 32768], 14)
    if kind == TANH:
        return rshift_round_v(e * tables().dtanh[a + 32768], 14)
    if kind == SWISH:
        return clip_v(rshift_round_v(e * tables().dswish[z + 32768], 14), -Q_MAX, Q_MAX)
    if kind == MISH:
        return clip_v(rshift_round_v(e * tables().dmish[z + 32768], 14), -Q_MAX, Q_MAX)
    return e  # identity, and softmax (whose delta the loss forms directly)


def xorshift30_v(s: np.ndarray) -> np.ndarray:
    s = s ^ ((s & (_M30 >> 9)) << 9)
    s = s ^ (s >> 11)
    return s ^ ((s & (_M30 >> 12)) << 12)


class Xorshift30Jumps:
    """The states s_1..s_n that xorshift30 visits from s_0, without a Python loop over n.

    The step is a linear map T over GF(2)^30, so s_k = T^k s_0 is the XOR of T^k e_b over the
    set bits b of s_0. The images are tabulated for k = 1..span and combined five bits at a
    time: table[c, v, k-1] = T^k (v << 5c), so a run is six row lookups and five XORs. Runs
    longer than span restart from s_span.
    """

    def __init__(self, span: int) -> None:
        self.span = span
        basis = np.empty((30, span), I64)  # basis[b, k-1] = T^k e_b
        cur = np.left_shift(1, np.arange(30, dtype=I64))
        for k in range(span):
            cur = xorshift30_v(cur)
            basis[:, k] = cur
        self.table = np.zeros((6, 32, span), I64)
        for c in range(6):
            for v in range(1, 32):
                low = (v & -v).bit_length() - 1
                self.table[c, v] = self.table[c, v & (v - 1)] ^ basis[5 * c + low]

    def states(self, s0: int, n: int) -> np.ndarray:
        out = np.empty(n, I64)
        done = 0
        s = s0
        tab = self.table
        while done < n:
            k = min(self.span, n - done)
            run = out[done : done + k]
            np.bitwise_xor(tab[0, s & 31, :k], tab[1, (s >> 5) & 31, :k], out=run)
            for c in range(2, 6):
                run ^= tab[c, (s >> (5 * c)) & 31, :k]
            s = int(run[-1])
            done += k
        return out



def isqrt_v(n: np.ndarray) -> np.ndarray:
    """adam.isqrt: floor(sqrt(n)) for 0 <= n < 2**30. The float64 root of an integer below
    2**52 is within one of the integer root; the two corrections make it exact."""
    r = np.sqrt(n.astype(np.float64)).astype(I64)
    r -= r * r > n
    r += (r + 1) * (r + 1) <= n
    return r


def bit_length_v(a: np.ndarray) -> np.ndarray:
    """int.bit_length for 0 <= a < 2**52 (frexp is exact there)."""
    return np.frexp(a.astype(np.float64))[1].astype(I64)


def mul_q15_v(a: np.ndarray, c) -> np.ndarray:
    """adam.mul_q15: floor(a * c / 2**15), split at bit 15 as in the core."""
    return (a >> 15) * c + (((a & 32767) * c) >> 15)


class TwinAdam:
    """edgebp.adam.Adam of a TwinNet: the moments as flat int64 vectors in the parameters'
    order, with MW, MB, VW, VB views per layer (as the net's W, B), t and beta**t in Q28."""

    def __init__(self, net: TwinNet, c1: int, c2: int) -> None:
        self.c1, self.c2 = c1, c2
        self.m = np.zeros(net.n_params, I64)
        self.v = np.zeros(net.n_params, I64)  # (E + BIAS) << 25 | F
        self.MW, self.MB = net._views(self.m)
        self.VW, self.VB = net._views(self.v)
        self.t = 0
        self.p1 = core_adam.ONE28
        self.p2 = core_adam.ONE28

    def reset(self) -> None:
        self.m[...] = 0
        self.v[...] = 0
        self.t = 0
        self.p1 = core_adam.ONE28
        self.p2 = core_adam.ONE28

    def scalars(self, net: TwinNet) -> list[tuple[int, int]]:
        """Advance t and beta**t as Adam.update does; the (am, u) of every layer."""
        if self.t < SMALL_MAX:
            self.t += 1
        self.p1 = core_adam.mul_q15(self.p1, 32768 - self.c1)
        self.p2 = core_adam.mul_q15(self.p2, 32768 - self.c2)
        corr = core_adam.correction(self.p1, self.p2)
        t = core_adam.scale(net.lr_m, corr)
        am0 = (net.lr_m * corr) >> t
        out = []
        for l in range(net.L):
            u = net.lr_e + 16 - net.shift_w[l] - t
            am = am0
            if u < 0:
                am = core_adam.layer_am(am0, u)
                u = 0
            elif u > 30:
                u = 30
            out.append((am, u))
        return out

    def step(self, net: TwinNet, p0: int) -> np.ndarray:
        """The kernel adam() over parameters p0.. at once: clears their sums, updates the
        moments and returns the step v (2**-8 weight LSB, clamped to V_MAX, before the
        decay and the rounding)."""
        count, kg = net.count, net.kg
        per_layer = self.scalars(net)[net.frozen:]
        lens = [c - a for (a, _, c) in net._spans[net.frozen:]]
        am = np.repeat(np.array([a for a, _ in per_layer], I64), lens)
        u = np.repeat(np.array([b for _, b in per_layer], I64), lens)
        g = net.grad[p0:]
        half = count >> 1
        # round(G / count), half away from zero, by floor division as the core
        h = np.where(g >= 0, (g + half) // count, -((half - g) // count))
        g[...] = 0
        x = h << (kg - 1) if kg else h >> 1
        M = self.m[p0:]
        m = M + mul_q15_v(x - M, self.c1)
        M[...] = m
        # x*x as a*a * 4**k, a the top 12 bits of |x| (2**11 <= a < 2**12; x = 0: k = -BIAS)
        B = core_adam.BIAS
        a = np.abs(x)
        nz = a > 0
        k = np.where(nz, bit_length_v(a) - 12, -B)
        a = np.where(k >= 0, a >> np.maximum(k, 0), a << np.maximum(-k, 0))
        xf = np.where(nz, a * a, 0)
        V = self.v[p0:]
        e = (V >> 25) - B
        f = V & 0x1FFFFFF
        # the lower of the two exponents' mantissa shifted down, to 0 past 24 bits
        f = np.where(k > e, np.where(k - e < 13, f >> np.clip(2 * (k - e), 0, 62), 0), f)
        xf = np.where(e > k, np.where(e - k < 13, xf >> np.clip(2 * (e - k), 0, 62), 0), xf)
        e = np.maximum(e, k)
        f += mul_q15_v(xf - f, self.c2)
        e = np.where(f == 0, -B, e)
        # the normalisation loop: j shifts by 2 bring f to 2**22 or more (bit length 23),
        # at most e + BIAS of them
        j = np.where(f == 0, 0,
                     np.minimum(e + B, np.maximum((24 - bit_length_v(f)) >> 1, 0)))
        f <<= 2 * j
        e -= j
        V[...] = ((e + B) << 25) | f
        r = np.maximum(isqrt_v(f), 1)
        mm = np.abs(m)
        pe = np.maximum(e, 0)
        ne = np.maximum(-e, 0)
        mp = mm >> pe
        rho_pos = np.where(mp >= r << 3, core_adam.RHO_MAX, (mp << 12) // r)
        lim = ((r << 3) + (1 << ne) - 1) >> ne
        rho_neg = np.where(mm >= lim, core_adam.RHO_MAX, ((np.minimum(mm, lim) << ne) << 12) // r)
        rho = np.where(e >= 0, rho_pos, rho_neg)
        v = (rho * am) >> u
        v = np.where(m < 0, -v, v)
        return clip_v(v, -V_MAX, V_MAX)


class TwinSdlm:
    """edgebp.sdlm.Sdlm of a TwinNet: C per layer (this sample's unit curvature), the running
    curvature as one flat int64 vector in the parameters' order with HW, HB views per layer
    (as the net's W, B), the formats, mu per layer and the sample count n."""

    def __init__(self, net: TwinNet, mu_m: int, mu_e: int, gamma: int, fc, fh) -> None:
        spec = net._spec.opt  # the core's state, attached by the caller: its derived shifts
        assert spec is not None
        self.mu_m, self.mu_e, self.gamma = mu_m, mu_e, gamma
        self.fc, self.fh = list(fc), list(fh)
        self.mu, self.kq, self.sq = list(spec.mu), list(spec.kq), list(spec.sq)
        self.s_w, self.s_b = list(spec.s_w), list(spec.s_b)
        self.C = [np.zeros(n, I64) for n in net.sizes[1:]]
        self.h = np.zeros(net.n_params, I64)
        self.HW, self.HB = net._views(self.h)
        self.n = 0
        lens = [c - a for (a, _, c) in net._spans]
        self._mu_p = np.repeat(np.array(self.mu, I64), lens)
        self._fh_p = np.repeat(np.array(self.fh, I64), lens)

    def reset(self) -> None:
        for c in self.C:
            c[...] = 0
        self.h[...] = 0
        self.n = 0

    def curvature(self, net: TwinNet, Z: list[np.ndarray], A: list[np.ndarray]) -> None:
        """Sdlm.curvature of one sample, its Z[l], A[l] as the core holds them then: the
        output curvature, sq_t and act_bwd twice down to the frozen boundary, curv_acc."""
        L, alpha = net.L, net.alpha
        a = A[L]
        if net.loss_kind == MSE:
            c = np.full(net.sizes[L], core_sdlm.ONE_Q14, I64)
            for _ in range(2):
                c = act_bwd_v(net.acts[L - 1], c, Z[L - 1], a, alpha)
        else:
            c = rshift_round_v(a * (core_sdlm.ONE_Q14 - a), 14)
        self.C[L - 1][...] = c
        for l in range(L - 1, net.frozen, -1):
            # sq_t: each product of |W| C shifted by 15, times |W|, shifted by the guard
            w = np.abs(net.W[l])
            p = (((w * self.C[l][:, None]) >> 15) * w) >> self.kq[l]
            e = requant_v(np.add.reduce(p, axis=0), self.sq[l])
            for _ in range(2):
                e = act_bwd_v(net.acts[l - 1], e, Z[l - 1], A[l], alpha)
            self.C[l - 1][...] = e
        m = self.n
        gam = max(core_sdlm.ONE_Q14 // (m + 1), self.gamma)
        for l in range(net.frozen, L):
            c = self.C[l]
            v = np.abs(A[l])
            HB = self.HB[l]
            HB += rshift_round_v((requant_v(c, self.s_b[l]) - HB) * gam, 14)
            HW = self.HW[l]
            x = requant_v(((c[:, None] * v) >> 15) * v, self.s_w[l])
            HW += rshift_round_v((x - HW) * gam, 14)
        if m < SMALL_MAX:
            self.n = m + 1

    def step(self, net: TwinNet, p0: int) -> np.ndarray:
        """The kernel sdlm() over parameters p0.. at once: clears their sums and returns the
        step v (2**-8 weight LSB, clamped to V_MAX, before the decay and the rounding)."""
        count = net.count
        q = (net.lr_m << 22) // count
        t = mean_lr_shift(q)
        m = rshift_round(q, t)
        u = np.minimum((net.lr_e + 22 - t) + net._u_layer[p0:], 63)
        g = net.grad[p0:]
        v = ((g >> 8) * m) >> u
        g[...] = 0
        # floor(|v| 2**fh / (mu_q + h)), exactly what the core's two-part division gives
        a = np.abs(v)
        den = self._mu_p[p0:] + self.h[p0:]
        a = np.minimum((a << self._fh_p[p0:]) // den, V_MAX)
        return np.where(v >= 0, a, -a)


class Evaluation(NamedTuple):
    loss: np.ndarray  # per-sample loss, Q12 (as backward() returns it)
    correct: np.ndarray  # per-sample bool, the core's rule for `correct`
    output: np.ndarray  # (N, n_out) output activations


class TwinNet:
    """`edgebp.net.Net` in numpy: same constructor, settings, state and results."""

    def __init__(self, sizes, acts, shift_a, shift_w, shift_d, loss, batch_max=1,
                 momentum=False, alpha_q=41, logit_k=0):
        # The core validates the formats and derives the guards and shifts, so the twin
        # accepts exactly the nets the core accepts; it also validates the settings.
        spec = Net(list(sizes), list(acts), list(shift_a), list(shift_w), list(shift_d), loss,
                   batch_max, momentum, alpha_q, None, logit_k)
        self._spec = spec
        self.L = L = spec.L
        self.sizes = list(sizes)
        self.acts = list(acts)
        self.loss_kind = loss
        self.shift_a = list(shift_a)
        self.shift_w = list(shift_w)
        self.shift_d = list(shift_d)
        self.alpha = alpha_q
        self.logit_k = logit_k
        self.batch_max = batch_max
        self.kg = spec.kg
        self.shift_z = list(spec.shift_z)
        self.k_f = list(spec.k_f)
        self.s_f = list(spec.s_f)
        self.k_b = list(spec.k_b)
        self.s_b = list(spec.s_b)
        self.one = list(spec.one)

        spans = []
        start = 0
        for l in range(L):
            nw = self.sizes[l] * self.sizes[l + 1]
            spans.append((start, start + nw, start + nw + self.sizes[l + 1]))
            start += nw + self.sizes[l + 1]
        self.n_params = P = start
        self._spans = spans
        self.theta = np.zeros(P, I64)
        self.grad = np.zeros(P, I64)
        self.vel = np.zeros(P, I64) if momentum else None
        self.W, self.B = self._views(self.theta)
        self.GW, self.GB = self._views(self.grad)
        self.VW: list[np.ndarray | None] = [None] * L
        self.VB: list[np.ndarray | None] = [None] * L
        if self.vel is not None:
            self.VW[:], self.VB[:] = self._views(self.vel)
        # per-parameter part of the update's shift u that depends on the layer's formats
        self._u_layer = np.empty(P, I64)
        for l, (a, _, c) in enumerate(spans):
            self._u_layer[a:c] = (self.shift_d[l] + self.shift_a[l] - self.kg
                                  - self.shift_w[l] - 16)
        self._jumps: Xorshift30Jumps | None = None
        self._step_key: tuple[int, int, int] | None = None  # (lr_m, lr_e, count) of _step
        self._step: tuple[int, np.ndarray] = (0, self._u_layer)

        self.Z = [np.zeros(n, I64) for n in self.sizes[1:]]
        self.A = [np.zeros(n, I64) for n in self.sizes]
        self.D = [np.zeros(n, I64) for n in self.sizes[1:]]
        self.rng = np.array([seed30(1)], I64)
        self.count = 0
        self.grad_count = 0
        self.batch = 1
        self.lr_m = 0
        self.lr_e = 0
        self.mu = 0
        self.c_m = 0
        self.c_s = 0
        self.mode = NEAREST
        self.frozen = 0
        # Adam or SDLM in place of SGD (attach_adam, attach_sdlm), or None
        self.opt: TwinAdam | TwinSdlm | None = None
        # the windows (lo, hi) of weight formats that follow the weights, or None
        self.dyn: tuple[list[int], list[int]] | None = None
        self.moves = 0
        self.reset_stats()

    def attach_adam(self, c1: int, c2: int) -> TwinAdam:
        """edgebp.adam.attach: Adam (c1, c2 = 1 - beta1, 1 - beta2 in Q15) in place of SGD."""
        core_adam.attach(self._spec, c1, c2)  # the core's checks; its set_lr then takes any u
        self.opt = TwinAdam(self, c1, c2)
        return self.opt

    def attach_sdlm(self, mu_m: int, mu_e: int, gamma: int, fc, fh) -> TwinSdlm:
        """edgebp.sdlm.attach: SDLM (mu = mu_m * 2**-mu_e, gamma in Q14, curvature formats
        fc, fh per layer) in place of SGD."""
        core_sdlm.attach(self._spec, mu_m, mu_e, gamma, fc, fh)  # the core's checks
        self.opt = TwinSdlm(self, mu_m, mu_e, gamma, fc, fh)
        return self.opt

    def attach_dynfmt(self, lo, hi) -> None:
        """edgebp.dynfmt.attach: weight formats that follow the weights, layer l's within
        lo[l]..hi[l]."""
        core_dynfmt.attach(self._spec, lo, hi)  # the core's checks
        self.dyn = (list(lo), list(hi))

    def _follow(self) -> None:
        # edgebp.dynfmt.Formats.follow
        assert self.dyn is not None
        lo, hi = self.dyn
        for l in range(self.frozen, self.L):
            a, _, c = self._spans[l]
            th = self.theta[a:c]
            m = int(np.abs(th).max())
            sw = self.shift_w[l]
            vel = None if self.vel is None else self.vel[a:c]
            if m >= core_dynfmt.HIGH and sw > lo[l] and core_dynfmt.allowed(self, l, -1):
                d = -1
                th[...] = (th + 1) >> 1
                if vel is not None:
                    vel[...] = (vel + 1) >> 1
            elif m < core_dynfmt.LOW and sw < hi[l] and core_dynfmt.allowed(self, l, 1):
                d = 1
                th[...] = np.clip(th << 1, -Q_MAX, Q_MAX)
                if vel is not None:
                    vel[...] = np.clip(vel << 1, -V_MAX, V_MAX)
            else:
                continue
            self.shift_w[l] = sw + d
            self._u_layer[a:c] -= d
            m = l
            while core_dynfmt.free(self.acts, m):
                self.shift_z[m] += d
                m += 1
                self.shift_a[m] += d
                self.one[m] = 1 << self.shift_a[m]
                a2, _, c2 = self._spans[m]
                self._u_layer[a2:c2] += d
            self.s_f[m] += d
            for j in range(l):
                self.shift_d[j] += d
                a2, _, c2 = self._spans[j]
                self._u_layer[a2:c2] += d
            self._step_key = None
            self.moves += 1

    def _views(self, flat: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        Ws = [flat[a:b].reshape(self.sizes[l + 1], self.sizes[l])
              for l, (a, b, _) in enumerate(self._spans)]
        Bs = [flat[b:c] for (_, b, c) in self._spans]
        return Ws, Bs

    # -- construction from the host's descriptions --

    @classmethod
    def from_qnet(cls, qnet, hyper=None) -> TwinNet:
        """The twin of `qnet.build(hyper)`."""
        net = cls(qnet.sizes, qnet.acts, qnet.shift_a, qnet.shift_w, qnet.shift_d, qnet.loss,
                  qnet.batch_max, qnet.momentum, qnet.alpha_q, qnet.logit_k)
        for l in range(net.L):
            net.W[l][...] = np.asarray(qnet.W[l], np.int16).reshape(net.W[l].shape)
            net.B[l][...] = np.asarray(qnet.B[l], np.int16)
        if qnet.adam is not None:
            net.attach_adam(*qnet.adam)
        if qnet.sdlm is not None:
            net.attach_sdlm(*qnet.sdlm)
        if qnet.dyn is not None:
            net.attach_dynfmt(*qnet.dyn)
        if hyper is not None:
            h = hyper.fixed()
            net.set_lr(h["lr_m"], h["lr_e"])
            net.set_batch(h["batch"])
            net.set_momentum(h["mu"])
            net.set_decay(h["c_m"], h["c_e"])
            net.set_rounding(h["mode"], h["seed"])
        return net

    @classmethod
    def from_net(cls, core: Net) -> TwinNet:
        """A twin in the exact state of a core net: weights, sums, momentum, rng, settings."""
        net = cls(core.sizes, core.acts, core.shift_a, core.shift_w, core.shift_d,
                  core.loss_kind, core.batch_max, core.VW[0] is not None, core.alpha,
                  core.logit_k)

        def flat(Ws, Bs) -> np.ndarray:
            return np.concatenate([np.asarray(a, I64) for pair in zip(Ws, Bs, strict=True)
                                   for a in pair])

        net.theta[...] = flat(core.W, core.B)
        net.grad[...] = flat(core.GW, core.GB)
        if net.vel is not None:
            net.vel[...] = flat(core.VW, core.VB)
        o = core.opt
        if o is not None and hasattr(o, "MW"):
            tw = net.attach_adam(o.c1, o.c2)
            tw.m[...] = flat(o.MW, o.MB)
            tw.v[...] = flat(o.VW, o.VB)
            tw.t, tw.p1, tw.p2 = o.t, o.p1, o.p2
        elif o is not None:
            ts = net.attach_sdlm(o.mu_m, o.mu_e, o.gamma, o.fc, o.fh)
            ts.h[...] = flat(o.HW, o.HB)
            for l in range(net.L):
                ts.C[l][...] = o.C[l]
            ts.n = o.n
        if core.dyn is not None:
            net.attach_dynfmt(core.dyn.lo, core.dyn.hi)
        for l in range(net.L):
            net.Z[l][...] = core.Z[l]
            net.D[l][...] = core.D[l]
        for l in range(net.L + 1):
            net.A[l][...] = core.A[l]
        net.lr_m, net.lr_e = core.lr_m, core.lr_e
        net.batch, net.mu, net.c_m, net.c_s, net.mode = (core.batch, core.mu, core.c_m,
                                                         core.c_s, core.mode)
        net.rng[0] = core.rng[0]
        net.count, net.grad_count = core.count, core.grad_count
        net.seen, net.correct, net.loss_sum = core.seen, core.correct, core.loss_sum
        net.frozen = core.frozen
        return net

    def to_qnet(self, qnet):
        """A copy of `qnet` carrying this net's current weights (int16) and formats."""
        return replace(qnet, W=[w.astype(np.int16) for w in self.W],
                       B=[b.astype(np.int16) for b in self.B], shift_w=list(self.shift_w),
                       shift_a=list(self.shift_a), shift_d=list(self.shift_d))

    # -- settings: validated by the core's own setters --

    def set_lr(self, m, e):
        # checked at the formats now (they move where they follow the weights)
        spec = self._spec
        spec.shift_w[:], spec.shift_a[:], spec.shift_d[:] = (self.shift_w, self.shift_a,
                                                              self.shift_d)
        spec.set_lr(m, e)
        self.lr_m, self.lr_e = m, e

    def set_batch(self, n):
        self._spec.set_batch(n)
        self.batch = n

    def set_momentum(self, mu_q8):
        self._spec.set_momentum(mu_q8)
        self.mu = mu_q8

    def set_decay(self, c_m, c_e):
        self._spec.set_decay(c_m, c_e)
        self.c_m, self.c_s = self._spec.c_m, self._spec.c_s

    def set_rounding(self, mode, seed=1):
        self.mode = mode
        self.rng[0] = seed30(seed)

    def reset_stats(self):
        self.seen = 0
        self.correct = 0
        self.loss_sum = 0

    def freeze(self, n):
        """Net.freeze: layers 0..n-1 learn nothing (their pending sums are dropped)."""
        self._spec.freeze(n)
        for l in range(self.frozen, n):
            self.GW[l][...] = 0
            self.GB[l][...] = 0
        self.frozen = n

    # -- batched arithmetic: rows are samples --

    def _forward_rows(self, X: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Z[l] and A[l] for a batch of inputs X (N, n_in), each (N, n)."""
        Zs: list[np.ndarray] = []
        As = [np.asarray(X, I64)]
        for l in range(self.L):
            W = self.W[l]
            k = self.k_f[l]
            x = As[l]
            bias = (self.B[l] * self.one[l]) >> k
            step = max(1, _CHUNK_ELEMS // W.size)
            if len(x) <= step:
                acc = np.add.reduce((x[:, None, :] * W) >> k, axis=2)
            else:
                acc = np.concatenate([((x[i : i + step, None, :] * W) >> k).sum(axis=2)
                                      for i in range(0, len(x), step)])
            z = requant_v(acc + bias, self.s_f[l])
            Zs.append(z)
            act = self.acts[l]
            As.append(act_fwd_v(act, z, self.logit_k if act == SOFTMAX else self.alpha))
        return Zs, As

    def _targets(self, T) -> np.ndarray:
        """Target rows as the core reads them: the class index, or one value per output."""
        T = np.asarray(T, I64)
        T = T.reshape(len(T), -1)[:, : 1 if self.loss_kind == SOFTMAX_CE else self.sizes[-1]]
        if self.loss_kind == SOFTMAX_CE and T.size:
            if T.min() < 0 or T.max() >= self.sizes[-1]:
                raise IndexError(f"class index outside 0..{self.sizes[-1] - 1}")
        return T

    def _loss_rows(self, Zs, As, T) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The output delta, per-sample loss (Q12) and per-sample correct flag."""
        a = As[-1]
        N, n = a.shape
        tab = tables()
        kind = self.loss_kind
        if kind == SOFTMAX_CE:
            c = T[:, 0]
            rows = np.arange(N)
            d = a.copy()
            d[rows, c] -= 16384
            # the core's clip: no delta pushes a z saturated at the edge of Q12 further out
            z = Zs[-1]
            d[((d < 0) & (z >= Q_MAX)) | ((d > 0) & (z <= -Q_MAX))] = 0
            loss = tab.nlog[a[rows, c] + 32768]
            good = a.argmax(axis=1) == c
        elif kind == BCE:
            t = clip_v(T, 0, 16384)
            d = a - t
            q = t * tab.nlog[a + 32768] + (16384 - t) * tab.nlog[16384 - a + 32768]
            loss = rshift_round_v(q, 14).sum(axis=1)
            good = ((a >= 8192) == (t >= 8192)).all(axis=1)
        else:
            sa = self.shift_a[self.L]
            e = clip_v(a - T, -Q_MAX, Q_MAX)
            # every term is >= 0, so the core's saturating running sum is min(sum, SMALL_MAX)
            loss = np.minimum(rshift_round_v(e * e, 2 * sa - 11).sum(axis=1), SMALL_MAX)
            if n == 1:
                half = 1 << (sa - 1)
                good = (a[:, 0] >= half) == (T[:, 0] >= half)
            else:
                good = a.argmax(axis=1) == T.argmax(axis=1)
            d = act_bwd_v(self.acts[-1], e, Zs[-1], a, self.alpha)
        return d, loss, good

    def _backward_rows(self, Zs, As, d_out) -> list[np.ndarray | None]:
        # the deltas of the layers from `frozen` on (None below: a frozen layer has none)
        Ds: list[np.ndarray | None] = [None] * (self.L - 1) + [d_out]
        for l in range(self.L - 1, self.frozen, -1):
            d = Ds[l]
            assert d is not None
            acc = np.add.reduce((d[:, :, None] * self.W[l]) >> self.k_b[l], axis=1)
            e = requant_v(acc, self.s_b[l])
            Ds[l - 1] = act_bwd_v(self.acts[l - 1], e, Zs[l - 1], As[l], self.alpha)
        return Ds

    def _accumulate(self, As, Ds) -> None:
        kg = self.kg
        for l in range(self.frozen, self.L):
            d, x = Ds[l], As[l]
            if len(d) == 1:
                self.GW[l] += (d[0][:, None] * x[0]) >> kg
            else:
                self.GW[l] += np.add.reduce((d[:, :, None] * x[:, None, :]) >> kg, axis=0)
            self.GB[l] += np.add.reduce((d * self.one[l]) >> kg, axis=0)

    def _keep(self, Zs, As) -> None:
        # the core's buffers hold the last sample's values
        for l in range(self.L):
            self.Z[l][...] = Zs[l][-1]
        for l in range(self.L + 1):
            self.A[l][...] = As[l][-1]

    def _backward_stats(self, Zs, As, T) -> np.ndarray:
        """backward() for rows that share the current weights: deltas, gradient sums, stats."""
        d, loss, good = self._loss_rows(Zs, As, T)
        Ds = self._backward_rows(Zs, As, d)
        self._accumulate(As, Ds)
        if isinstance(self.opt, TwinSdlm) and self.count == 0:
            # SDLM: the curvature of the first sample of the sum, the first row
            self.opt.curvature(self, [z[0] for z in Zs], [a[0] for a in As])
        for l in range(self.frozen, self.L):
            d_l = Ds[l]
            assert d_l is not None
            self.D[l][...] = d_l[-1]
        N = len(loss)
        self.count += N
        self.grad_count = self.count
        # the core's counters stop at SMALL_MAX samples
        k = max(0, min(N, SMALL_MAX - self.seen))
        self.seen += k
        self.correct += int(good[:k].sum())
        # losses are >= 0: the core's saturating running sum is a saturated total
        self.loss_sum = min(self.loss_sum + int(loss.sum()), SMALL_MAX)
        return loss

    def _learn_rows(self, X, T) -> np.ndarray:
        if self.count >= self.batch_max:
            self.update()  # the core's backward applies a full sum before adding to it
        Zs, As = self._forward_rows(X)
        self._keep(Zs, As)
        return self._backward_stats(Zs, As, T)

    # -- the core's API (like the core, only the first n_in inputs and n_t targets are read) --

    def forward(self, x) -> None:
        Zs, As = self._forward_rows(np.asarray(x, I64)[None, : self.sizes[0]])
        self._keep(Zs, As)

    def backward(self, t) -> int:
        if self.count >= self.batch_max:
            self.update()
        Zs = [z[None] for z in self.Z]
        As = [a[None] for a in self.A]
        return int(self._backward_stats(Zs, As, self._targets([t]))[0])

    def learn(self, x, t) -> int:
        loss = self._learn_rows(np.asarray(x, I64)[None, : self.sizes[0]], self._targets([t]))
        if self.count >= self.batch:
            self.update()
        return int(loss[0])

    def update(self) -> None:
        count = self.count
        if count == 0:
            return
        # the parameters from the first layer not frozen on (the core updates them in this
        # order, so the rounding generator runs over them alone)
        p0 = self._spans[self.frozen][0]
        if self.opt is not None:
            self._apply(p0, self.opt.step(self, p0))
            return
        key = (self.lr_m, self.lr_e, count)
        if key != self._step_key:
            q = (self.lr_m << 22) // count
            t = mean_lr_shift(q)
            u = (self.lr_e + 22 - t) + self._u_layer
            if int(u.min()) < 0:
                raise ValueError("negative shift count")  # what the core's `>> u` raises
            self._step = (rshift_round(q, t), np.minimum(u, 63))
            self._step_key = key
        m, u = self._step
        u = u if np.ndim(u) == 0 else u[p0:]
        g = self.grad[p0:]
        v = clip_v(((g >> 8) * m) >> u, -V_MAX, V_MAX)
        g[...] = 0
        self._apply(p0, v)
        if self.dyn is not None:
            self._follow()

    def _apply(self, p0: int, v: np.ndarray) -> None:
        # the update's common tail (kernels.update, adam.adam): the step v of parameters p0..
        # in 2**-8 weight LSB, plus decay and momentum, clamped, rounded and applied
        n = self.n_params - p0
        vel = None if self.vel is None else self.vel[p0:]
        w = self.theta[p0:]
        if self.c_m:
            v += rshift_round_v(w * self.c_m, self.c_s)
        if self.mu:
            assert vel is not None
            v += rshift_round_v(vel * self.mu, 8)
        if self.c_m or self.mu:
            np.maximum(np.minimum(v, V_MAX, out=v), -V_MAX, out=v)
        if self.mu:
            assert vel is not None
            vel[...] = v
        if self.mode:
            if self._jumps is None:
                self._jumps = Xorshift30Jumps(min(self.n_params, 1 << 13))
            s = self._jumps.states(int(self.rng[0]), n)
            self.rng[0] = s[-1]
            v += s >> 22
        else:
            v += 128
        w -= v >> 8
        np.maximum(np.minimum(w, Q_MAX, out=w), -Q_MAX, out=w)
        self.count = 0

    def predict(self, x, out=None) -> int:
        self.forward(x)
        a = self.A[self.L]
        if out is not None:
            out[:] = a
        return int(a.argmax())

    # -- whole data sets --

    def train_epoch(self, Xq, Tq, order=None) -> np.ndarray:
        """`learn` on every sample in `order` (default: as given), like a loop of learn():
        updates after each `batch` samples; a partial last batch stays pending for update().
        Returns the per-sample losses (Q12) in training order."""
        X, T = self._dataset(Xq, Tq)
        idx = np.arange(len(X)) if order is None else np.asarray(order)
        losses = np.empty(len(idx), I64)
        i = 0
        while i < len(idx):
            n = min(max(self.batch - self.count, 1), len(idx) - i)
            rows = idx[i : i + n]
            losses[i : i + n] = self._learn_rows(X[rows], T[rows])
            if self.count >= self.batch:
                self.update()
            i += n
        return losses

    def _dataset(self, Xq, Tq) -> tuple[np.ndarray, np.ndarray]:
        X, T = _int16_rows(Xq, self.sizes[0]), self._targets(Tq)
        if len(X) != len(T):
            raise ValueError(f"{len(X)} inputs but {len(T)} targets")
        return X, T

    def outputs(self, Xq) -> np.ndarray:
        """Output activations (N, n_out) for every input row; the net's state is untouched."""
        _, As = self._forward_rows(_int16_rows(Xq, self.sizes[0]))
        return As[-1]

    def evaluate(self, Xq, Tq) -> Evaluation:
        """Loss and correctness per sample, as backward() would report them, without
        touching gradients, statistics or buffers."""
        X, T = self._dataset(Xq, Tq)
        Zs, As = self._forward_rows(X)
        _, loss, good = self._loss_rows(Zs, As, T)
        return Evaluation(loss, good, As[-1])


def _int16_rows(X, n_in: int) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != n_in:
        raise ValueError(f"expected inputs of shape (N, {n_in}), got {X.shape}")
    if X.size and (X.min() < -32768 or X.max() > 32767):
        raise OverflowError("inputs outside int16")
    return X.astype(I64)

