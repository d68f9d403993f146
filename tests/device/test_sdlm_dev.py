# SDLM's fast kernels (edgebp/sdlm_viper.py, sdlm_native.mpy's sq_t, curv_acc, sdlm) and the
# definition (edgebp.sdlm): the same cases, drawn by xorshift30 on every runtime, run through
# the kernel set sdlm_under.KERNELS names ("python", "viper" or "native"), each call with the
# heap locked; every buffer after the call is printed, one SDLM line a case. The host runs this
# module under CPython with the pure kernels and compares the lines (tests/coredrive.py).
import gc
from array import array

import sdlm_under

from devtest import ALLOC_CHECKED, Rand, no_alloc, skip
from edgebp import sdlm as pure

Q = 32767
G_MAX = (1 << 30) - 1
# requant's shifts: saturating left shifts (down to -16 and beyond), none, right shifts
SHIFTS = (-20, -16, -15, -14, -8, -1, 0, 1, 2, 8, 15, 16, 29, 31, 40)


def kernels():
    name = sdlm_under.KERNELS
    if name == "viper":
        from edgebp import sdlm_viper

        return sdlm_viper
    if name == "native":
        from edgebp import sdlm_native

        return sdlm_native
    return pure


def line(name, B):
    out = []
    for b in B:
        out.append(" ".join([str(v) for v in b]))
    return "SDLM " + name + "|" + "|".join(out)


def call_sq_t(K, B, P):
    K.sq_t(B[0], B[1], P[0], P[1], P[2], P[3], B[2])


def call_curv_acc(K, B, P):
    K.curv_acc(B[0], B[1], B[2], B[3], P[0], P[1], P[2], P[3], P[4])


def call_sdlm(K, B, P):
    K.sdlm(B[0], B[1], B[2], P[0], P[1], P[2], P[3], P[4], P[5], P[6], P[7], B[3])


def run(fn, K, B, P, name):
    if ALLOC_CHECKED:
        no_alloc(fn, K, B, P)
    else:
        fn(K, B, P)
    print(line(name, B))


def k_for(n_out):
    k = 0
    while (1 << k) < n_out:
        k += 1
    return k


def sq_t_case(K, r, name, n_in, n_out, k, s, w_edge=None, c_edge=None):
    W = array("h", r.values(n_in * n_out, -Q, Q, (-Q, Q, 0, 1, -1)))
    C = array("h", r.values(n_out, 0, Q, (0, Q, 1)))
    if w_edge is not None:
        for i in range(len(W)):
            W[i] = w_edge
    if c_edge is not None:
        for i in range(len(C)):
            C[i] = c_edge
    E = array("h", r.values(n_in, -Q, Q))
    run(call_sq_t, K, [W, C, E], array("i", [n_in, n_out, k, s]), name)


def test_sq_t_cases():
    K = kernels()
    r = Rand(71)
    # the largest sums: |W| = 32767 and C = 32767 everywhere, n_out = 2**k and beyond it
    for n_out in (1, 2, 16, 17):
        for w in (Q, -Q, 0):
            for s in (-1, 0, 1, 14):
                sq_t_case(K, r, "sq_t-max-%d-%d-%d" % (n_out, w, s), 3, n_out, k_for(n_out),
                          s, w, Q)
    for s in SHIFTS:
        for c in (None, 0, Q):
            n_out = 1 + r.below(12)
            sq_t_case(K, r, "sq_t-s%d-c%r" % (s, c), r.below(12), n_out,
                      k_for(n_out) + r.below(3), s, None, c)
    for i in range(40):
        n_out = r.below(20)
        sq_t_case(K, r, "sq_t-random%d" % i, r.below(20), n_out, k_for(n_out) + r.below(4),
                  r.int_in(-18, 33))
    gc.collect()


