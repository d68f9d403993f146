// edgebp's integer kernels as a MicroPython native module: edgebp/kernels.py in C, bit for bit.
//
// edgebp/kernels.py is the definition. Every function here has its name, its positional
// signature and its results; each is a thin mp_obj_t wrapper (unpack the buffers, read the
// small ints, check the sizes) around a plain C function on typed pointers that allocates
// nothing. Formats as there: weights W, biases B, activations and deltas int16 (array 'h');
// gradient sums G and momentum V int32 (array 'i'); rng an array 'i' holding the state.
//
// C integers against Python's (DESIGN.md section 2):
// - Every intermediate of the definition stays inside [-2**30, 2**30) for the inputs the core
//   admits, so int32_t holds each one; int64_t is needed nowhere. The module is compiled with
//   -fwrapv: an input outside that contract wraps, as a store into a MicroPython array does,
//   instead of being undefined behaviour.
// - x >> s of a negative x is arithmetic on GCC, which is Python's floor shift (checked below).
// - A shift by >= 32 is undefined in C. Python's x >> s for s >= 31 is 0 or -1 for any int32 x,
//   and so is C's x >> 31, so counts are clamped to 31 (rshift_round: 0 beyond 31). That gives
//   Python's result for every int32 value, not only for those of the contract.
// - x << s of a negative x is undefined in C99: written as x * (1 << s).
// - Sizes and buffer lengths are checked before anything is written (IndexError), where Python
//   raises at the first access out of range; a buffer of the wrong type is a TypeError.
//
// Speed (instructions on an emulated Cortex-M3, per term of a sum or per parameter): the inner
// loops are unrolled by hand, matvec takes two rows at a time (dot2_k) and matvec_t four
// columns (col4_k); on Thumb-2 they come in copies with the guard shift as a constant, the row
// of outer_acc is Thumb-2 assembly (see AXPY_ASM), update has a copy per setting (see
// update_k), and its most common copy is Thumb-2 assembly (see nearest_quads_mla_thumb2).
// Everything else is plain C, the same on every architecture, and edgebp.kernels is the
// reference each copy is tested against. learn_net runs a whole sample of Net.learn in one
// call: the engine's Python costs one method call a step.
#include "py/dynruntime.h"

#define NATMOD "kernels_native"
#include "native.h"
#include "luts.h"

#define LOG2E_Q12 5909 // round(log2(e) * 4096)
enum { IDENTITY = 0, RELU = 1, LEAKY = 2, SIGMOID = 3, TANH = 4, SOFTMAX = 5, SWISH = 6, MISH = 7 };

// ---------------------------------------------------------------------------------------------
// The kernels, as edgebp/kernels.py. Shift counts arrive clamped by the wrappers: k, kg, u in
// 0..31 (a product of two int16 is at most 2**30 in magnitude, an int32 x >> 31 is Python's
// x >> s for every s >= 31), s and c_s as given (requant and rshift_round take any count).

// The inner loops of matvec and outer_acc, unrolled by hand (GCC unrolls them worse), with the
// shift as a constant in copies for the counts the engine makes: on ARM the shift then folds
// into the add (add r, r, p, asr #k), one instruction per term fewer than a shift by a
// register. A kernel picks the copy for its count from a table once per call; other counts
// take the copy with the count in a register. k of matvec is ceil_log2(n_in + 1), 1..13 for
// widths up to 4096; kg of outer_acc is ceil_log2(batch_max), 0..7 for batches up to 128.

// sum_i (w[i] x[i]) >> k: a row of matvec, 8 terms at a time
ALWAYS_INLINE int32_t dot_k(const int16_t *w, const int16_t *x, size_t n, int32_t k) {
    int32_t acc = 0;
    const int16_t *end8 = x + (n & ~(size_t)7);
    const int16_t *end = x + n;
    while (x != end8) {
        acc += (w[0] * x[0]) >> k;
        acc += (w[1] * x[1]) >> k;
        acc += (w[2] * x[2]) >> k;
        acc += (w[3] * x[3]) >> k;
        acc += (w[4] * x[4]) >> k;
        acc += (w[5] * x[5]) >> k;
        acc += (w[6] * x[6]) >> k;
        acc += (w[7] * x[7]) >> k;
        w += 8;
        x += 8;
    }
    while (x != end) {
        acc += (*w++ * *x++) >> k;
    }
    return acc;
}

// acc[0] += sum_i (w[i] x[i]) >> k, acc[1] += the same for the next row, w + stride: two rows
// of matvec at once, so that each x[i] is loaded once for both; 4 terms at a time
ALWAYS_INLINE void dot2_k(const int16_t *w, size_t stride, const int16_t *x, size_t n, int32_t k,
    int32_t *acc) {
    const int16_t *v = w + stride;
    int32_t a0 = acc[0], a1 = acc[1];
    const int16_t *end4 = x + (n & ~(size_t)3);
    const int16_t *end = x + n;
    while (x != end4) {
        int32_t x0 = x[0], x1 = x[1], x2 = x[2], x3 = x[3];
        a0 += (w[0] * x0) >> k;
        a1 += (v[0] * x0) >> k;
        a0 += (w[1] * x1) >> k;
        a1 += (v[1] * x1) >> k;
        a0 += (w[2] * x2) >> k;
        a1 += (v[2] * x2) >> k;
        a0 += (w[3] * x3) >> k;
        a1 += (v[3] * x3) >> k;
        w += 4;
        v += 4;
        x += 4;
    }
    while (x != end) {
        int32_t xi = *x++;
        a0 += (*w++ * xi) >> k;
        a1 += (*v++ * xi) >> k;
    }
    acc[0] = a0;
    acc[1] = a1;
}

// acc[q] = sum_j (p[j n_in + q] d[j]) >> k for q < 4: four columns of matvec_t, sharing each
// load of d[j]
ALWAYS_INLINE void col4_k(const int16_t *p, const int16_t *d, size_t n_in, size_t n_out,
    int32_t k, int32_t *acc) {
    int32_t acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
    const int16_t *end = d + n_out;
    while (d != end) {
        int32_t dj = *d++;
        acc0 += (p[0] * dj) >> k;
        acc1 += (p[1] * dj) >> k;
        acc2 += (p[2] * dj) >> k;
        acc3 += (p[3] * dj) >> k;
        p += n_in;
    }
    acc[0] = acc0;
    acc[1] = acc1;
    acc[2] = acc2;
    acc[3] = acc3;
}

// g[i] += (dj x[i]) >> kg: a row of outer_acc, 4 terms at a time
ALWAYS_INLINE void axpy_k(int32_t *g, const int16_t *x, size_t n, int32_t dj, int32_t kg) {
    const int16_t *end4 = x + (n & ~(size_t)3);
    const int16_t *end = x + n;
    while (x != end4) {
        g[0] += (dj * x[0]) >> kg;
        g[1] += (dj * x[1]) >> kg;
        g[2] += (dj * x[2]) >> kg;
        g[3] += (dj * x[3]) >> kg;
        g += 4;
        x += 4;
    }
    while (x != end) {
        *g++ += (dj * *x++) >> kg;
    }
}

typedef void (*dot2_fn)(const int16_t *w, size_t stride, const int16_t *x, size_t n, int32_t k,
    int32_t *acc);
typedef void (*axpy_fn)(int32_t *g, const int16_t *x, size_t n, int32_t dj, int32_t kg);

static int32_t dot_any(const int16_t *w, const int16_t *x, size_t n, int32_t k) {
    return dot_k(w, x, n, k);
}

static void dot2_any(const int16_t *w, size_t stride, const int16_t *x, size_t n, int32_t k,
    int32_t *acc) {
    dot2_k(w, stride, x, n, k, acc);
}

typedef void (*col4_fn)(const int16_t *p, const int16_t *d, size_t n_in, size_t n_out,
    int32_t k, int32_t *acc);

static void col4_any(const int16_t *p, const int16_t *d, size_t n_in, size_t n_out, int32_t k,
    int32_t *acc) {
    col4_k(p, d, n_in, n_out, k, acc);
}

static void axpy_any(int32_t *g, const int16_t *x, size_t n, int32_t dj, int32_t kg) {
    axpy_k(g, x, n, dj, kg);
}

#define DOT_COPY(K) \
    static void dot2_##K(const int16_t *w, size_t stride, const int16_t *x, size_t n, int32_t k, \
        int32_t *acc) { \
        dot2_k(w, stride, x, n, K, acc); \
    }
#define COL4_COPY(K) \
    static void col4_##K(const int16_t *p, const int16_t *d, size_t n_in, size_t n_out, \
        int32_t k, int32_t *acc) { \
        col4_k(p, d, n_in, n_out, K, acc); \
    }
#define AXPY_COPY(K) \
    static void axpy_##K(int32_t *g, const int16_t *x, size_t n, int32_t dj, int32_t kg) { \
        axpy_k(g, x, n, dj, K); \
    }
