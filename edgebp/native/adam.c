// edgebp/adam.py's Adam kernel as a MicroPython native module of its own (adam_native.mpy):
// imported only by nets that train with Adam, so that the kernels every net loads
// (kernels_native.mpy) carry none of its code. Conventions as in kernels.c.
#include "py/dynruntime.h"

#define NATMOD "adam_native"
#include "native.h"

// edgebp/adam.py's adam: one Adam step per parameter, each step's reads and writes in its order.
// See there for the units and for the bounds that keep every intermediate below 2**30.

#define ADAM_BIAS 11 // V's exponent field is E + ADAM_BIAS
#define RHO_MAX 32767

// floor(a * c / 2**15), split at bit 15 as mul_q15
ALWAYS_INLINE int32_t mul_q15(int32_t a, int32_t c) {
    return (a >> 15) * c + (((a & 32767) * c) >> 15);
}

// k with 2**11 <= a * 2**-k < 2**12, for a > 0 (armv6m and rv32imc have no clz instruction,
// and a natmod has no libgcc)
ALWAYS_INLINE int32_t top12(int32_t a) {
    #if defined(__thumb2__) || defined(__x86_64__)
    return 20 - __builtin_clz(a);
    #else
    int32_t k = 0;
    for (; a >= 4096; a >>= 1) {
        k++;
    }
    for (; a < 2048; a <<= 1) {
        k--;
    }
    return k;
    #endif
}

// floor(sqrt(n)) for 0 <= n < 2**26, as isqrt. With a divide instruction, Newton's iteration
// from r = 2**ceil(bits / 2) (8192 without clz) >= sqrt(n): each floor((r + n // r) / 2) stays
// >= floor(sqrt(n)) and falls until r is floor(sqrt(n)), then it stops falling (checked for
// every n < 2**26). armv6m has no divide instruction: bit by bit, as isqrt.
static int32_t isqrt26(int32_t n) {
    #if defined(__ARM_ARCH_6M__)
    int32_t r = 0, b = 1 << 24;
    while (b > n) {
        b >>= 2;
    }
    for (; b; b >>= 2) {
        if (n >= r + b) {
            n -= r + b;
            r = (r >> 1) + b;
        } else {
            r >>= 1;
        }
    }
    return r;
    #else
    if (n == 0) {
        return 0;
    }
    #if defined(__thumb2__) || defined(__x86_64__)
    int32_t r = 1 << ((33 - __builtin_clz(n)) >> 1);
    #else
    int32_t r = 1 << 13;
    #endif
    for (int32_t t; (t = (r + n / r) >> 1) < r;) {
        r = t;
    }
    return r;
    #endif
}

NOINLINE static int32_t adam_c(int16_t *W, int32_t *G, int32_t *M, int32_t *V, size_t n,
    int32_t count, int32_t kg, int32_t c1, int32_t c2, int32_t am, int32_t u, int32_t c_m,
    int32_t c_s, int32_t mode, int32_t s) {
    int32_t half = count >> 1;
    for (size_t p = 0; p < n; p++) {
        // the mean gradient x, rounded half away from zero, and the first moment
        int32_t g = G[p];
        G[p] = 0;
        int32_t h = g >= 0 ? floordiv(g + half, count) : -floordiv(half - g, count);
        int32_t x = kg ? h * (1 << (kg - 1)) : h >> 1;
        int32_t m = M[p];
        m += mul_q15(x - m, c1);
        M[p] = m;
        // the second moment F * 4**E: x*x enters as a*a * 4**k, a the top 12 bits of |x|
        int32_t a = x >= 0 ? x : -x, k = -ADAM_BIAS, xf = 0;
        if (a) {
            k = top12(a);
            a = k >= 0 ? a >> k : a << -k;
            xf = a * a;
        }
        int32_t e = (V[p] >> 25) - ADAM_BIAS, f = V[p] & 0x1FFFFFF;
        if (k > e) {
            f = k - e < 13 ? f >> (2 * (k - e)) : 0;
            e = k;
        } else if (e > k) {
            xf = e - k < 13 ? xf >> (2 * (e - k)) : 0;
        }
        f += mul_q15(xf - f, c2);
        if (f == 0) {
            e = -ADAM_BIAS;
        }
        for (; e > -ADAM_BIAS && f < 0x400000; e--) {
            f <<= 2;
        }
        V[p] = (e + ADAM_BIAS) << 25 | f;
        // rho = |m| / sqrt(v) in Q12, saturated; the step as SGD's
        int32_t r = isqrt26(f), mm = m >= 0 ? m : -m, rho = RHO_MAX;
        r += r == 0;
        if (e >= 0) {
            mm >>= e;
            if (mm < r << 3) {
                rho = floordiv(mm << 12, r);
            }
        } else if (mm < ((r << 3) + (1 << -e) - 1) >> -e) {
            rho = floordiv((mm << -e) << 12, r);
        }
        int32_t v = (rho * am) >> u;
        v = clamp_v(m < 0 ? -v : v);
        int32_t w = W[p];
        if (c_m) {
            v = clamp_v(v + rshift_round(w * c_m, c_s));
        }
        if (mode) {
            s = xorshift30(s);
            w -= (v + (s >> 22)) >> 8;
        } else {
            w -= (v + 128) >> 8;
        }
        store_sat16(W + p, w);
    }
    return s;
}

static mp_obj_t adam(size_t n_args, const mp_obj_t *args) {
    // adam(W, G, M, V, n, count, kg, c1, c2, am, u, c_m, c_s, mode, rng)
    size_t len_w, len_g, len_m, len_v, len_rng;
    int16_t *W = out16(args[0], &len_w);
    int32_t *G = out32(args[1], &len_g);
    int32_t *M = out32(args[2], &len_m);
    int32_t *V = out32(args[3], &len_v);
    size_t n = arg_size(args[4]);
    int32_t kg = arg_in(args[6], 0, 15);
    int32_t count = arg_in(args[5], 1, 1 << kg);
    int32_t c1 = arg_in(args[7], 32, 32768);
    int32_t c2 = arg_in(args[8], 1, 32768);
    int32_t am = arg_in(args[9], 0, 32767);
    int32_t u = arg_in(args[10], 0, 30);
    int32_t c_m = arg_in(args[11], 0, 255);
    int32_t c_s = arg_in(args[12], 0, 30);
    int32_t mode = arg_int(args[13]) != 0;
    int32_t *rng = out32(args[14], &len_rng);
    need(len_rng, 1);
    need(len_w, n);
    need(len_g, n);
    need(len_m, n);
    need(len_v, n);
    rng[0] = adam_c(W, G, M, V, n, count, kg, c1, c2, am, u, c_m, c_s, mode, rng[0]);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(adam_obj, 15, 15, adam);

mp_obj_t mpy_init(mp_obj_fun_bc_t *self, size_t n_args, size_t n_kw, mp_obj_t *args) {
    MP_DYNRUNTIME_INIT_ENTRY
    mp_store_global(MP_QSTR_adam, MP_OBJ_FROM_PTR(&adam_obj));
    MP_DYNRUNTIME_INIT_EXIT
}
