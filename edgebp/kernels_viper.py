# Viper kernels: edgebp.kernels compiled to machine code, bit-identical, same signatures.
#
# Only MicroPython with the viper emitter can import this module (edgebp.kern picks it).
# Viper ints are machine words (32 bits on an MCU, 64 on x64 unix) that wrap silently, so
# each expression keeps the structure of edgebp.kernels, whose intermediates stay inside
# [-2**30, 2**30). Three habits make the same code exact on every word size:
# - ptr16 loads are unsigned, and ptr32 loads zero-extend on 64-bit ports: int16 values are
#   sign-extended with (u ^ 0x8000) - 0x8000, int32 values (all in [-2**30, 2**30)) by
#   copying bit 30 upwards. Stores keep the low bits, so G += t needs no sign repair.
# - Hardware shifts take the count modulo the word size on x86, RISC-V and Xtensa; Python's
#   do not. Counts are clamped to 31 (to 30 where the shifted value is below 2**30), which
#   gives Python's result for every such value.
# - Constants stay inside [-2**30, 2**30): a larger literal is a Python object to mpy-cross,
#   and viper refuses to mix it with a machine int.
# ptr16 and ptr32 are viper builtins, unknown to a linter:
# ruff: noqa: F821

from array import array

import micropython
from micropython import const

from edgebp.luts import EXP2, SIGMOID as SIG_LUT, TANH as TANH_LUT
from edgebp.luts_act import MISH_D, MISH_G, SWISH_D

# Copies of edgebp.fixed's constants: viper sees only this module's const() names as machine
# ints (a wrong copy makes the bit-exactness tests fail).
_IDENTITY = const(0)
_RELU = const(1)
_LEAKY = const(2)
_SIGMOID = const(3)
_TANH = const(4)
_SOFTMAX = const(5)
_SWISH = const(6)
_MISH = const(7)
_V_MAX = const(0x3FFFFF)
_LOG2E_Q12 = const(5909)
_M30 = const(0x3FFFFFFF)
_HIGH = const(~0x3FFFFFFF)  # bits 30 and up: the sign extension of a 31-bit value

# The tables as int16 buffers, for ptr16 access
_SIG = array("h", SIG_LUT)
_TANH_T = array("h", TANH_LUT)
_EXP2 = array("h", EXP2)
_MISH_G = array("h", MISH_G)
_SWISH_D = array("h", SWISH_D)
_MISH_D = array("h", MISH_D)


@micropython.viper
def matvec(W, B, x, n_in: int, n_out: int, one: int, k: int, s: int, z):
    w = ptr16(W)
    b = ptr16(B)
    xp = ptr16(x)
    zp = ptr16(z)
    if s > 31:
        s = 31
    lim = 0
    ns = 0 - s
    if 0 < ns and ns < 16:
        lim = 32768 >> ns
    elif ns >= 16:
        lim = 1
    row = 0
    for j in range(n_out):
        acc = (((b[j] ^ 0x8000) - 0x8000) * one) >> k
        for i in range(n_in):
            acc += (((w[row + i] ^ 0x8000) - 0x8000) * ((xp[i] ^ 0x8000) - 0x8000)) >> k
        # requant(acc, s), as in edgebp.fixed
        if s > 0:
            acc = (acc >> s) + ((acc >> (s - 1)) & 1)
        elif s < 0:
            if acc >= lim:
                acc = 32767
            elif acc <= 0 - lim:
                acc = -32767
            else:
                acc = acc << ns
        if acc > 32767:
            acc = 32767
        elif acc < -32767:
            acc = -32767
        zp[j] = acc
        row += n_in


@micropython.viper
def matvec_t(W, d, n_in: int, n_out: int, k: int, s: int, e):
    w = ptr16(W)
    dp = ptr16(d)
    ep = ptr16(e)
    if s > 31:
        s = 31
    lim = 0
    ns = 0 - s
    if 0 < ns and ns < 16:
        lim = 32768 >> ns
    elif ns >= 16:
        lim = 1
    for i in range(n_in):
        acc = 0
        p = i
        for j in range(n_out):
            acc += (((w[p] ^ 0x8000) - 0x8000) * ((dp[j] ^ 0x8000) - 0x8000)) >> k
            p += n_in
        if s > 0:
            acc = (acc >> s) + ((acc >> (s - 1)) & 1)
        elif s < 0:
            if acc >= lim:
                acc = 32767
            elif acc <= 0 - lim:
                acc = -32767
            else:
                acc = acc << ns
        if acc > 32767:
            acc = 32767
        elif acc < -32767:
            acc = -32767
        ep[i] = acc