#define ENTRY(F, K) F##_##K,
#define DOT_SHIFTS(X, F) X(F, 1) X(F, 2) X(F, 3) X(F, 4) X(F, 5) X(F, 6) X(F, 7) X(F, 8) \
    X(F, 9) X(F, 10) X(F, 11) X(F, 12) X(F, 13)
#define AXPY_SHIFTS(X, F) X(F, 0) X(F, 1) X(F, 2) X(F, 3) X(F, 4) X(F, 5) X(F, 6) X(F, 7)
#define COPY(F, K) F##_COPY(K)
#if defined(__thumb2__) // elsewhere (Thumb-1, RISC-V, x64) a constant shift saves nothing
DOT_SHIFTS(COPY, DOT)
DOT_SHIFTS(COPY, COL4) // k of matvec_t is ceil_log2(n_out): the same counts
// On Thumb-2 the row of outer_acc is assembly by hand, 8 terms a turn: the eight sums come in
// with two ldm and go out with two stm (one instruction each), so a term costs its ldrsh, mul
// and add (for kg = 0 ldrsh and mla) where GCC's loop loads and stores each sum on its own.
// dj * x[i] is the int32 product of two int16 values, exact in mul's low word, and the add (of
// the shifted product, an arithmetic shift by the constant kg) wraps as the C code does under
// -fwrapv. The sums live in r4, r5, r6, r8 (ldm and stm take registers in ascending order;
// r7 and r9 are left to GCC's frame and PIC registers). The last n % 8 terms take axpy_k.
#define AXPY_TERM_0(G, X) "mla %[" G "], %[" X "], %[dj], %[" G "]\n\t"
#define AXPY_TERM_K(G, X, K) "mul %[" X "], %[" X "], %[dj]\n\t" \
    "add %[" G "], %[" G "], %[" X "], asr #" #K "\n\t"
#define AXPY_HALF(TERM) \
    "ldrsh %[x0], [%[x]], #2\n\t" \
    "ldrsh %[x1], [%[x]], #2\n\t" \
    "ldrsh %[x2], [%[x]], #2\n\t" \
    "ldrsh %[x3], [%[x]], #2\n\t" \
    "ldm %[g], {%[g0], %[g1], %[g2], %[g3]}\n\t" \
    TERM("g0", "x0") TERM("g1", "x1") TERM("g2", "x2") TERM("g3", "x3") \
    "stmia %[g]!, {%[g0], %[g1], %[g2], %[g3]}\n\t"
#define AXPY_ASM(K, TERM) \
    static void axpy_##K(int32_t *g, const int16_t *x, size_t n, int32_t dj, int32_t kg) { \
        const int16_t *end8 = x + (n & ~(size_t)7); \
        if (x != end8) { \
            register int32_t g0 __asm__("r4"); \
            register int32_t g1 __asm__("r5"); \
            register int32_t g2 __asm__("r6"); \
            register int32_t g3 __asm__("r8"); \
            int32_t x0, x1, x2, x3; \
            __asm__ volatile ( \
                "1:\n\t" \
                AXPY_HALF(TERM) \
                AXPY_HALF(TERM) \
                "cmp %[x], %[end]\n\t" \
                "bne 1b\n" \
                : [g] "+r" (g), [x] "+r" (x), [g0] "=&r" (g0), [g1] "=&r" (g1), \
                [g2] "=&r" (g2), [g3] "=&r" (g3), [x0] "=&r" (x0), [x1] "=&r" (x1), \
                [x2] "=&r" (x2), [x3] "=&r" (x3) \
                : [end] "r" (end8), [dj] "r" (dj) \
                : "cc", "memory"); \
        } \
        axpy_k(g, x, n & 7, dj, K); \
    }
#define AXPY_TERM_1(G, X) AXPY_TERM_K(G, X, 1)
#define AXPY_TERM_2(G, X) AXPY_TERM_K(G, X, 2)
#define AXPY_TERM_3(G, X) AXPY_TERM_K(G, X, 3)
#define AXPY_TERM_4(G, X) AXPY_TERM_K(G, X, 4)
#define AXPY_TERM_5(G, X) AXPY_TERM_K(G, X, 5)
#define AXPY_TERM_6(G, X) AXPY_TERM_K(G, X, 6)
#define AXPY_TERM_7(G, X) AXPY_TERM_K(G, X, 7)
#define AXPY_ASM_COPY(F, K) AXPY_ASM(K, AXPY_TERM_##K)
AXPY_SHIFTS(AXPY_ASM_COPY, AXPY)
static const dot2_fn DOT2[14] = { dot2_any, DOT_SHIFTS(ENTRY, dot2) }; // [0]: k = 0 is rare
static const col4_fn COL4[14] = { col4_any, DOT_SHIFTS(ENTRY, col4) };
static const axpy_fn AXPY[8] = { AXPY_SHIFTS(ENTRY, axpy) };
#define PICK(TABLE, N, ANY, K) ((K) < (N) ? TABLE[K] : ANY)
#define PICK_AXPY(K) PICK(AXPY, 8, axpy_any, K)
#else
#define PICK(TABLE, N, ANY, K) ANY
// kg = 0 (online learning): without the shift, one instruction a term fewer everywhere
static void axpy_0(int32_t *g, const int16_t *x, size_t n, int32_t dj, int32_t kg) {
    axpy_k(g, x, n, dj, 0);
}
#define PICK_AXPY(K) ((K) == 0 ? axpy_0 : axpy_any)
#endif

NOINLINE static void matvec_c(const int16_t *W, const int16_t *B, const int16_t *x, size_t n_in,
    size_t n_out, int32_t one, int32_t k, int32_t s, int16_t *z, int pairs) {
    // z[j] = requant(sum_i (W[j,i] x[i]) >> k + (B[j] one) >> k, s). Two rows at a time share
    // the loads of x (pairs = 0 when z overlaps W, B or x: then z[j] must be written before
    // row j + 1 is read, as in Python). The order of the terms in a sum does not change the
    // sum's bits: int32 addition wraps (-fwrapv), and the exact sum is inside int32.
    dot2_fn dot2 = PICK(DOT2, 14, dot2_any, k);
    const int16_t *row = W;
    size_t j = 0;
    if (pairs) {
        for (; j + 2 <= n_out; j += 2) {
            int32_t acc[2] = { (B[j] * one) >> k, (B[j + 1] * one) >> k };
            dot2(row, n_in, x, n_in, k, acc);
            z[j] = requant(acc[0], s);
            z[j + 1] = requant(acc[1], s);
            row += 2 * n_in;
        }
    }
    for (; j < n_out; j++) {
        int32_t acc = (B[j] * one) >> k;
        acc += dot_any(row, x, n_in, k);
        z[j] = requant(acc, s);
        row += n_in;
    }
}

NOINLINE static void matvec_t_c(const int16_t *W, const int16_t *d, size_t n_in, size_t n_out,
    int32_t k, int32_t s, int16_t *e, int blocks) {
    // e[i] = requant(sum_j (W[j,i] d[j]) >> k, s): the error sent back through W^T.
    // Four columns at a time share each load of d[j] (blocks = 0 when e overlaps W or d:
    // then each e[i] must be written before e[i + 1] is computed, as in Python).
    size_t i = 0;
    if (blocks) {
        col4_fn col4 = PICK(COL4, 14, col4_any, k);
        for (; i + 4 <= n_in; i += 4) {
            int32_t acc[4];
            col4(W + i, d, n_in, n_out, k, acc);
            #pragma GCC unroll 1
            for (size_t q = 0; q < 4; q++) { // one copy of requant: code size
                e[i + q] = requant(acc[q], s);
            }
        }
    }
    for (; i < n_in; i++) {
        int32_t acc = 0;
        const int16_t *p = W + i;
        for (size_t j = 0; j < n_out; j++) {
            acc += (*p * d[j]) >> k;
            p += n_in;
        }
        e[i] = requant(acc, s);
    }
}

NOINLINE static void outer_acc_c(int32_t *G, int32_t *GB, const int16_t *d, const int16_t *x,
    size_t n_in, size_t n_out, int32_t one, int32_t kg) {
    // G[j,i] += (d[j] x[i]) >> kg; GB[j] += (d[j] one) >> kg. At most 2**kg samples per sum.
    axpy_fn axpy = PICK_AXPY(kg);
    int32_t *row = G;
    for (size_t j = 0; j < n_out; j++) {
        int32_t dj = d[j];
        if (dj != 0) {
            GB[j] += (dj * one) >> kg;
            axpy(row, x, n_in, dj, kg);
        }
        row += n_in;
    }
}

// linear interpolation on a 129-point table over z in [-8, 8], z in Q12
ALWAYS_INLINE int32_t lut(const int16_t *T, int32_t zq) {
    int32_t u = zq + 32768;
    int32_t i = u >> 9;
    int32_t lo = T[i];
    int32_t p = (T[i + 1] - lo) * (u & 511);
    return lo + rshift_round(p, 9);
}

