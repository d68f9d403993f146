# Pure-Python integer kernels: the definition of edgebp's arithmetic.
#
# Every other kernel set (viper, the numpy twin) must give bit-identical results.
# Formats: weights W (array 'h', row-major n_out x n_in), biases B ('h'), activations and
# deltas ('h'), gradient sums G and momentum V (array 'i'). A bias is a weight on a constant
# input `one` = 1.0 in the input's format. Products of two int16 values are < 2**30; each is
# shifted right by a guard k with 2**k >= number of terms, so no sum can leave [-2**30, 2**30).
# Positional arguments only and index loops only: nothing here allocates.

from edgebp.fixed import (
    IDENTITY,
    LEAKY,
    MISH,
    RELU,
    SIGMOID,
    SOFTMAX,
    SWISH,
    TANH,
    V_MAX,
    const,
    requant,
    sat16,
)
from edgebp.luts import EXP2, SIGMOID as SIG_LUT, TANH as TANH_LUT
from edgebp.luts_act import MISH_D, MISH_G, SWISH_D

_LOG2E_Q12 = const(5909)  # round(log2(e) * 4096)
_M30 = const(0x3FFFFFFF)


def matvec(W, B, x, n_in, n_out, one, k, s, z):
    # z[j] = requant(sum_i (W[j,i] x[i]) >> k + (B[j] one) >> k, s)
    row = 0
    for j in range(n_out):
        acc = (B[j] * one) >> k
        for i in range(n_in):
            acc += (W[row + i] * x[i]) >> k
        z[j] = requant(acc, s)
        row += n_in


def matvec_t(W, d, n_in, n_out, k, s, e):
    # e[i] = requant(sum_j (W[j,i] d[j]) >> k, s): the error sent back through W^T
    for i in range(n_in):
        acc = 0
        p = i
        for j in range(n_out):
            acc += (W[p] * d[j]) >> k
            p += n_in
        e[i] = requant(acc, s)


def outer_acc(G, GB, d, x, n_in, n_out, one, kg):
    # G[j,i] += (d[j] x[i]) >> kg; GB[j] += (d[j] one) >> kg. At most 2**kg samples per sum.
    row = 0
    for j in range(n_out):
        dj = d[j]
        if dj != 0:
            GB[j] += (dj * one) >> kg
            for i in range(n_in):
                G[row + i] += (dj * x[i]) >> kg
        row += n_in


def _lut(T, zq):
    # linear interpolation on a 129-point table over z in [-8, 8], z in Q12
    u = zq + 32768
    i = u >> 9
    lo = T[i]
    p = (T[i + 1] - lo) * (u & 511)
    return lo + (p >> 9) + ((p >> 8) & 1)


def exp_neg(x):
    # exp(-x) in Q14 for x >= 0 in Q12, via 2**-(x log2 e): integer part as a shift,
    # fractional part from a 65-point table with interpolation.
    p = x * _LOG2E_Q12
    y = (p >> 12) + ((p >> 11) & 1)
    ip = y >> 12
    if ip >= 15:
        return 0
    fp = y & 4095
    i = fp >> 6
    lo = EXP2[i]
    p = (EXP2[i + 1] - lo) * (fp & 63)
    v = lo + (p >> 6) + ((p >> 5) & 1)
    if ip == 0:
        return v
    return (v >> ip) + ((v >> (ip - 1)) & 1)


def softmax(z, a, n, k):
    # z in Q(12 - k) (k = 0..3), a in Q14. exp_neg reads max - z in Q12: (max - z) << k, taken
    # no further than 65535 (exp(-16) is below half an LSB of Q14: exp_neg gives 0 from
    # 42,590 on). Sum of exps <= n * 16384 < 2**30 for n < 65536.
    mx = z[0]
    for j in range(1, n):
        if z[j] > mx:
            mx = z[j]
    tot = 0
    for j in range(n):
        x = (mx - z[j]) << k
        e = exp_neg(x if x < 65535 else 65535)
        a[j] = e
        tot += e
    half = tot >> 1
    for j in range(n):
        a[j] = (a[j] * 16384 + half) // tot