@micropython.viper
def outer_acc(G, GB, d, x, n_in: int, n_out: int, one: int, kg: int):
    g = ptr32(G)
    gb = ptr32(GB)
    dp = ptr16(d)
    xp = ptr16(x)
    row = 0
    for j in range(n_out):
        dj = (dp[j] ^ 0x8000) - 0x8000
        if dj != 0:
            gb[j] += (dj * one) >> kg
            for i in range(n_in):
                g[row + i] += (dj * ((xp[i] ^ 0x8000) - 0x8000)) >> kg
        row += n_in


@micropython.viper
def softmax(z, a, n: int, k: int):
    zp = ptr16(z)
    ap = ptr16(a)
    t = ptr16(_EXP2)
    mx = (zp[0] ^ 0x8000) - 0x8000
    for j in range(1, n):
        v = (zp[j] ^ 0x8000) - 0x8000
        if v > mx:
            mx = v
    tot = 0
    for j in range(n):
        # exp_neg(min((mx - z[j]) << k, 65535)) of edgebp.kernels
        x = (mx - ((zp[j] ^ 0x8000) - 0x8000)) << k
        if x > 65535:
            x = 65535
        p = x * _LOG2E_Q12
        y = (p >> 12) + ((p >> 11) & 1)
        ip = y >> 12
        ex = 0
        if ip < 15:
            fp = y & 4095
            i = fp >> 6
            lo = int(t[i])
            p = (int(t[i + 1]) - lo) * (fp & 63)
            ex = lo + (p >> 6) + ((p >> 5) & 1)
            if ip > 0:
                ex = (ex >> ip) + ((ex >> (ip - 1)) & 1)
        ap[j] = ex
        tot += ex
    half = tot >> 1
    for j in range(n):
        ap[j] = (int(ap[j]) * 16384 + half) // tot


@micropython.viper
def act_fwd(kind: int, z, a, n: int, alpha: int):
    zp = ptr16(z)
    ap = ptr16(a)
    if kind == _IDENTITY:
        for i in range(n):
            ap[i] = zp[i]
    elif kind == _RELU:
        for i in range(n):
            v = (zp[i] ^ 0x8000) - 0x8000
            ap[i] = v if v > 0 else 0
    elif kind == _LEAKY:
        for i in range(n):
            v = (zp[i] ^ 0x8000) - 0x8000
            if v > 0:
                ap[i] = v
            else:
                p = v * alpha
                ap[i] = (p >> 12) + ((p >> 11) & 1)
    elif kind == _SIGMOID or kind == _TANH:
        t = ptr16(_SIG)
        if kind == _TANH:
            t = ptr16(_TANH_T)
        for i in range(n):
            # linear interpolation on a 129-point table over z in [-8, 8], as _lut
            u = ((zp[i] ^ 0x8000) - 0x8000) + 32768
            j = u >> 9
            lo = (t[j] ^ 0x8000) - 0x8000
            p = (((t[j + 1] ^ 0x8000) - 0x8000) - lo) * (u & 511)
            ap[i] = lo + (p >> 9) + ((p >> 8) & 1)
    elif kind == _SOFTMAX:
        softmax(z, a, n, alpha)
    elif kind == _SWISH:
        gated(_SIG, z, a, n)
    elif kind == _MISH:
        gated(_MISH_G, z, a, n)