// exp(-x) in Q14 for 0 <= x < 2**18 in Q12 (the wrapper clamps: beyond, the result is 0), via
// 2**-(x log2 e): integer part as a shift, fractional part from a 65-point table.
static int32_t exp_neg_c(int32_t x) {
    int32_t p = x * LOG2E_Q12;
    int32_t y = rshift_round(p, 12);
    int32_t ip = y >> 12;
    if (ip >= 15) {
        return 0;
    }
    int32_t fp = y & 4095;
    int32_t i = fp >> 6;
    int32_t lo = EXP2_LUT[i];
    p = (EXP2_LUT[i + 1] - lo) * (fp & 63);
    int32_t v = lo + rshift_round(p, 6);
    return rshift_round(v, ip); // v when ip == 0
}


static void softmax_c(const int16_t *z, int16_t *a, size_t n, int32_t k) {
    // z in Q(12 - k), a in Q14; exp_neg_c reads min((max - z) << k, 65535) in Q12 (0 <= k <= 16:
    // the wrappers refuse k < 0 and take k > 16 as 16, where every nonzero difference already
    // gives 65535, as Python's shift does). Sum of exps <= n * 16384 < 2**30 for n < 65536.
    int32_t mx = z[0];
    for (size_t j = 1; j < n; j++) {
        if (z[j] > mx) {
            mx = z[j];
        }
    }
    int32_t lim = 65535 >> k;
    int32_t tot = 0;
    for (size_t j = 0; j < n; j++) {
        int32_t x = mx - z[j];
        int32_t e = exp_neg_c(x > lim ? 65535 : x << k);
        a[j] = e;
        tot += e;
    }
    int32_t half = tot >> 1;
    for (size_t j = 0; j < n; j++) {
        a[j] = floordiv(a[j] * 16384 + half, tot); // tot >= 16384: the maximum's exp is 1
    }
}

// softmax's logit shift k as Python's shift takes it (see softmax_c)
static int32_t logit_shift(int32_t k, size_t n) {
    if (k < 0 && n > 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("negative shift count"));
    }
    return k < 0 ? 0 : k > 16 ? 16 : k;
}

NOINLINE static void act_fwd_c(int32_t kind, const int16_t *z, int16_t *a, size_t n,
    int32_t alpha) {
    // alpha: the leaky-ReLU slope in Q12, or softmax's logit shift k (taken by logit_shift)
    if (kind == IDENTITY) {
        for (size_t i = 0; i < n; i++) {
            a[i] = z[i];
        }
    } else if (kind == RELU) {
        for (size_t i = 0; i < n; i++) {
            int32_t v = z[i];
            a[i] = v > 0 ? v : 0;
        }
    } else if (kind == LEAKY) {
        for (size_t i = 0; i < n; i++) {
            int32_t v = z[i];
            if (v > 0) {
                a[i] = v;
            } else {
                a[i] = rshift_round(v * alpha, 12);
            }
        }
    } else if (kind == SIGMOID) {
        for (size_t i = 0; i < n; i++) {
            a[i] = lut(SIGMOID_LUT, z[i]);
        }
    } else if (kind == TANH) {
        for (size_t i = 0; i < n; i++) {
            a[i] = lut(TANH_LUT, z[i]);
        }
    } else if (kind == SOFTMAX) {
        softmax_c(z, a, n, alpha);
    } else if (kind == SWISH || kind == MISH) {
        // a = z * g(z), g the Q14 gate table, z and a in Q12 (edgebp.kernels.gated)
        const int16_t *T = kind == SWISH ? SIGMOID_LUT : MISH_G_LUT;
        for (size_t i = 0; i < n; i++) {
            int32_t v = z[i];
            a[i] = rshift_round(v * lut(T, v), 14);
        }
    }
}

NOINLINE static void act_bwd_c(int32_t kind, const int16_t *e, const int16_t *z, const int16_t *a,
    int16_t *d, size_t n, int32_t alpha) {
    // d[i] = f'(z[i]) * e[i]; e and d may be the same buffer (each e[i] is read before d[i] is
    // written). Sigmoid and tanh derivatives come from the cached output a (Q14).
    if (kind == IDENTITY) {
        for (size_t i = 0; i < n; i++) {
            d[i] = e[i];
        }
    } else if (kind == RELU) {
        for (size_t i = 0; i < n; i++) {
            d[i] = z[i] > 0 ? e[i] : 0;
        }
    } else if (kind == LEAKY) {
        for (size_t i = 0; i < n; i++) {
            if (z[i] > 0) {
                d[i] = e[i];
            } else {
                d[i] = rshift_round(e[i] * alpha, 12);
            }
        }
    } else if (kind == SIGMOID) {
        for (size_t i = 0; i < n; i++) {
            int32_t v = a[i];
            int32_t g = rshift_round(v * (16384 - v), 14);
            d[i] = rshift_round(e[i] * g, 14);
        }
    } else if (kind == TANH) {
        for (size_t i = 0; i < n; i++) {
            int32_t v = a[i];
            int32_t g = 16384 - rshift_round(v * v, 14);
            d[i] = rshift_round(e[i] * g, 14);
        }
    } else if (kind == SWISH || kind == MISH) {
        // d = f'(z) e, f' from its Q14 table, saturated (f' peaks near 1.1)
        const int16_t *T = kind == SWISH ? SWISH_D_LUT : MISH_D_LUT;
        for (size_t i = 0; i < n; i++) {
            d[i] = sat16(rshift_round(e[i] * lut(T, z[i]), 14));
        }
    } else {
        // softmax is only used with cross-entropy, whose delta is formed directly
        for (size_t i = 0; i < n; i++) {
            d[i] = e[i];
        }
    }
}

// The step of edgebp.kernels.update with the settings that stay fixed during a call as
// constants where they are (decay: c_m != 0, momentum: mu != 0, stochastic: mode != 0), so that
// each copy carries only its own work. t_small: |(g >> 8) * m >> u| <= 2**31 >> 10 < V_MAX for
// every int32 g (u >= 10, |m| <= 256), so clamping that term changes nothing and is left out.
ALWAYS_INLINE int32_t update_k(int16_t *W, int32_t *G, int32_t *V, size_t n, int32_t m,
    int32_t u, int32_t mu, int32_t c_m, int32_t c_s, int32_t s,
    const int decay, const int momentum, const int stochastic, const int t_small) {
    int16_t *end = W + n;
    while (W != end) {
        int32_t g = *G;
        *G++ = 0;
        int32_t w = *W;
        int32_t v = ((g >> 8) * m) >> u;
        if (!t_small) {
            v = clamp_v(v);
        }
        if (decay) {
            v += rshift_round_1_31(w * c_m, c_s); // see update_c for c_s
        }
        if (momentum) {
            v += rshift_round(*V * mu, 8);
        }
        if (decay || momentum) { // else v is in range already
            v = clamp_v(v);
        }
        if (momentum) {
            *V++ = v;
        }
        if (stochastic) {
            s = xorshift30(s);
            w -= (v + (s >> 22)) >> 8;
        } else {
            w -= (v + 128) >> 8;
        }
        store_sat16(W++, w);
    }
    return s;
}

// Copies: plain SGD and SGD with momentum (the common cases), each with and without t_small,
// and weight decay with and without momentum; each for nearest and stochastic rounding. Each is
// a function of its own, so that each loop gets the registers to itself.
typedef int32_t (*update_fn)(int16_t *W, int32_t *G, int32_t *V, size_t n, int32_t m,
    int32_t u, int32_t mu, int32_t c_m, int32_t c_s, int32_t s);
#define UPDATE_COPY(NAME, D, M, S, T) \
    static int32_t NAME(int16_t *W, int32_t *G, int32_t *V, size_t n, int32_t m, int32_t u, \
        int32_t mu, int32_t c_m, int32_t c_s, int32_t s) { \
        return update_k(W, G, V, n, m, u, mu, c_m, c_s, s, D, M, S, T); \
    }