def curv_acc_case(K, r, name, n_in, n_out, s_w, s_b, gam, a_edge=None, c_edge=None):
    HW = array("h", r.values(n_in * n_out, 0, Q, (0, Q)))
    HB = array("h", r.values(n_out, 0, Q, (0, Q)))
    C = array("h", r.values(n_out, 0, Q, (0, Q, 1)))
    a = array("h", r.values(n_in, -Q, Q, (-Q, Q, 0, 1, -1)))
    if a_edge is not None:
        for i in range(n_in):
            a[i] = a_edge
    if c_edge is not None:
        for i in range(n_out):
            C[i] = c_edge
    run(call_curv_acc, K, [HW, HB, C, a], array("i", [n_in, n_out, s_w, s_b, gam]), name)


def test_curv_acc_cases():
    K = kernels()
    r = Rand(72)
    # a = +-32767 and C at 0 and 32767, every kind of shift, gam at its ends
    for a_edge in (Q, -Q, 0, None):
        for c_edge in (Q, 0, None):
            for gam in (1, 8192, 16384):
                curv_acc_case(K, r, "curv_acc-a%r-c%r-g%d" % (a_edge, c_edge, gam), 5, 4,
                              SHIFTS[r.below(len(SHIFTS))], SHIFTS[r.below(len(SHIFTS))], gam,
                              a_edge, c_edge)
    for s_w in SHIFTS:
        for s_b in (-16, -3, 0, 5, 31):
            curv_acc_case(K, r, "curv_acc-s%d,%d" % (s_w, s_b), r.below(8), 1 + r.below(6),
                          s_w, s_b, r.int_in(1, 16384))
    for i in range(40):
        curv_acc_case(K, r, "curv_acc-random%d" % i, r.below(16), r.below(12),
                      r.int_in(-18, 33), r.int_in(-18, 33), r.int_in(1, 16384))
    gc.collect()


def sdlm_case(K, r, name, n, m, u, mu_q, fh, c_m, c_s, mode, h_edge=None):
    W = array("h", r.values(n, -Q, Q, (-Q, Q, 0, 1, -1)))
    G = array("i", r.values(n, -G_MAX, G_MAX, (-G_MAX, G_MAX, 0, 1, -1, 255, -256, 256)))
    h_max = 65535 - mu_q if mu_q > 32768 else Q  # mu_q + H < 2**16
    H = array("h", r.values(n, 0, h_max, (0, 1, h_max)))
    if h_edge is not None:
        for i in range(n):
            H[i] = h_edge
    rng = array("i", [r.int_in(1, G_MAX)])
    run(call_sdlm, K, [W, G, H, rng], array("i", [n, m, u, mu_q, fh, c_m, c_s, mode]), name)


def test_sdlm_cases():
    K = kernels()
    r = Rand(73)
    # den = mu_q + H at 1 and at 2**16 - 1, fh at its ends, the step's scale at its ends
    for mu_q, h_edge in ((1, 0), (1, None), (32768, Q), (32768, None), (2, Q), (32767, 0)):
        for fh in (0, 1, 7, 13, 14):
            for m, u in ((256, 0), (128, 8), (1, 30), (0, 0), (256, 12)):
                mode = r.below(2)
                sdlm_case(K, r, "sdlm-mu%d-h%r-fh%d-m%d-u%d" % (mu_q, h_edge, fh, m, u), 12,
                          m, u, mu_q, fh, 0, 0, mode, h_edge)
    # decay and rounding
    for c_m, c_s in ((0, 0), (255, 0), (255, 1), (100, 8), (255, 30), (1, 30), (164, 16)):
        for mode in (0, 1):
            sdlm_case(K, r, "sdlm-decay%d,%d-mode%d" % (c_m, c_s, mode), 16, r.int_in(0, 256),
                      r.below(31), r.int_in(1, 32768), r.below(15), c_m, c_s, mode)
    for i in range(40):
        sdlm_case(K, r, "sdlm-random%d" % i, r.below(40), r.int_in(0, 256), r.below(31),
                  r.int_in(1, 32768), r.below(15), r.below(256) if r.below(2) else 0,
                  r.below(31), r.below(2))
    gc.collect()