@micropython.viper
def act_bwd(kind: int, e, z, a, d, n: int, alpha: int):
    # e and d may be the same buffer: each d[i] is written after e[i] is read.
    ep = ptr16(e)
    zp = ptr16(z)
    ap = ptr16(a)
    dp = ptr16(d)
    if kind == _RELU:
        for i in range(n):
            if ((zp[i] ^ 0x8000) - 0x8000) > 0:
                dp[i] = ep[i]
            else:
                dp[i] = 0
    elif kind == _LEAKY:
        for i in range(n):
            if ((zp[i] ^ 0x8000) - 0x8000) > 0:
                dp[i] = ep[i]
            else:
                p = ((ep[i] ^ 0x8000) - 0x8000) * alpha
                dp[i] = (p >> 12) + ((p >> 11) & 1)
    elif kind == _SIGMOID:
        for i in range(n):
            v = (ap[i] ^ 0x8000) - 0x8000
            p = v * (16384 - v)
            g = (p >> 14) + ((p >> 13) & 1)
            p = ((ep[i] ^ 0x8000) - 0x8000) * g
            dp[i] = (p >> 14) + ((p >> 13) & 1)
    elif kind == _TANH:
        for i in range(n):
            v = (ap[i] ^ 0x8000) - 0x8000
            p = v * v
            g = 16384 - ((p >> 14) + ((p >> 13) & 1))
            p = ((ep[i] ^ 0x8000) - 0x8000) * g
            dp[i] = (p >> 14) + ((p >> 13) & 1)
    elif kind == _SWISH:
        gated_bwd(_SWISH_D, e, z, d, n)
    elif kind == _MISH:
        gated_bwd(_MISH_D, e, z, d, n)
    else:
        # identity, and softmax (whose cross-entropy delta is formed directly)
        for i in range(n):
            dp[i] = ep[i]


@micropython.viper
def update(W, G, V, n: int, m: int, u: int, mu: int, c_m: int, c_s: int, mode: int, rng):
    # The step of edgebp.kernels.update; see there for the bounds.
    w16 = ptr16(W)
    gp = ptr32(G)
    vp = ptr32(G)  # V is None without momentum: never read then
    if mu:
        vp = ptr32(V)
    rp = ptr32(rng)
    s = int(rp[0])
    # (g >> 8) * m and w * c_m are below 2**30 in magnitude
    if u > 30:
        u = 30
    if c_s > 30:
        c_s = 30
    for p in range(n):
        g = int(gp[p])
        if (g >> 30) & 1:
            g |= _HIGH
        gp[p] = 0
        w = (w16[p] ^ 0x8000) - 0x8000
        v = ((g >> 8) * m) >> u
        if v > _V_MAX:
            v = _V_MAX
        elif v < -_V_MAX:
            v = -_V_MAX
        if c_m:
            q = w * c_m
            if c_s > 0:
                v += (q >> c_s) + ((q >> (c_s - 1)) & 1)
            else:
                v += q
        if mu:
            q = int(vp[p])
            if (q >> 30) & 1:
                q |= _HIGH
            q *= mu
            v += (q >> 8) + ((q >> 7) & 1)
        if v > _V_MAX:
            v = _V_MAX
        elif v < -_V_MAX:
            v = -_V_MAX
        if mu:
            vp[p] = v
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
        w16[p] = w
    rp[0] = s


@micropython.viper
def gated(T, z, a, n: int):
    # swish and mish forward, as edgebp.kernels.gated
    t = ptr16(T)
    zp = ptr16(z)
    ap = ptr16(a)
    for i in range(n):
        v = (zp[i] ^ 0x8000) - 0x8000
        u = v + 32768
        j = u >> 9
        lo = (t[j] ^ 0x8000) - 0x8000
        p = (((t[j + 1] ^ 0x8000) - 0x8000) - lo) * (u & 511)
        p = v * (lo + (p >> 9) + ((p >> 8) & 1))
        ap[i] = (p >> 14) + ((p >> 13) & 1)


@micropython.viper
def gated_bwd(T, e, z, d, n: int):
    # swish and mish backward, as edgebp.kernels.gated_bwd
    t = ptr16(T)
    ep = ptr16(e)
    zp = ptr16(z)
    dp = ptr16(d)
    for i in range(n):
        u = ((zp[i] ^ 0x8000) - 0x8000) + 32768
        j = u >> 9
        lo = (t[j] ^ 0x8000) - 0x8000
        p = (((t[j + 1] ^ 0x8000) - 0x8000) - lo) * (u & 511)
        p = ((ep[i] ^ 0x8000) - 0x8000) * (lo + (p >> 9) + ((p >> 8) & 1))
        v = (p >> 14) + ((p >> 13) & 1)
        if v > 32767:
            v = 32767
        elif v < -32767:
            v = -32767
        dp[i] = v
