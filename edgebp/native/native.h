// What edgebp's native modules share: edgebp/fixed.py's constants and roundings, and the
// wrappers' argument checks. Each module (kernels.c, adam.c) defines NATMOD, its name, first.
#ifndef EDGEBP_NATIVE_H
#define EDGEBP_NATIVE_H

_Static_assert((-7 >> 1) == -4, "kernels.c needs >> of negative values to be arithmetic");
_Static_assert((int32_t)0xFFFFFFFFu == -1, "kernels.c needs two's complement narrowing");

// edgebp/fixed.py's constants
#define Q_MAX 32767
#define V_MAX 0x3FFFFF
#define M30 0x3FFFFFFF

#define ALWAYS_INLINE static inline __attribute__((always_inline))
// the kernels shared by their wrappers and the whole-step functions: one copy each (code size)
#define NOINLINE __attribute__((noinline))

// ---------------------------------------------------------------------------------------------
// edgebp/fixed.py

ALWAYS_INLINE int32_t sat16(int32_t x) {
    // one unsigned compare for the common case: x + Q_MAX in [0, 2 Q_MAX]
    if (__builtin_expect((uint32_t)x + Q_MAX > 2 * Q_MAX, 0)) {
        return x > 0 ? Q_MAX : -Q_MAX;
    }
    return x;
}

// (x >> s) + ((x >> (s - 1)) & 1): round half up. For s >= 32 Python gives 0 for every int32 x
// (x >> s is -1 exactly when bit s - 1 is 1), and s = 31 is a valid C shift.
ALWAYS_INLINE int32_t rshift_round(int32_t x, int32_t s) {
    if (s <= 0) {
        return x;
    }
    if (s > 31) {
        return 0;
    }
    return (x >> s) + ((x >> (s - 1)) & 1);
}

// rshift_round for a count known to lie in 1..31: no tests in a loop
ALWAYS_INLINE int32_t rshift_round_1_31(int32_t x, int32_t s) {
    return (x >> s) + ((x >> (s - 1)) & 1);
}

// acc scaled down by 2**s, rounded half up, saturated to int16; s < 0 scales up, saturating
// before the shift so that the shift cannot leave the range.
ALWAYS_INLINE int32_t requant(int32_t acc, int32_t s) {
    if (s > 0) {
        return sat16(rshift_round(acc, s));
    }
    if (s == 0) {
        return sat16(acc);
    }
    // for s <= -15 every non-zero acc saturates; keep lim >= 1 so that zero stays zero
    int32_t lim = s > -15 ? 32768 >> -s : 1;
    if (acc >= lim) {
        return Q_MAX;
    }
    if (acc <= -lim) {
        return -Q_MAX;
    }
    return s > -15 ? sat16(acc * (1 << -s)) : 0; // acc is 0 here when s <= -15
}

// 30-bit xorshift (9, 11, 12); the left shifts are masked first so no value reaches 2**30.
// Exact for every int32 state, as Python's on the same value.
// (s & (M30 >> n)) << n is written ((uint32_t)s << (n + 2)) >> 2: the same bits without a mask
// constant, which would cost the update loop a register.
ALWAYS_INLINE int32_t xorshift30(int32_t s) {
    s ^= ((uint32_t)s << 11) >> 2; // (s & (M30 >> 9)) << 9
    s ^= s >> 11;
    s ^= ((uint32_t)s << 14) >> 2; // (s & (M30 >> 12)) << 12
    return s;
}

// n // d for n >= 0, d > 0. armv6m has no divide instruction, and a natmod has no libgcc.
ALWAYS_INLINE int32_t floordiv(int32_t n, int32_t d) {
    #if defined(__ARM_ARCH_6M__)
    uint32_t q = 0, r = 0;
    for (int b = 31; b >= 0; b--) {
        r = (r << 1) | (((uint32_t)n >> b) & 1); // r < d < 2**31: no overflow
        if (r >= (uint32_t)d) {
            r -= d;
            q |= 1u << b;
        }
    }
    return q;
    #else
    return n / d;
    #endif
}

ALWAYS_INLINE int32_t clamp_v(int32_t v) {
    // as sat16, to +-V_MAX
    if (__builtin_expect((uint32_t)v + V_MAX > 2 * V_MAX, 0)) {
        return v > 0 ? V_MAX : -V_MAX;
    }
    return v;
}

