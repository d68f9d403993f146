# The Adam kernel of edgebp.adam compiled by viper: bit-identical, same signature.
#
# A module of its own, compiled only for nets that use Adam (edgebp.adam._kernel). The habits
# of edgebp.kernels_viper hold here: int32 loads (G and M, which may be negative) are
# sign-extended from bit 30, V is never negative; u and c_s are clamped to 30, where every
# larger count gives Python's result too (rho * am and w * c_m are below 2**30). Every other
# shift count stays below the word size for the arguments the range proof admits.
# ptr16 and ptr32 are viper builtins, unknown to a linter:
# ruff: noqa: F821

import micropython
from micropython import const

# copies of edgebp.adam's and edgebp.fixed's constants (viper sees only this module's)
_BIAS = const(11)
_RHO_MAX = const(32767)
_V_MAX = const(0x3FFFFF)
_M30 = const(0x3FFFFFFF)
_HIGH = const(~0x3FFFFFFF)


@micropython.viper
def adam(W, G, M, V, n: int, count: int, kg: int, c1: int, c2: int, am: int, u: int,
         c_m: int, c_s: int, mode: int, rng):
    w16 = ptr16(W)
    gp = ptr32(G)
    mp = ptr32(M)
    vp = ptr32(V)
    rp = ptr32(rng)
    s = int(rp[0])
    if u > 30:
        u = 30
    if c_s > 30:
        c_s = 30
    half = count >> 1
    for p in range(n):
        g = int(gp[p])
        if (g >> 30) & 1:
            g |= _HIGH
        gp[p] = 0
        # the mean gradient x, rounded half away from zero
        if g >= 0:
            h = (g + half) // count
        else:
            h = 0 - (half - g) // count
        x = h << (kg - 1) if kg else h >> 1
        m = int(mp[p])
        if (m >> 30) & 1:
            m |= _HIGH
        d = x - m
        m += (d >> 15) * c1 + (((d & 32767) * c1) >> 15)
        mp[p] = m
        # x*x as a*a * 4**k, 2**11 <= a < 2**12 (composed floor shifts are one floor shift)
        a = x if x >= 0 else 0 - x
        k = 0 - _BIAS
        xf = 0
        if a:
            k = 0
            while a >= 65536:
                a >>= 4
                k += 4
            while a >= 4096:
                a >>= 1
                k += 1
            while a < 128:
                a <<= 4
                k -= 4
            while a < 2048:
                a <<= 1
                k -= 1
            xf = a * a
        q = int(vp[p])
        e = (q >> 25) - _BIAS
        f = q & 0x1FFFFFF
        if k > e:
            f = f >> (2 * (k - e)) if k - e < 13 else 0
            e = k
        elif e > k:
            xf = xf >> (2 * (e - k)) if e - k < 13 else 0
        d = xf - f
        f += (d >> 15) * c2 + (((d & 32767) * c2) >> 15)
        if f == 0:
            e = 0 - _BIAS
        while e > 0 - _BIAS and f < 0x400000:
            f <<= 2
            e -= 1
        vp[p] = ((e + _BIAS) << 25) | f
        # isqrt(f) (f < 2**25) by Newton's iteration from r >= sqrt(f), as kernels.c: each
        # floor((r + f // r) / 2) stays >= floor(sqrt(f)) and falls until r reaches it
        r = 0
        if f:
            r = 4096 if f < 0x1000000 else 8192
            while True:
                t = (r + f // r) >> 1
                if t >= r:
                    break
                r = t
        if r == 0:
            r = 1
        mm = m if m >= 0 else 0 - m
        if e >= 0:
            mm >>= e
            if mm >= r << 3:
                rho = _RHO_MAX
            else:
                rho = (mm << 12) // r
        elif mm >= ((r << 3) + (1 << (0 - e)) - 1) >> (0 - e):
            rho = _RHO_MAX
        else:
            rho = ((mm << (0 - e)) << 12) // r
        v = (rho * am) >> u
        if m < 0:
            v = 0 - v
        if v > _V_MAX:
            v = _V_MAX
        elif v < -_V_MAX:
            v = -_V_MAX
        w = (w16[p] ^ 0x8000) - 0x8000
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