UPDATE_COPY(update_plain, 0, 0, 0, 0)
#if defined(__thumb2__)
// Plain SGD with round-to-nearest and t_small, two parameters per turn, in Thumb-2 by hand:
// exactly update_k's steps for W[p], G[p] (a shift by a register is ARM's, which for counts
// below 32 is C's), 12 instructions per parameter where GCC's loop takes 14. G word-aligned
// (ldrd, strd); end - W even and > 0.
static void nearest_pairs_thumb2(int16_t *W, int32_t *G, const int16_t *end, int32_t m,
    int32_t u) {
    int32_t g0, g1, w, t;
    __asm__ volatile (
        "1:\n\t"
        "ldrd   %[g0], %[g1], [%[G]]\n\t"           // g = G[p]; G[p] = 0 (two of each)
        "strd   %[zero], %[zero], [%[G]], #8\n\t"
        "asr    %[g0], %[g0], #8\n\t"               // v = ((g >> 8) * m) >> u
        "mul    %[g0], %[g0], %[m]\n\t"
        "asr    %[g0], %[g0], %[u]\n\t"
        "add    %[g0], %[g0], #128\n\t"             // w -= (v + 128) >> 8
        "ldrsh  %[w], [%[W]]\n\t"
        "sub    %[w], %[w], %[g0], asr #8\n\t"
        "add    %[t], %[w], %[q]\n\t"               // sat16: w + Q_MAX in [0, 2 Q_MAX]?
        "cmp    %[t], %[q2]\n\t"
        "bhi    3f\n"
        "2:\n\t"
        "strh   %[w], [%[W]], #2\n\t"
        "asr    %[g1], %[g1], #8\n\t"               // the same for W[p + 1], G[p + 1]
        "mul    %[g1], %[g1], %[m]\n\t"
        "asr    %[g1], %[g1], %[u]\n\t"
        "add    %[g1], %[g1], #128\n\t"
        "ldrsh  %[w], [%[W]]\n\t"
        "sub    %[w], %[w], %[g1], asr #8\n\t"
        "add    %[t], %[w], %[q]\n\t"
        "cmp    %[t], %[q2]\n\t"
        "bhi    5f\n"
        "4:\n\t"
        "strh   %[w], [%[W]], #2\n\t"
        "cmp    %[W], %[end]\n\t"
        "bne    1b\n\t"
        "b      9f\n"
        "3:\n\t"                                    // out of range: +-Q_MAX
        "cmp    %[w], #0\n\t"
        "ite    gt\n\t"
        "movgt  %[w], %[q]\n\t"
        "rsble  %[w], %[q], #0\n\t"
        "b      2b\n"
        "5:\n\t"
        "cmp    %[w], #0\n\t"
        "ite    gt\n\t"
        "movgt  %[w], %[q]\n\t"
        "rsble  %[w], %[q], #0\n\t"
        "b      4b\n"
        "9:\n"
        : [W] "+r" (W), [G] "+r" (G), [g0] "=&r" (g0), [g1] "=&r" (g1), [w] "=&r" (w),
        [t] "=&r" (t)
        : [end] "r" (end), [m] "r" (m), [u] "r" (u), [zero] "r" (0), [q] "r" (Q_MAX),
        [q2] "r" (2 * Q_MAX)
        : "cc", "memory");
}

// nearest_pairs_thumb2 with the rounding folded into a multiply-accumulate, 11 instructions
// per parameter: ((y >> u) + 128) >> 8 is (y + (128 << u)) >> (u + 8) for floor shifts, and
// y + (128 << u) with y = (g >> 8) * m stays inside int32 for every int32 g when 0 <= m <= 255
// and u <= 16: g >> 8 lies in [-2**23, 2**23), so y + (128 << u) lies in
// [-255 * 2**23, (2**23 - 1) * 255 + 2**23] = [-2**31 + 2**23, 2**31 - 255]. For those only.
static void nearest_pairs_mla_thumb2(int16_t *W, int32_t *G, const int16_t *end, int32_t m,
    int32_t u) {
    int32_t g0, g1, w, t;
    __asm__ volatile (
        "1:\n\t"
        "ldrd   %[g0], %[g1], [%[G]]\n\t"           // g = G[p]; G[p] = 0 (two of each)
        "strd   %[zero], %[zero], [%[G]], #8\n\t"
        "asr    %[g0], %[g0], #8\n\t"               // (((g >> 8) * m >> u) + 128) >> 8
        "mla    %[g0], %[g0], %[m], %[c]\n\t"
        "asr    %[g0], %[g0], %[u8]\n\t"
        "ldrsh  %[w], [%[W]]\n\t"                   // w -= that
        "sub    %[w], %[w], %[g0]\n\t"
        "add    %[t], %[w], %[q]\n\t"               // sat16: w + Q_MAX in [0, 2 Q_MAX]?
        "cmp    %[t], %[q2]\n\t"
        "bhi    3f\n"
        "2:\n\t"
        "strh   %[w], [%[W]], #2\n\t"
        "asr    %[g1], %[g1], #8\n\t"               // the same for W[p + 1], G[p + 1]
        "mla    %[g1], %[g1], %[m], %[c]\n\t"
        "asr    %[g1], %[g1], %[u8]\n\t"
        "ldrsh  %[w], [%[W]]\n\t"
        "sub    %[w], %[w], %[g1]\n\t"
        "add    %[t], %[w], %[q]\n\t"
        "cmp    %[t], %[q2]\n\t"
        "bhi    5f\n"
        "4:\n\t"
        "strh   %[w], [%[W]], #2\n\t"
        "cmp    %[W], %[end]\n\t"
        "bne    1b\n\t"
        "b      9f\n"
        "3:\n\t"                                    // out of range: +-Q_MAX
        "cmp    %[w], #0\n\t"
        "ite    gt\n\t"
        "movgt  %[w], %[q]\n\t"
        "rsble  %[w], %[q], #0\n\t"
        "b      2b\n"
        "5:\n\t"
        "cmp    %[w], #0\n\t"
        "ite    gt\n\t"
        "movgt  %[w], %[q]\n\t"
        "rsble  %[w], %[q], #0\n\t"
        "b      4b\n"
        "9:\n"
        : [W] "+r" (W), [G] "+r" (G), [g0] "=&r" (g0), [g1] "=&r" (g1), [w] "=&r" (w),
        [t] "=&r" (t)
        : [end] "r" (end), [m] "r" (m), [c] "r" (128 << u), [u8] "r" (u + 8), [zero] "r" (0),
        [q] "r" (Q_MAX), [q2] "r" (2 * Q_MAX)
        : "cc", "memory");
}

// nearest_pairs_mla_thumb2 four parameters a turn, 10.25 instructions per parameter: one ldm
// loads four gradient sums (into r4, r5, r6, r8: ldm takes registers in ascending order), and
// the range test compares with 2 Q_MAX as Q_MAX << 1, which frees a register. G word-aligned;
// end - W a multiple of 4 and > 0; the same m and u as there.
#define NEAREST_MLA_STEP(G, NEXT, FIX) \
    "asr    %[" G "], %[" G "], #8\n\t" \
    "mla    %[" G "], %[" G "], %[m], %[c]\n\t" \
    "asr    %[" G "], %[" G "], %[u8]\n\t" \
    "ldrsh  %[w], [%[W]]\n\t" \
    "sub    %[w], %[w], %[" G "]\n\t" \
    "add    %[t], %[w], %[q]\n\t" \
    "cmp    %[t], %[q], lsl #1\n\t" \
    "bhi    " FIX "f\n" \
    NEXT ":\n\t" \
    "strh   %[w], [%[W]], #2\n\t"
#define NEAREST_MLA_FIX(FIX, NEXT) \
    FIX ":\n\t" \
    "cmp    %[w], #0\n\t" \
    "ite    gt\n\t" \
    "movgt  %[w], %[q]\n\t" \
    "rsble  %[w], %[q], #0\n\t" \
    "b      " NEXT "b\n"
static void nearest_quads_mla_thumb2(int16_t *W, int32_t *G, const int16_t *end, int32_t m,
    int32_t u) {
    register int32_t g0 __asm__("r4");
    register int32_t g1 __asm__("r5");
    register int32_t g2 __asm__("r6");
    register int32_t g3 __asm__("r8");
    int32_t w, t;
    __asm__ volatile (
        "1:\n\t"
        "ldm    %[G], {%[g0], %[g1], %[g2], %[g3]}\n\t"   // g = G[p]; G[p] = 0 (four of each)
        "strd   %[zero], %[zero], [%[G]], #8\n\t"
        "strd   %[zero], %[zero], [%[G]], #8\n\t"
        NEAREST_MLA_STEP("g0", "2", "3")
        NEAREST_MLA_STEP("g1", "4", "5")
        NEAREST_MLA_STEP("g2", "6", "7")
        NEAREST_MLA_STEP("g3", "8", "9")
        "cmp    %[W], %[end]\n\t"
        "bne    1b\n\t"
        "b      10f\n"
        NEAREST_MLA_FIX("3", "2")
        NEAREST_MLA_FIX("5", "4")
        NEAREST_MLA_FIX("7", "6")
        NEAREST_MLA_FIX("9", "8")
        "10:\n"
        : [W] "+r" (W), [G] "+r" (G), [g0] "=&r" (g0), [g1] "=&r" (g1), [g2] "=&r" (g2),
        [g3] "=&r" (g3), [w] "=&r" (w), [t] "=&r" (t)
        : [end] "r" (end), [m] "r" (m), [c] "r" (128 << u), [u8] "r" (u + 8), [zero] "r" (0),
        [q] "r" (Q_MAX)
        : "cc", "memory");
}

