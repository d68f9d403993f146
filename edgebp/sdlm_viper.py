# The SDLM kernels of edgebp.sdlm compiled by viper: bit-identical, same signatures.
#
# A module of its own, compiled only for nets that use SDLM (edgebp.sdlm._kernels). The habits
# of edgebp.kernels_viper hold here: int16 loads are sign-extended with (u ^ 0x8000) - 0x8000,
# int32 loads (G) from bit 30; shift counts are clamped where every larger count gives
# Python's result too: k, u and c_s to 30 or 31 (the shifted values are below 2**30 in
# magnitude), the requant shift to 31 (as matvec_t), and a left shift by -s of requant only
# runs below the saturation limit, so it cannot leave int16.
# ptr16 and ptr32 are viper builtins, unknown to a linter:
# ruff: noqa: F821

import micropython
from micropython import const

# copies of edgebp.fixed's constants (viper sees only this module's)
_V_MAX = const(0x3FFFFF)
_M30 = const(0x3FFFFFFF)
_HIGH = const(~0x3FFFFFFF)


@micropython.viper
def sq_t(W, C, n_in: int, n_out: int, k: int, s: int, E):
    w16 = ptr16(W)
    cp = ptr16(C)
    ep = ptr16(E)
    if k > 31:
        k = 31
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
            w = (w16[p] ^ 0x8000) - 0x8000
            if w < 0:
                w = 0 - w
            acc += ((((w * ((cp[j] ^ 0x8000) - 0x8000)) >> 15)) * w) >> k
            p += n_in
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
        ep[i] = acc


@micropython.viper
def curv_acc(HW, HB, C, a, n_in: int, n_out: int, s_w: int, s_b: int, gam: int):
    hw = ptr16(HW)
    hb = ptr16(HB)
    cp = ptr16(C)
    ap = ptr16(a)
    # the saturation limits of requant's left shifts, as in sq_t
    if s_w > 31:
        s_w = 31
    if s_b > 31:
        s_b = 31
    lim_w = 0
    nw = 0 - s_w
    if 0 < nw and nw < 16:
        lim_w = 32768 >> nw
    elif nw >= 16:
        lim_w = 1
    lim_b = 0
    nb = 0 - s_b
    if 0 < nb and nb < 16:
        lim_b = 32768 >> nb
    elif nb >= 16:
        lim_b = 1
    row = 0
    for j in range(n_out):
        c = (cp[j] ^ 0x8000) - 0x8000
        x = c
        if s_b > 0:
            x = (x >> s_b) + ((x >> (s_b - 1)) & 1)
        elif s_b < 0:
            if x >= lim_b:
                x = 32767
            elif x <= 0 - lim_b:
                x = -32767
            else:
                x = x << nb
        if x > 32767:
            x = 32767
        elif x < -32767:
            x = -32767
        h = (hb[j] ^ 0x8000) - 0x8000
        d = (x - h) * gam
        hb[j] = h + (d >> 14) + ((d >> 13) & 1)
        for i in range(n_in):
            v = (ap[i] ^ 0x8000) - 0x8000
            if v < 0:
                v = 0 - v
            x = ((c * v) >> 15) * v
            if s_w > 0:
                x = (x >> s_w) + ((x >> (s_w - 1)) & 1)
            elif s_w < 0:
                if x >= lim_w:
                    x = 32767
                elif x <= 0 - lim_w:
                    x = -32767
                else:
                    x = x << nw
            if x > 32767:
                x = 32767
            elif x < -32767:
                x = -32767
            h = (hw[row + i] ^ 0x8000) - 0x8000
            d = (x - h) * gam
            hw[row + i] = h + (d >> 14) + ((d >> 13) & 1)
        row += n_in


@micropython.viper
def sdlm(W, G, H, n: int, m: int, u: int, mu_q: int, fh: int, c_m: int, c_s: int, mode: int,
         rng):
    w16 = ptr16(W)
    gp = ptr32(G)
    hp = ptr16(H)
    rp = ptr32(rng)
    s = int(rp[0])
    # (g >> 8) * m and w * c_m are below 2**30 in magnitude
    if u > 30:
        u = 30
    if c_s > 30:
        c_s = 30
    lim = _V_MAX >> fh
    for p in range(n):
        g = int(gp[p])
        if (g >> 30) & 1:
            g |= _HIGH
        gp[p] = 0
        w = (w16[p] ^ 0x8000) - 0x8000
        v = ((g >> 8) * m) >> u
        a = v if v >= 0 else 0 - v
        # |v| * 2**fh // den in two parts: the remainder times 2**fh is below 2**30
        den = mu_q + ((hp[p] ^ 0x8000) - 0x8000)
        q = a // den
        if q > lim:
            a = _V_MAX
        else:
            a = (q << fh) + (((a - q * den) << fh) // den)
            if a > _V_MAX:
                a = _V_MAX
        v = a if v >= 0 else 0 - a
        if c_m:
            q = w * c_m
            if c_s > 0:
                v += (q >> c_s) + ((q >> (c_s - 1)) & 1)
            else:
                v += q
            if v > _V_MAX:
                v = _V_MAX
            elif v < -_V_MAX:
                v = -_V_MAX
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