// *p = sat16(w), written so that GCC keeps the common case to one compare and a store: store,
// and store again if w was out of range
ALWAYS_INLINE void store_sat16(int16_t *p, int32_t w) {
    *p = w;
    if (__builtin_expect((uint32_t)w + Q_MAX > 2 * Q_MAX, 0)) {
        *p = w > 0 ? Q_MAX : -Q_MAX;
    }
}

// ---------------------------------------------------------------------------------------------
// The wrappers' arguments: buffers and small ints in, checked.

// a module uses the helpers it needs
#define MAYBE_UNUSED __attribute__((unused))

MAYBE_UNUSED static void *buffer(mp_obj_t o, char typecode, size_t *len, mp_uint_t flags) {
    mp_buffer_info_t bi;
    mp_get_buffer_raise(o, &bi, flags);
    if (bi.typecode != typecode) {
        if (typecode == 'h') {
            mp_raise_TypeError(MP_ERROR_TEXT(NATMOD ": expected array('h')"));
        }
        mp_raise_TypeError(MP_ERROR_TEXT(NATMOD ": expected array('i')"));
    }
    *len = bi.len >> (typecode == 'h' ? 1 : 2); // no division: armv6m has none
    return bi.buf;
}

MAYBE_UNUSED static const int16_t *in16(mp_obj_t o, size_t *len) {
    return buffer(o, 'h', len, MP_BUFFER_READ);
}

MAYBE_UNUSED static int16_t *out16(mp_obj_t o, size_t *len) {
    return buffer(o, 'h', len, MP_BUFFER_RW);
}

MAYBE_UNUSED static int32_t *out32(mp_obj_t o, size_t *len) {
    return buffer(o, 'i', len, MP_BUFFER_RW);
}

// an int argument: a small int or a bool. dynruntime.h's mp_obj_get_int would silently cut a
// long int to a word (and returns it unsigned); Python would compute with it, the core never
// passes one: ValueError.
MAYBE_UNUSED static mp_int_t arg_int(mp_obj_t o) {
    if (mp_obj_is_small_int(o)) {
        return MP_OBJ_SMALL_INT_VALUE(o);
    }
    if (o == mp_const_false || o == mp_const_true) {
        return o == mp_const_true;
    }
    (void)mp_obj_get_int(o); // TypeError if o is no int at all
    mp_raise_ValueError(MP_ERROR_TEXT(NATMOD ": int argument beyond the small-int range"));
}

// a value used in the arithmetic (one, alpha, m, mu, c_m, kind): int32, or ValueError (only
// a 64-bit port has other small ints)
MAYBE_UNUSED static int32_t arg_i32(mp_obj_t o) {
    mp_int_t v = arg_int(o);
    if (v != (int32_t)v) {
        mp_raise_ValueError(MP_ERROR_TEXT(NATMOD ": argument outside int32"));
    }
    return v;
}

// a size: range(n) of a negative n is empty
MAYBE_UNUSED static size_t arg_size(mp_obj_t o) {
    mp_int_t n = arg_int(o);
    return n < 0 ? 0 : (size_t)n;
}

// a shift count clamped to lo..hi, where every count beyond gives the same result
MAYBE_UNUSED static int32_t arg_shift(mp_obj_t o, int32_t lo, int32_t hi) {
    mp_int_t v = arg_int(o);
    return v < lo ? lo : v > hi ? hi : (int32_t)v;
}

MAYBE_UNUSED static void need(size_t len, size_t n) {
    if (len < n) {
        mp_raise_msg(&mp_type_IndexError, MP_ERROR_TEXT(NATMOD ": array too short"));
    }
}

// rows * cols <= len, without a product that could overflow and without a division
MAYBE_UNUSED static void need2(size_t len, size_t rows, size_t cols) {
    if (rows <= 0xFFFF && cols <= 0xFFFF) {
        need(len, rows * cols);
        return;
    }
    for (size_t j = 0; j < rows; j++) {
        need(len, cols);
        len -= cols;
    }
}

// the requant shift: s > 31 acts as 31 and s < -16 as -16 (see requant)
#define arg_requant_shift(o) arg_shift((o), -16, 32)

// an argument of an optimiser's kernel in lo..hi (the ranges its range proof admits), or
// ValueError
MAYBE_UNUSED static int32_t arg_in(mp_obj_t o, int32_t lo, int32_t hi) {
    mp_int_t v = arg_int(o);
    if (v < lo || v > hi) {
        mp_raise_ValueError(MP_ERROR_TEXT(NATMOD ": argument out of range"));
    }
    return v;
}

#endif