static int32_t update_plain_small(int16_t *W, int32_t *G, int32_t *V, size_t n, int32_t m,
    int32_t u, int32_t mu, int32_t c_m, int32_t c_s, int32_t s) {
    size_t quads = n & ~(size_t)3;
    size_t pairs = n & ~(size_t)1;
    if (pairs && ((uintptr_t)G & 3) == 0 && m >= 0 && m <= 255 && u <= 16) {
        if (quads) {
            nearest_quads_mla_thumb2(W, G, W + quads, m, u);
            W += quads;
            G += quads;
            n -= quads;
            pairs -= quads;
            if (!pairs) {
                return update_k(W, G, V, n, m, u, mu, c_m, c_s, s, 0, 0, 0, 1);
            }
        }
        nearest_pairs_mla_thumb2(W, G, W + pairs, m, u);
        W += pairs;
        G += pairs;
        n -= pairs;
    } else if (pairs && ((uintptr_t)G & 3) == 0) {
        nearest_pairs_thumb2(W, G, W + pairs, m, u);
        W += pairs;
        G += pairs;
        n -= pairs;
    }
    return update_k(W, G, V, n, m, u, mu, c_m, c_s, s, 0, 0, 0, 1);
}
#else
// Plain SGD with round-to-nearest and t_small elsewhere: the rounding folded into the shift as
// in nearest_pairs_mla_thumb2 (for 0 <= m <= 255 and u <= 16, which keep the sum in int32),
// one add per parameter fewer.
static int32_t update_plain_small(int16_t *W, int32_t *G, int32_t *V, size_t n, int32_t m,
    int32_t u, int32_t mu, int32_t c_m, int32_t c_s, int32_t s) {
    if (m < 0 || m > 255 || u > 16) {
        return update_k(W, G, V, n, m, u, mu, c_m, c_s, s, 0, 0, 0, 1);
    }
    int32_t c = 128 << u;
    int32_t u8 = u + 8;
    int16_t *end = W + n;
    while (W != end) {
        int32_t g = *G;
        *G++ = 0;
        store_sat16(W, *W - (((g >> 8) * m + c) >> u8));
        W++;
    }
    return s;
}
#endif
UPDATE_COPY(update_plain_stochastic, 0, 0, 1, 0)
UPDATE_COPY(update_plain_small_stochastic, 0, 0, 1, 1)
UPDATE_COPY(update_momentum, 0, 1, 0, 0)
UPDATE_COPY(update_momentum_small, 0, 1, 0, 1)
UPDATE_COPY(update_momentum_stochastic, 0, 1, 1, 0)
UPDATE_COPY(update_momentum_small_stochastic, 0, 1, 1, 1)
UPDATE_COPY(update_decay, 1, 0, 0, 0)
UPDATE_COPY(update_decay_stochastic, 1, 0, 1, 0)
UPDATE_COPY(update_decay_momentum, 1, 1, 0, 0)
UPDATE_COPY(update_decay_momentum_stochastic, 1, 1, 1, 0)

NOINLINE static int32_t update_c(int16_t *W, int32_t *G, int32_t *V, size_t n, int32_t m,
    int32_t u, int32_t mu, int32_t c_m, int32_t c_s, int32_t mode, int32_t s) {
    // One SGD step per parameter, in units of 2**-8 weight LSB (v):
    //   v = clamp((G >> 8) * m >> u) + round(W * c_m >> c_s) [+ round(V * mu >> 8)]
    //   W -= (v + r) >> 8, r = 128 (nearest) or 8 random bits (stochastic); G = 0.
    // Returns the generator state. rshift_round(q, c_s) is q itself for c_s <= 0, as in Python.
    // t_small (see update_k). For u = 9, |t| <= 2**22 and only t = -2**22 (g = -2**31, m = 256)
    // would be clamped, to -V_MAX, whose nearest step (v + 128) >> 8 is the same -16384; a
    // stochastic step, a momentum or a decay sum can differ there.
    int plain_nearest = !mode && !mu && !c_m;
    int t_small = (u >= 10 || (u == 9 && plain_nearest)) && m >= -256 && m <= 256;
    // The loop takes the decay term rshift_round(w * c_m, c_s) with c_s in 1..31: for c_s >= 32
    // it is 0 for every int16 w (no decay), for c_s = 0 it is w * c_m = rshift_round(w * 2 c_m, 1)
    // (exact while |c_m| < 2**15; the core's c_m is 0..255).
    if (c_s >= 32) {
        c_m = 0;
    } else if (c_s <= 0) {
        c_m *= 2;
        c_s = 1;
    }
    update_fn f;
    if (c_m && mu) {
        f = mode ? update_decay_momentum_stochastic : update_decay_momentum;
    } else if (c_m) {
        f = mode ? update_decay_stochastic : update_decay;
    } else if (mu && t_small) {
        f = mode ? update_momentum_small_stochastic : update_momentum_small;
    } else if (mu) {
        f = mode ? update_momentum_stochastic : update_momentum;
    } else if (t_small) {
        f = mode ? update_plain_small_stochastic : update_plain_small;
    } else {
        f = mode ? update_plain_stochastic : update_plain;
    }
    return f(W, G, V, n, m, u, mu, c_m, c_s, s);
}

// ---------------------------------------------------------------------------------------------
// The wrappers: arguments in, checks, the plain function, None out.

// a guard shift: Python raises ValueError for a negative count, when the shift runs
static int32_t arg_guard(mp_obj_t o, int runs) {
    mp_int_t v = arg_int(o);
    if (v < 0 && runs) {
        mp_raise_ValueError(MP_ERROR_TEXT("negative shift count"));
    }
    return v < 0 ? 0 : v > 31 ? 31 : (int32_t)v;
}

// a and b (n and m int16) share memory
static int overlaps(const int16_t *a, size_t n, const int16_t *b, size_t m) {
    return a < b + m && b < a + n;
}