def act_fwd(kind, z, a, n, alpha):
    # alpha: the leaky-ReLU slope in Q12, or for softmax the net's logit_k
    if kind == IDENTITY:
        for i in range(n):
            a[i] = z[i]
    elif kind == RELU:
        for i in range(n):
            v = z[i]
            a[i] = v if v > 0 else 0
    elif kind == LEAKY:
        for i in range(n):
            v = z[i]
            if v > 0:
                a[i] = v
            else:
                p = v * alpha
                a[i] = (p >> 12) + ((p >> 11) & 1)
    elif kind == SIGMOID:
        for i in range(n):
            a[i] = _lut(SIG_LUT, z[i])
    elif kind == TANH:
        for i in range(n):
            a[i] = _lut(TANH_LUT, z[i])
    elif kind == SOFTMAX:
        softmax(z, a, n, alpha)
    elif kind == SWISH or kind == MISH:
        gated(SIG_LUT if kind == SWISH else MISH_G, z, a, n)


def act_bwd(kind, e, z, a, d, n, alpha):
    # d[i] = f'(z[i]) * e[i]; e and d may be the same buffer. Sigmoid and tanh derivatives
    # come from the cached output a (Q14): a(1-a) and 1-a^2.
    if kind == IDENTITY:
        for i in range(n):
            d[i] = e[i]
    elif kind == RELU:
        for i in range(n):
            d[i] = e[i] if z[i] > 0 else 0
    elif kind == LEAKY:
        for i in range(n):
            if z[i] > 0:
                d[i] = e[i]
            else:
                p = e[i] * alpha
                d[i] = (p >> 12) + ((p >> 11) & 1)
    elif kind == SIGMOID:
        for i in range(n):
            v = a[i]
            p = v * (16384 - v)
            g = (p >> 14) + ((p >> 13) & 1)
            p = e[i] * g
            d[i] = (p >> 14) + ((p >> 13) & 1)
    elif kind == TANH:
        for i in range(n):
            v = a[i]
            p = v * v
            g = 16384 - ((p >> 14) + ((p >> 13) & 1))
            p = e[i] * g
            d[i] = (p >> 14) + ((p >> 13) & 1)
    elif kind == SWISH or kind == MISH:
        gated_bwd(SWISH_D if kind == SWISH else MISH_D, e, z, d, n)
    else:
        # softmax is only used with cross-entropy, whose delta is formed directly
        for i in range(n):
            d[i] = e[i]


def update(W, G, V, n, m, u, mu, c_m, c_s, mode, rng):
    # One SGD step per parameter, in units of 2**-8 weight LSB (v):
    #   v = clamp((G >> 8) * m >> u) + round(W * c_m >> c_s) [+ round(V * mu >> 8)]
    #   W -= (v + r) >> 8, r = 128 (nearest) or 8 random bits (stochastic); G = 0.
    # |G| < 2**30 so (G >> 8) * m < 2**30 for m <= 256; |v| stays below 2**24 before clamping.
    s = rng[0]
    for p in range(n):
        g = G[p]
        G[p] = 0
        w = W[p]
        v = (((g >> 8) * m) >> u)
        if v > V_MAX:
            v = V_MAX
        elif v < -V_MAX:
            v = -V_MAX
        if c_m:
            q = w * c_m
            if c_s > 0:
                v += (q >> c_s) + ((q >> (c_s - 1)) & 1)
            else:
                v += q
        if mu:
            q = V[p] * mu
            v += (q >> 8) + ((q >> 7) & 1)
        if v > V_MAX:
            v = V_MAX
        elif v < -V_MAX:
            v = -V_MAX
        if mu:
            V[p] = v
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


def gated(T, z, a, n):
    # swish and mish: a = z * g(z), g the Q14 gate table T (in [0, 1]), z and a in Q12.
    # |z g| <= 32767 * 16384 < 2**29, and |a| <= |z|.
    for i in range(n):
        v = z[i]
        p = v * _lut(T, v)
        a[i] = (p >> 14) + ((p >> 13) & 1)


def gated_bwd(T, e, z, d, n):
    # d = f'(z) e, f' from the Q14 table T. f' peaks near 1.1, so d can pass the int16 range
    # by a tenth: saturated. |e f'| <= 32767 * 18019 < 2**30.
    for i in range(n):
        p = e[i] * _lut(T, z[i])
        d[i] = sat16((p >> 14) + ((p >> 13) & 1))