def refuses(fn, a, i, value, err, bufs, before):
    got = None
    try:
        fn(a)
    except Exception as e:  # noqa: BLE001 - the class is the result
        got = type(e)
    if got is not err:
        raise AssertionError("argument %d = %r: %r, not %r" % (i, value, got, err))
    for b, v in zip(bufs, before):
        if list(b) != v:
            raise AssertionError("argument %d = %r changed a buffer" % (i, value))


def test_native_sdlm_refuses_bad_arguments():
    # sizes, buffer types and the scalars outside the ranges edgebp/sdlm.py admits: an error
    # before anything is written
    if sdlm_under.KERNELS != "native":
        skip("the native kernels' argument checks")
    K = kernels()
    h = array("h", [5] * 8)
    h2 = array("h", [6] * 8)
    h3 = array("h", [7] * 8)
    g = array("i", [9] * 8)
    rng = array("i", [12345])
    bufs = (h, h2, h3, g, rng)
    before = [list(b) for b in bufs]
    short_h = array("h", [5] * 7)
    wrong = array("i", [5] * 8)

    def sq_t(a):
        K.sq_t(a[0], a[1], a[2], a[3], a[4], a[5], a[6])

    # W 4x2, C 4 and E 2 (lengths 8 given): good is accepted into copies
    good = [h, h2, 2, 4, 2, 3, h3]
    cp = [array("h", h), array("h", h2), 2, 4, 2, 3, array("h", h3)]
    sq_t(cp)
    bad = ((0, short_h, IndexError), (1, array("h", [1] * 3), IndexError),
           (6, array("h", [1]), IndexError), (0, wrong, TypeError), (6, wrong, TypeError),
           (4, 1, ValueError), (4, -1, ValueError), (4, 31, ValueError),
           (3, 9, IndexError), (4, 1 << 40, ValueError))
    for i, value, err in bad:
        a = list(good)
        a[i] = value
        if i == 3:
            a[4] = 4  # 2**k >= n_out, and W too short
        refuses(sq_t, a, i, value, err, bufs, before)

    def curv_acc(a):
        K.curv_acc(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8])

    good = [h, h2, h3, h3, 2, 4, 3, -2, 100]
    cp = [array("h", h), array("h", h2), h3, h3, 2, 4, 3, -2, 100]
    curv_acc(cp)
    bad = ((0, short_h, IndexError), (1, array("h", [1] * 3), IndexError),
           (2, array("h", [1] * 3), IndexError), (3, array("h", [1]), IndexError),
           (0, wrong, TypeError), (1, wrong, TypeError), (8, 0, ValueError),
           (8, 16385, ValueError), (8, 1 << 40, ValueError))
    for i, value, err in bad:
        a = list(good)
        a[i] = value
        refuses(curv_acc, a, i, value, err, bufs, before)

    def sdlm(a):
        K.sdlm(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11])

    good = [h, g, h2, 8, 128, 9, 100, 7, 0, 0, 1, rng]
    cp = [array("h", h), array("i", g), h2, 8, 128, 9, 100, 7, 0, 0, 1, array("i", rng)]
    sdlm(cp)
    neg = array("h", [6] * 8)
    neg[5] = -1
    bad = ((0, short_h, IndexError), (1, array("i", [1] * 7), IndexError),
           (2, short_h, IndexError), (11, array("i"), IndexError), (0, wrong, TypeError),
           (1, h3, TypeError), (2, wrong, TypeError), (4, -1, ValueError),
           (4, 257, ValueError), (5, -1, ValueError), (5, 31, ValueError),
           (6, 0, ValueError), (6, 32769, ValueError), (7, -1, ValueError),
           (7, 15, ValueError), (8, -1, ValueError), (8, 256, ValueError),
           (9, -1, ValueError), (9, 31, ValueError), (2, neg, ValueError),
           (4, 1 << 40, ValueError))
    for i, value, err in bad:
        a = list(good)
        a[i] = value
        refuses(sdlm, a, i, value, err, bufs, before)