static mp_obj_t matvec(size_t n_args, const mp_obj_t *args) {
    // matvec(W, B, x, n_in, n_out, one, k, s, z)
    size_t len_w, len_b, len_x, len_z;
    const int16_t *W = in16(args[0], &len_w);
    const int16_t *B = in16(args[1], &len_b);
    const int16_t *x = in16(args[2], &len_x);
    size_t n_in = arg_size(args[3]);
    size_t n_out = arg_size(args[4]);
    int32_t one = arg_i32(args[5]);
    int32_t k = arg_guard(args[6], n_out > 0);
    int32_t s = arg_requant_shift(args[7]);
    int16_t *z = out16(args[8], &len_z);
    if (n_out > 0) {
        need(len_x, n_in);
    }
    need(len_b, n_out);
    need(len_z, n_out);
    need2(len_w, n_out, n_in);
    // two rows at a time only when no z[j] is read after it is written
    int pairs = !overlaps(z, n_out, x, n_in) && !overlaps(z, n_out, W, n_in * n_out)
        && !overlaps(z, n_out, B, n_out);
    matvec_c(W, B, x, n_in, n_out, one, k, s, z, pairs);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(matvec_obj, 9, 9, matvec);

static mp_obj_t matvec_t(size_t n_args, const mp_obj_t *args) {
    // matvec_t(W, d, n_in, n_out, k, s, e)
    size_t len_w, len_d, len_e;
    const int16_t *W = in16(args[0], &len_w);
    const int16_t *d = in16(args[1], &len_d);
    size_t n_in = arg_size(args[2]);
    size_t n_out = arg_size(args[3]);
    int32_t k = arg_guard(args[4], n_in > 0 && n_out > 0);
    int32_t s = arg_requant_shift(args[5]);
    int16_t *e = out16(args[6], &len_e);
    if (n_in > 0) {
        need(len_d, n_out);
    }
    need(len_e, n_in);
    need2(len_w, n_out, n_in);
    // four columns at a time only when no e[i] is read after it is written
    int blocks = !overlaps(e, n_in, d, n_out) && !overlaps(e, n_in, W, n_in * n_out);
    matvec_t_c(W, d, n_in, n_out, k, s, e, blocks);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(matvec_t_obj, 7, 7, matvec_t);

// 1 + the last j with d[j] != 0, or 0: outer_acc touches G, GB and x for such rows only
static size_t rows_used(const int16_t *d, size_t n) {
    while (n > 0 && d[n - 1] == 0) {
        n--;
    }
    return n;
}

static mp_obj_t outer_acc(size_t n_args, const mp_obj_t *args) {
    // outer_acc(G, GB, d, x, n_in, n_out, one, kg)
    size_t len_g, len_gb, len_d, len_x;
    int32_t *G = out32(args[0], &len_g);
    int32_t *GB = out32(args[1], &len_gb);
    const int16_t *d = in16(args[2], &len_d);
    const int16_t *x = in16(args[3], &len_x);
    size_t n_in = arg_size(args[4]);
    size_t n_out = arg_size(args[5]);
    int32_t one = arg_i32(args[6]);
    need(len_d, n_out);
    // as in Python, a row whose delta is zero reads and shifts nothing
    size_t rows = rows_used(d, n_out);
    int32_t kg = arg_guard(args[7], rows > 0);
    if (rows > 0) {
        need(len_gb, rows);
        need(len_x, n_in);
        need2(len_g, rows, n_in);
    }
    outer_acc_c(G, GB, d, x, n_in, rows, one, kg);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(outer_acc_obj, 8, 8, outer_acc);

static mp_obj_t exp_neg(mp_obj_t x_obj) {
    // exp_neg(x) -> int; x < 0 makes Python shift by a negative count
    mp_int_t x = arg_int(x_obj);
    if (x < 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("negative shift count"));
    }
    // from x = 2**18 on, ip >= 15 and the result is 0; below, x * LOG2E_Q12 < 2**31
    return mp_obj_new_int(exp_neg_c(x < (1 << 18) ? (int32_t)x : (1 << 18)));
}
static MP_DEFINE_CONST_FUN_OBJ_1(exp_neg_obj, exp_neg);

static mp_obj_t softmax(size_t n_args, const mp_obj_t *args) {
    // softmax(z, a, n, k); Python reads z[0] even when n is 0
    size_t len_z, len_a;
    const int16_t *z = in16(args[0], &len_z);
    int16_t *a = out16(args[1], &len_a);
    size_t n = arg_size(args[2]);
    int32_t k = arg_i32(args[3]);
    need(len_z, n > 0 ? n : 1);
    need(len_a, n);
    softmax_c(z, a, n, logit_shift(k, n));
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(softmax_obj, 4, 4, softmax);

static mp_obj_t act_fwd(size_t n_args, const mp_obj_t *args) {
    // act_fwd(kind, z, a, n, alpha)
    size_t len_z, len_a;
    int32_t kind = arg_i32(args[0]);
    const int16_t *z = in16(args[1], &len_z);
    int16_t *a = out16(args[2], &len_a);
    size_t n = arg_size(args[3]);
    int32_t alpha = arg_i32(args[4]);
    if (kind >= IDENTITY && kind <= MISH) { // another kind does nothing
        need(len_z, kind == SOFTMAX && n == 0 ? 1 : n);
        need(len_a, n);
    }
    act_fwd_c(kind, z, a, n, kind == SOFTMAX ? logit_shift(alpha, n) : alpha);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(act_fwd_obj, 5, 5, act_fwd);

static mp_obj_t act_bwd(size_t n_args, const mp_obj_t *args) {
    // act_bwd(kind, e, z, a, d, n, alpha)
    size_t len_e, len_z, len_a, len_d;
    int32_t kind = arg_i32(args[0]);
    const int16_t *e = in16(args[1], &len_e);
    const int16_t *z = in16(args[2], &len_z);
    const int16_t *a = in16(args[3], &len_a);
    int16_t *d = out16(args[4], &len_d);
    size_t n = arg_size(args[5]);
    int32_t alpha = arg_i32(args[6]);
    need(len_e, n);
    need(len_d, n);
    if (kind == RELU || kind == LEAKY || kind == SWISH || kind == MISH) {
        need(len_z, n);
    }
    if (kind == SIGMOID || kind == TANH) {
        need(len_a, n);
    }
    act_bwd_c(kind, e, z, a, d, n, alpha);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(act_bwd_obj, 7, 7, act_bwd);

static mp_obj_t update(size_t n_args, const mp_obj_t *args) {
    // update(W, G, V, n, m, u, mu, c_m, c_s, mode, rng); V is read only when mu is not 0
    size_t len_w, len_g, len_v = 0, len_rng;
    int16_t *W = out16(args[0], &len_w);
    int32_t *G = out32(args[1], &len_g);
    size_t n = arg_size(args[3]);
    int32_t m = arg_i32(args[4]);
    int32_t u = arg_guard(args[5], n > 0);
    int32_t mu = arg_i32(args[6]);
    int32_t c_m = arg_i32(args[7]);
    int32_t c_s = arg_shift(args[8], 0, 32); // c_s <= 0 adds w * c_m unshifted
    int32_t mode = arg_int(args[9]) != 0;
    int32_t *rng = out32(args[10], &len_rng);
    int32_t *V = NULL;
    if (mu && n > 0) {
        V = out32(args[2], &len_v);
    }
    need(len_rng, 1);
    need(len_w, n);
    need(len_g, n);
    if (mu) {
        need(len_v, n);
    }
    rng[0] = update_c(W, G, V, n, m, u, mu, c_m, c_s, mode, rng[0]);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(update_obj, 11, 11, update);

// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// The per-layer loops of edgebp/net.py's training step (Net.forward, score, backward, update)
// in one call each, so that a step pays the interpreter for a few calls, not for a dozen
// kernel calls, the input copy and the loss loop. They run the plain functions above in the
// order net.py calls the kernels, so they are bit-identical to it by construction, and net.py
// stays the definition (the pure and viper kernels run its Python loops).
//
// A net comes as the Net object: its attribute _fused, made once by Net._fuse(), is the tuple
// (A, Z, W, B, D, GW, GB, VW, VB, P) of the net's own lists of arrays and an array('i') P of
// its small tables: a head [L, loss, alpha, kg, shift_a[L]], then per layer
// [n_in, n_out, one, k_f, s_f, act, k_b, s_b, u0] (u0: update's shift u less e), then a tail
// [logit_k] (a softmax output's logit shift). Each call
// checks every buffer it touches, as the kernel wrappers do, and allocates nothing (score_net
// stores net.good and update_net reads the optimiser's settings: existing attributes).

enum { P_L, P_LOSS, P_ALPHA, P_KG, P_SA_OUT, P_HEAD };
enum { P_N_IN, P_N_OUT, P_ONE, P_K_F, P_S_F, P_ACT, P_K_B, P_S_B, P_U, P_LAYER };
enum { F_A, F_Z, F_W, F_B, F_D, F_GW, F_GB, F_VW, F_VB, F_P, F_LEN };
enum { MSE = 0, SOFTMAX_CE = 1, BCE = 2 }; // edgebp/fixed.py's losses
#define MAX_LAYERS 8
#define SMALL_MAX 0x3FFFFFFF

typedef struct {
    mp_obj_t *f; // the tuple's items
    const int32_t *P;
    size_t L;
} net_t;

static mp_obj_t *net_list(mp_obj_t o, size_t len) {
    size_t n;
    mp_obj_t *items;
    mp_obj_get_array(o, &n, &items);
    need(n, len);
    return items;
}

static void net_get(mp_obj_t self, net_t *net) {
    size_t n, len_p;
    mp_obj_get_array(mp_load_attr(self, MP_QSTR__fused), &n, &net->f);
    if (n != F_LEN) {
        mp_raise_ValueError(MP_ERROR_TEXT(NATMOD ": Net._fused is not a fused net"));
    }
    net->P = buffer(net->f[F_P], 'i', &len_p, MP_BUFFER_READ);
    need(len_p, P_HEAD);
    int32_t L = net->P[P_L];
    if (L < 1 || L > MAX_LAYERS) {
        mp_raise_ValueError(MP_ERROR_TEXT(NATMOD ": a net has 1 to 8 layers"));
    }
    need(len_p, P_HEAD + L * P_LAYER + 1);
    net->L = L;
}

// layer l's int at field i
#define LP(net, l, i) ((net)->P[P_HEAD + (l) * P_LAYER + (i)])

static size_t p_size(int32_t v) {
    return v < 0 ? 0 : (size_t)v;
}

static int32_t p_clamp(int32_t v, int32_t lo, int32_t hi) {
    return v < lo ? lo : v > hi ? hi : v;
}

static int32_t p_guard(int32_t v, int runs) {
    if (v < 0 && runs) {
        mp_raise_ValueError(MP_ERROR_TEXT("negative shift count"));
    }
    return p_clamp(v, 0, 31);
}

static const int16_t *net_in16(net_t *net, int list, size_t l, size_t n) {
    size_t len;
    const int16_t *p = in16(net_list(net->f[list], l + 1)[l], &len);
    need(len, n);
    return p;
}

static int16_t *net_out16(net_t *net, int list, size_t l, size_t n) {
    size_t len;
    int16_t *p = out16(net_list(net->f[list], l + 1)[l], &len);
    need(len, n);
    return p;
}

static int32_t *net_out32(net_t *net, int list, size_t l, size_t n) {
    size_t len;
    int32_t *p = out32(net_list(net->f[list], l + 1)[l], &len);
    need(len, n);
    return p;
}

// Net.forward's `a0[i] = x[i]`: x an array('h') is copied; any other x goes item by item
// through MicroPython's own subscript and array store, as the Python loop does.
static void copy_in(mp_obj_t x, int16_t *a0, size_t n) {
    mp_buffer_info_t bi;
    if (mp_get_buffer(x, &bi, MP_BUFFER_READ) && bi.typecode == 'h') {
        need(bi.len >> 1, n);
        const int16_t *src = bi.buf;
        for (size_t i = 0; i < n; i++) {
            a0[i] = src[i];
        }
        return;
    }
    for (size_t i = 0; i < n; i++) {
        mp_obj_t v = mp_obj_subscr(x, MP_OBJ_NEW_SMALL_INT(i), MP_OBJ_SENTINEL);
        mp_binary_set_val_array('h', a0, i, v);
    }
}

static void forward_c(net_t *np, mp_obj_t x) {
    net_t net = *np;
    size_t n0 = p_size(LP(&net, 0, P_N_IN));
    copy_in(x, net_out16(&net, F_A, 0, n0), n0);
    int32_t alpha = net.P[P_ALPHA];
    int32_t lk = net.P[P_HEAD + net.L * P_LAYER];
    for (size_t l = 0; l < net.L; l++) {
        size_t n_in = p_size(LP(&net, l, P_N_IN));
        size_t n_out = p_size(LP(&net, l, P_N_OUT));
        int32_t kind = LP(&net, l, P_ACT);
        size_t len_w;
        const int16_t *W = in16(net_list(net.f[F_W], l + 1)[l], &len_w);
        need2(len_w, n_out, n_in);
        const int16_t *B = net_in16(&net, F_B, l, n_out);
        const int16_t *a = net_in16(&net, F_A, l, n_out > 0 ? n_in : 0);
        int16_t *z = net_out16(&net, F_Z, l, kind == SOFTMAX && n_out == 0 ? 1 : n_out);
        int16_t *a1 = net_out16(&net, F_A, l + 1, n_out);
        int32_t k = p_guard(LP(&net, l, P_K_F), n_out > 0);
        int pairs = !overlaps(z, n_out, a, n_in) && !overlaps(z, n_out, W, n_in * n_out)
            && !overlaps(z, n_out, B, n_out);
        matvec_c(W, B, a, n_in, n_out, LP(&net, l, P_ONE), k,
            p_clamp(LP(&net, l, P_S_F), -16, 32), z, pairs);
        act_fwd_c(kind, z, a1, n_out, kind == SOFTMAX ? logit_shift(lk, n_out) : alpha);
    }
}

static mp_obj_t forward_net(mp_obj_t self, mp_obj_t x) {
    // forward_net(net, x): Net.forward(x)
    net_t net;
    net_get(self, &net);
    forward_c(&net, x);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_2(forward_net_obj, forward_net);

// edgebp/net.py's nlog_q14: -ln(p / 16384) in Q12 for p in Q14 (p < 1 read as 1)
static int32_t nlog_q14_c(int32_t p) {
    if (p < 1) {
        p = 1;
    }
    int32_t e = 0;
    while ((p >> (e + 1)) > 0) {
        e++;
    }
    int32_t m = e <= 12 ? p << (12 - e) : p >> (e - 12);
    int32_t f = m - 4096;
    int32_t i = f >> 6;
    int32_t lo = LOG2_LUT[i];
    int32_t l2 = lo + rshift_round((LOG2_LUT[i + 1] - lo) * (f & 63), 6);
    return rshift_round(((14 - e) * 4096 - l2) * 2839, 12); // 2839 = round(ln 2 * 4096)
}

// item j of a target: an array('h') read directly, anything else through its subscript as an
// int32 (the core's targets are int16)
typedef struct {
    mp_obj_t o;
    const int16_t *h;
    size_t len;
} target_t;

static void target_get(mp_obj_t o, target_t *t) {
    mp_buffer_info_t bi;
    t->o = o;
    t->h = NULL;
    if (mp_get_buffer(o, &bi, MP_BUFFER_READ) && bi.typecode == 'h') {
        t->h = bi.buf;
        t->len = bi.len >> 1;
    }
}

static int32_t target_at(const target_t *t, size_t j) {
    if (t->h != NULL) {
        need(t->len, j + 1);
        return t->h[j];
    }
    return arg_i32(mp_obj_subscr(t->o, MP_OBJ_NEW_SMALL_INT(j), MP_OBJ_SENTINEL));
}

// Net.score: the output delta into D[L-1], the loss (returned), net.good
static int32_t score_c(net_t *net, mp_obj_t t_obj, int32_t *good_out) {
    size_t L = net->L;
    size_t n = p_size(LP(net, L - 1, P_N_OUT));
    const int16_t *a = net_in16(net, F_A, L, n);
    int16_t *d = net_out16(net, F_D, L - 1, n);
    target_t t;
    target_get(t_obj, &t);
    int32_t loss = 0;
    int32_t good = 1;
    int32_t kind = net->P[P_LOSS];
    if (kind == SOFTMAX_CE) {
        const int16_t *z = net_in16(net, F_Z, L - 1, n);
        int32_t c = target_at(&t, 0);
        // a[c] as Python indexes it: from the end for a negative c
        int32_t ci = c < 0 ? c + (int32_t)n : c;
        if (ci < 0 || ci >= (int32_t)n) {
            mp_raise_msg(&mp_type_IndexError, MP_ERROR_TEXT("array index out of range"));
        }
        size_t best = 0;
        for (size_t j = 0; j < n; j++) {
            int32_t v = (int32_t)j == c ? a[j] - 16384 : a[j];
            // z saturated at the edge of Q12: the clamp has no gradient outwards
            if ((v < 0 && z[j] >= 32767) || (v > 0 && z[j] <= -32767)) {
                v = 0;
            }
            d[j] = v;
            if (a[j] > a[best]) {
                best = j;
            }
        }
        loss = nlog_q14_c(a[ci]);
        good = (int32_t)best == c;
    } else if (kind == BCE) {
        for (size_t j = 0; j < n; j++) {
            int32_t v = a[j];
            int32_t tj = p_clamp(target_at(&t, j), 0, 16384);
            d[j] = v - tj;
            loss += rshift_round(tj * nlog_q14_c(v) + (16384 - tj) * nlog_q14_c(16384 - v), 14);
            if ((v >= 8192) != (tj >= 8192)) {
                good = 0;
            }
        }
    } else {
        int32_t sa = net->P[P_SA_OUT];
        size_t best = 0;
        size_t tbest = 0;
        int32_t t_best = 0;
        for (size_t j = 0; j < n; j++) {
            int32_t tj = target_at(&t, j);
            // a[j] - tj clamped: tj beyond +-2**17 gives the same clamp and cannot wrap
            int32_t e = a[j] - p_clamp(tj, -(1 << 17), 1 << 17);
            e = p_clamp(e, -32767, 32767);
            d[j] = e;
            int32_t q = rshift_round(e * e, 2 * sa - 11);
            loss = q < SMALL_MAX - loss ? loss + q : SMALL_MAX;
            if (a[j] > a[best]) {
                best = j;
            }
            if (j == 0 || tj > t_best) {
                tbest = j;
                t_best = tj;
            }
        }
        if (n == 1) {
            int32_t half = 1 << p_clamp(sa - 1, 0, 30);
            good = (a[0] >= half) == (target_at(&t, 0) >= half);
        } else {
            good = best == tbest;
        }
    }
    *good_out = good;
    return loss;
}

static mp_obj_t score_net(mp_obj_t self, mp_obj_t t) {
    // score_net(net, t) -> loss: Net.score(t)
    net_t net;
    net_get(self, &net);
    int32_t good;
    int32_t loss = score_c(&net, t, &good);
    mp_store_attr(self, MP_QSTR_good, MP_OBJ_NEW_SMALL_INT(good));
    return mp_obj_new_int(loss);
}
static MP_DEFINE_CONST_FUN_OBJ_2(score_net_obj, score_net);

// Net.backward from the score to the gradient sums: the loss, net.good stored
static int32_t backward_c(mp_obj_t self, net_t *np, mp_obj_t t, int32_t *good_out) {
    net_t net = *np;
    int32_t good;
    int32_t loss = score_c(&net, t, &good);
    mp_store_attr(self, MP_QSTR_good, MP_OBJ_NEW_SMALL_INT(good));
    *good_out = good;
    size_t L = net.L;
    int32_t alpha = net.P[P_ALPHA];
    if (net.P[P_LOSS] == MSE) {
        size_t n = p_size(LP(&net, L - 1, P_N_OUT));
        int32_t kind = LP(&net, L - 1, P_ACT);
        int16_t *d = net_out16(&net, F_D, L - 1, n);
        const int16_t *z = net_in16(&net, F_Z, L - 1, kind == RELU || kind == LEAKY || kind == SWISH || kind == MISH ? n : 0);
        const int16_t *a = net_in16(&net, F_A, L, kind == SIGMOID || kind == TANH ? n : 0);
        act_bwd_c(kind, d, z, a, d, n, alpha);
    }
    for (size_t l = L - 1; l > 0; l--) {
        size_t n_in = p_size(LP(&net, l, P_N_IN));
        size_t n_out = p_size(LP(&net, l, P_N_OUT));
        size_t len_w;
        const int16_t *W = in16(net_list(net.f[F_W], l + 1)[l], &len_w);
        need2(len_w, n_out, n_in);
        const int16_t *d = net_in16(&net, F_D, l, n_in > 0 ? n_out : 0);
        int16_t *e = net_out16(&net, F_D, l - 1, n_in);
        int32_t k = p_guard(LP(&net, l, P_K_B), n_in > 0 && n_out > 0);
        int blocks = !overlaps(e, n_in, d, n_out) && !overlaps(e, n_in, W, n_in * n_out);
        matvec_t_c(W, d, n_in, n_out, k, p_clamp(LP(&net, l, P_S_B), -16, 32), e, blocks);
        int32_t kind = LP(&net, l - 1, P_ACT);
        const int16_t *z = net_in16(&net, F_Z, l - 1, kind == RELU || kind == LEAKY || kind == SWISH || kind == MISH ? n_in : 0);
        const int16_t *a = net_in16(&net, F_A, l, kind == SIGMOID || kind == TANH ? n_in : 0);
        act_bwd_c(kind, e, z, a, e, n_in, alpha);
    }
    int32_t kg_in = net.P[P_KG];
    for (size_t l = 0; l < L; l++) {
        size_t n_in = p_size(LP(&net, l, P_N_IN));
        size_t n_out = p_size(LP(&net, l, P_N_OUT));
        const int16_t *d = net_in16(&net, F_D, l, n_out);
        size_t rows = rows_used(d, n_out);
        int32_t kg = p_guard(kg_in, rows > 0);
        if (rows > 0) {
            size_t len_g;
            int32_t *G = out32(net_list(net.f[F_GW], l + 1)[l], &len_g);
            need2(len_g, rows, n_in);
            int32_t *GB = net_out32(&net, F_GB, l, rows);
            const int16_t *x = net_in16(&net, F_A, l, n_in);
            outer_acc_c(G, GB, d, x, n_in, rows, LP(&net, l, P_ONE), kg);
        }
    }
    return loss;
}

static mp_obj_t backward_net(mp_obj_t self, mp_obj_t t) {
    // backward_net(net, t) -> loss: Net.backward(t) from the score to the gradient sums (the
    // caller keeps the counters and the update of a full sum)
    net_t net;
    net_get(self, &net);
    int32_t good;
    return mp_obj_new_int(backward_c(self, &net, t, &good));
}
static MP_DEFINE_CONST_FUN_OBJ_2(backward_net_obj, backward_net);

static int32_t attr_i32(mp_obj_t self, qstr name) {
    return arg_i32(mp_load_attr(self, name));
}

// Net.update's arithmetic for count >= 1 samples (count stays as it is)
static void update_net_c(mp_obj_t self, net_t *np, int32_t count) {
    net_t net = *np;
    int32_t lr_m = attr_i32(self, MP_QSTR_lr_m);
    if (count < 1 || lr_m < 0 || lr_m > 255) {
        mp_raise_ValueError(MP_ERROR_TEXT(NATMOD ": update_net needs count >= 1"));
    }
    int32_t q = floordiv(lr_m * (1 << 22), count);
    int32_t t = 0;
    while ((q >> t) >= 256) { // mean_lr_shift
        t++;
    }
    int32_t m = rshift_round(q, t);
    int32_t e = attr_i32(self, MP_QSTR_lr_e) + 22 - t;
    int32_t mu = attr_i32(self, MP_QSTR_mu);
    int32_t c_m = attr_i32(self, MP_QSTR_c_m);
    int32_t c_s = p_clamp(attr_i32(self, MP_QSTR_c_s), 0, 32);
    int32_t mode = attr_i32(self, MP_QSTR_mode) != 0;
    size_t len_rng;
    int32_t *rng = out32(mp_load_attr(self, MP_QSTR_rng), &len_rng);
    need(len_rng, 1);
    int32_t s = rng[0];
    for (size_t l = 0; l < net.L; l++) {
        size_t n_out = p_size(LP(&net, l, P_N_OUT));
        size_t n_in = p_size(LP(&net, l, P_N_IN));
        int32_t u_in = e + LP(&net, l, P_U);
        for (int bias = 0; bias < 2; bias++) {
            // k.update(W[l], GW[l], VW[l], n_in * n_out, ...), then the same for B, GB, VB
            size_t n = bias ? n_out : n_in * n_out;
            int32_t u = p_guard(u_in, n > 0);
            size_t len_w, len_g, len_v;
            int16_t *W = out16(net_list(net.f[bias ? F_B : F_W], l + 1)[l], &len_w);
            int32_t *G = out32(net_list(net.f[bias ? F_GB : F_GW], l + 1)[l], &len_g);
            int32_t *V = NULL;
            need(len_w, n);
            need(len_g, n);
            if (mu && n > 0) {
                V = out32(net_list(net.f[bias ? F_VB : F_VW], l + 1)[l], &len_v);
                need(len_v, n);
            }
            s = update_c(W, G, V, n, m, u, mu, c_m, c_s, mode, s);
            rng[0] = s;
        }
    }
}

static mp_obj_t update_net(mp_obj_t self) {
    // update_net(net): Net.update() for count > 0 (the caller tests it and clears count)
    net_t net;
    net_get(self, &net);
    update_net_c(self, &net, attr_i32(self, MP_QSTR_count));
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(update_net_obj, update_net);

static mp_int_t attr_int(mp_obj_t self, qstr name) {
    return arg_int(mp_load_attr(self, name));
}

static void attr_store(mp_obj_t self, qstr name, mp_int_t v) {
    mp_store_attr(self, name, mp_obj_new_int(v));
}

// Net.update() with its test of count and its clearing of count
static void update_pending(mp_obj_t self, net_t *net) {
    mp_obj_t count = mp_load_attr(self, MP_QSTR_count);
    if (arg_int(count) == 0) {
        return;
    }
    update_net_c(self, net, arg_i32(count));
    attr_store(self, MP_QSTR_count, 0);
}

static mp_obj_t learn_net(mp_obj_t self, mp_obj_t x, mp_obj_t t) {
    // learn_net(net, x, t) -> loss: Net.learn(x, t), the whole sample in one call: forward,
    // Net.backward with its counters (and the update of a full sum first), the update at the
    // end of a batch. The statements of net.py in their order, on the same attributes.
    net_t net;
    net_get(self, &net);
    forward_c(&net, x);
    // backward
    if (attr_int(self, MP_QSTR_count) >= attr_int(self, MP_QSTR_batch_max)) {
        update_pending(self, &net);
    }
    int32_t good;
    int32_t loss = backward_c(self, &net, t, &good);
    mp_int_t count = attr_int(self, MP_QSTR_count) + 1;
    attr_store(self, MP_QSTR_count, count);
    attr_store(self, MP_QSTR_grad_count, count);
    // counters saturate instead of leaving the small-int range
    mp_int_t seen = attr_int(self, MP_QSTR_seen);
    if (seen < SMALL_MAX) {
        attr_store(self, MP_QSTR_seen, seen + 1);
        attr_store(self, MP_QSTR_correct, attr_int(self, MP_QSTR_correct) + good);
    }
    mp_int_t sum = attr_int(self, MP_QSTR_loss_sum);
    attr_store(self, MP_QSTR_loss_sum, loss < SMALL_MAX - sum ? sum + loss : SMALL_MAX);
    // learn: update after `batch` samples
    if (count >= attr_int(self, MP_QSTR_batch)) {
        update_pending(self, &net);
    }
    return mp_obj_new_int(loss);
}
static MP_DEFINE_CONST_FUN_OBJ_3(learn_net_obj, learn_net);

mp_obj_t mpy_init(mp_obj_fun_bc_t *self, size_t n_args, size_t n_kw, mp_obj_t *args) {
    MP_DYNRUNTIME_INIT_ENTRY
    mp_store_global(MP_QSTR_matvec, MP_OBJ_FROM_PTR(&matvec_obj));
    mp_store_global(MP_QSTR_matvec_t, MP_OBJ_FROM_PTR(&matvec_t_obj));
    mp_store_global(MP_QSTR_outer_acc, MP_OBJ_FROM_PTR(&outer_acc_obj));
    mp_store_global(MP_QSTR_exp_neg, MP_OBJ_FROM_PTR(&exp_neg_obj));
    mp_store_global(MP_QSTR_softmax, MP_OBJ_FROM_PTR(&softmax_obj));
    mp_store_global(MP_QSTR_act_fwd, MP_OBJ_FROM_PTR(&act_fwd_obj));
    mp_store_global(MP_QSTR_act_bwd, MP_OBJ_FROM_PTR(&act_bwd_obj));
    mp_store_global(MP_QSTR_update, MP_OBJ_FROM_PTR(&update_obj));
    mp_store_global(MP_QSTR_forward_net, MP_OBJ_FROM_PTR(&forward_net_obj));
    mp_store_global(MP_QSTR_score_net, MP_OBJ_FROM_PTR(&score_net_obj));
    mp_store_global(MP_QSTR_backward_net, MP_OBJ_FROM_PTR(&backward_net_obj));
    mp_store_global(MP_QSTR_update_net, MP_OBJ_FROM_PTR(&update_net_obj));
    mp_store_global(MP_QSTR_learn_net, MP_OBJ_FROM_PTR(&learn_net_obj));
    MP_DYNRUNTIME_INIT_EXIT
}
