// edgebp/sdlm.py's kernels as a MicroPython native module of its own (sdlm_native.mpy):
// imported only by nets that train with SDLM, so that the kernels every net loads
// (kernels_native.mpy) carry none of its code. Conventions as in kernels.c.
#include "py/dynruntime.h"

#define NATMOD "sdlm_native"
#include "native.h"

// edgebp/sdlm.py's kernels: the curvature sent back through W squared (sq_t), averaged into
// the running estimate (curv_acc), and the step divided by it (sdlm), each read and write in
// its order. See there for the units and for the bounds that keep every intermediate below
// 2**30: C, H >= 0 and |W| <= 2**15, so each product of sq_t and curv_acc is below 2**30;
// 2**k >= n_out keeps the sum of sq_t there; fh <= 14 and mu_q + H < 2**16 keep the
// remainder of sdlm's division times 2**fh below 2**30.

NOINLINE static void sq_t_c(const int16_t *W, const int16_t *C, size_t n_in, size_t n_out,
    int32_t k, int32_t s, int16_t *E) {
    for (size_t i = 0; i < n_in; i++) {
        int32_t acc = 0;
        const int16_t *p = W + i;
        for (size_t j = 0; j < n_out; j++, p += n_in) {
            int32_t w = *p < 0 ? -*p : *p;
            acc += (((w * C[j]) >> 15) * w) >> k;
        }
        E[i] = requant(acc, s);
    }
}

// h moved towards x by gam / 2**14, rounded half up
ALWAYS_INLINE int32_t curv_mix(int32_t h, int32_t x, int32_t gam) {
    return h + rshift_round_1_31((x - h) * gam, 14);
}

NOINLINE static void curv_acc_c(int16_t *HW, int16_t *HB, const int16_t *C, const int16_t *a,
    size_t n_in, size_t n_out, int32_t s_w, int32_t s_b, int32_t gam) {
    for (size_t j = 0; j < n_out; j++, HW += n_in) {
        int32_t c = C[j];
        HB[j] = curv_mix(HB[j], requant(c, s_b), gam);
        for (size_t i = 0; i < n_in; i++) {
            int32_t v = a[i] < 0 ? -a[i] : a[i];
            HW[i] = curv_mix(HW[i], requant(((c * v) >> 15) * v, s_w), gam);
        }
    }
}

NOINLINE static int32_t sdlm_c(int16_t *W, int32_t *G, const int16_t *H, size_t n, int32_t m,
    int32_t u, int32_t mu_q, int32_t fh, int32_t c_m, int32_t c_s, int32_t mode, int32_t s) {
    int32_t lim = V_MAX >> fh;
    for (size_t p = 0; p < n; p++) {
        int32_t g = G[p];
        G[p] = 0;
        int32_t w = W[p];
        int32_t v = ((g >> 8) * m) >> u;
        // |v| * 2**fh // den in two parts, saturated to V_MAX, with the sign of v
        int32_t a = v >= 0 ? v : -v, den = mu_q + H[p], q = floordiv(a, den);
        if (q > lim) {
            a = V_MAX;
        } else {
            a = (q << fh) + floordiv((a - q * den) << fh, den);
            a = a > V_MAX ? V_MAX : a;
        }
        v = v >= 0 ? a : -a;
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

static mp_obj_t sq_t(size_t n_args, const mp_obj_t *args) {
    // sq_t(W, C, n_in, n_out, k, s, E)
    size_t len_w, len_c, len_e;
    const int16_t *W = in16(args[0], &len_w);
    const int16_t *C = in16(args[1], &len_c);
    size_t n_in = arg_size(args[2]);
    size_t n_out = arg_size(args[3]);
    int32_t k = arg_in(args[4], 0, 30);
    int32_t s = arg_requant_shift(args[5]);
    int16_t *E = out16(args[6], &len_e);
    if (n_out > (size_t)1 << k) {
        mp_raise_ValueError(MP_ERROR_TEXT(NATMOD ": sq_t needs 2**k >= n_out"));
    }
    need(len_c, n_out);
    need(len_e, n_in);
    need2(len_w, n_out, n_in);
    sq_t_c(W, C, n_in, n_out, k, s, E);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(sq_t_obj, 7, 7, sq_t);

static mp_obj_t curv_acc(size_t n_args, const mp_obj_t *args) {
    // curv_acc(HW, HB, C, a, n_in, n_out, s_w, s_b, gam)
    size_t len_hw, len_hb, len_c, len_a;
    int16_t *HW = out16(args[0], &len_hw);
    int16_t *HB = out16(args[1], &len_hb);
    const int16_t *C = in16(args[2], &len_c);
    const int16_t *a = in16(args[3], &len_a);
    size_t n_in = arg_size(args[4]);
    size_t n_out = arg_size(args[5]);
    int32_t s_w = arg_requant_shift(args[6]);
    int32_t s_b = arg_requant_shift(args[7]);
    int32_t gam = arg_in(args[8], 1, 16384);
    need(len_hb, n_out);
    need(len_c, n_out);
    need(len_a, n_in);
    need2(len_hw, n_out, n_in);
    curv_acc_c(HW, HB, C, a, n_in, n_out, s_w, s_b, gam);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(curv_acc_obj, 9, 9, curv_acc);

static mp_obj_t sdlm(size_t n_args, const mp_obj_t *args) {
    // sdlm(W, G, H, n, m, u, mu_q, fh, c_m, c_s, mode, rng)
    size_t len_w, len_g, len_h, len_rng;
    int16_t *W = out16(args[0], &len_w);
    int32_t *G = out32(args[1], &len_g);
    const int16_t *H = in16(args[2], &len_h);
    size_t n = arg_size(args[3]);
    int32_t m = arg_in(args[4], 0, 256);
    int32_t u = arg_in(args[5], 0, 30);
    int32_t mu_q = arg_in(args[6], 1, 32768);
    int32_t fh = arg_in(args[7], 0, 14);
    int32_t c_m = arg_in(args[8], 0, 255);
    int32_t c_s = arg_in(args[9], 0, 30);
    int32_t mode = arg_int(args[10]) != 0;
    int32_t *rng = out32(args[11], &len_rng);
    need(len_rng, 1);
    need(len_w, n);
    need(len_g, n);
    need(len_h, n);
    for (size_t p = 0; p < n; p++) { // a divisor mu_q + H below 1: refused before any write
        if (H[p] < 0) {
            mp_raise_ValueError(MP_ERROR_TEXT(NATMOD ": sdlm curvature below 0"));
        }
    }
    rng[0] = sdlm_c(W, G, H, n, m, u, mu_q, fh, c_m, c_s, mode, rng[0]);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(sdlm_obj, 12, 12, sdlm);

mp_obj_t mpy_init(mp_obj_fun_bc_t *self, size_t n_args, size_t n_kw, mp_obj_t *args) {
    MP_DYNRUNTIME_INIT_ENTRY
    mp_store_global(MP_QSTR_sq_t, MP_OBJ_FROM_PTR(&sq_t_obj));
    mp_store_global(MP_QSTR_curv_acc, MP_OBJ_FROM_PTR(&curv_acc_obj));
    mp_store_global(MP_QSTR_sdlm, MP_OBJ_FROM_PTR(&sdlm_obj));
    MP_DYNRUNTIME_INIT_EXIT
}
