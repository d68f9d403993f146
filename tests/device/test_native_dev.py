# The native-module kernels (edgebp/native/kernels.c, imported as edgebp.kernels_native) against
# the pure-Python kernels, which define the arithmetic: every output buffer and the generator
# state must be bit-identical, on random inputs, at the edges of the ranges the core admits and
# beyond them where kernels.c claims exactness; each call allocates nothing. Needs the natmod
# for this runtime's architecture as edgebp/kernels_native.mpy; skips without it.
import gc
from array import array

from devtest import ALLOC_CHECKED, Rand, no_alloc, skip
from edgebp import fixed, kernels as pk
from edgebp.fixed import ceil_log2, seed30
from edgebp.net import Net

try:
    from edgebp import kernels_native as nk

    _why = None
except (ImportError, ValueError) as e:  # missing, or built for another architecture
    nk = None
    _why = "%s: %s" % (type(e).__name__, e)

Q = 32767
G_LO = -(1 << 30)
G_HI = (1 << 30) - 1
I32_LO = -(1 << 31)
I32_HI = (1 << 31) - 1
# requant shifts: far below -15 (everything non-zero saturates) to far above 31 (C would be
# undefined from 32 on without the clamp)
SHIFTS = (-70, -40, -20, -17, -16, -15, -14, -7, -1, 0, 1, 2, 9, 15, 29, 30, 31, 32, 45, 64, 70)
# guard shifts k: every count 0..13 the engine makes, and counts C must clamp
GUARDS = tuple(range(14)) + (20, 30, 31, 32, 33, 45, 64)


def need_native():
    if nk is None:
        skip("edgebp.kernels_native not importable: " + _why)


def same(what, a, b):
    if len(a) != len(b):
        raise AssertionError("%s: lengths %d and %d" % (what, len(a), len(b)))
    for i in range(len(a)):
        if a[i] != b[i]:
            raise AssertionError("%s: index %d: pure %d, native %d" % (what, i, a[i], b[i]))


def pair(typ, values):
    return array(typ, values), array(typ, values)


def call(fn, a):
    # fn(*a) without a star-call, which allocates on some ports
    n = len(a)
    if n == 1:
        return fn(a[0])
    if n == 3:
        return fn(a[0], a[1], a[2])
    if n == 4:
        return fn(a[0], a[1], a[2], a[3])
    if n == 5:
        return fn(a[0], a[1], a[2], a[3], a[4])
    if n == 7:
        return fn(a[0], a[1], a[2], a[3], a[4], a[5], a[6])
    if n == 8:
        return fn(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7])
    if n == 9:
        return fn(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8])
    if n == 11:
        return fn(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10])
    raise TypeError("call: %d arguments" % n)


def locked(fn, args):
    # a second native call with the heap locked (the first ran unlocked, with real errors)
    if ALLOC_CHECKED:
        no_alloc(call, fn, args)


# -- kernels one by one --


def check_matvec(r, n_in, n_out, one, k, s, extreme, hi=Q, lock=False):
    # hi: the magnitude of random values; small ones give sums near zero, where a
    # negative requant shift is most delicate. extreme: row 0 sums to the largest magnitude.
    edges = (-Q, Q, -32768) if extreme else (-hi, hi, 0, 1, -1)
    W = array("h", r.values(n_in * n_out, -hi, hi, edges))
    B = array("h", r.values(n_out, -hi, hi, edges))
    x = array("h", r.values(n_in, -hi, hi, edges))
    if extreme and n_out:
        for i in range(n_in):
            W[i] = Q if x[i] > 0 else -Q
        B[0] = Q
    z1, z2 = pair("h", [7] * (n_out + 1))  # one more: nothing is written past n_out
    pk.matvec(W, B, x, n_in, n_out, one, k, s, z1)
    args = (W, B, x, n_in, n_out, one, k, s, z2)
    call(nk.matvec, args)
    same("matvec n_in=%d n_out=%d one=%d k=%d s=%d" % (n_in, n_out, one, k, s), z1, z2)
    if lock:
        locked(nk.matvec, args)
        same("matvec locked", z1, z2)


def test_matvec():
    need_native()
    r = Rand(1)
    for s in SHIFTS:
        for one in (1, 1 << 7, 1 << 14):
            check_matvec(r, 7, 5, one, 3, s, False, Q, one == 1)
            check_matvec(r, 3, 2, one, 2, s, True)
            check_matvec(r, 4, 9, one, 3, s, False, 3)
    for s in (-3, 0, 6, 12, 20):
        check_matvec(r, 500, 3, 1 << 14, 9, s, False, Q, s == 0)
        check_matvec(r, 500, 2, 1 << 14, 9, s, True)
    for n_in in range(10):  # every remainder of the unrolled loops, and empty rows
        for n_out in (0, 1, 3):
            check_matvec(r, n_in, n_out, 1 << 14, ceil_log2(n_in + 1), 5, True)


def test_matvec_every_guard():
    need_native()
    r = Rand(11)
    for k in GUARDS:
        # the widest row whose sum stays in range: 2**k >= n_in + 1
        n_in = min((1 << k) - 1, 600)
        for s in (-9, 0, 1, 7, 17):
            check_matvec(r, n_in, 2, 1 << 14, k, s, True)
            check_matvec(r, max(n_in, 1), 3, 1 << 12, k, s, False, 200)
        if n_in >= 9:
            check_matvec(r, 9, 2, 1 << 14, k, 0, False, Q)
    # the largest row the engine makes (MAX_WIDTH inputs) at its guard
    check_matvec(r, 4096, 1, 1 << 14, 13, 4, True)


def check_matvec_t(r, n_in, n_out, k, s, extreme, hi=Q, lock=False):
    edges = (-Q, Q, -32768) if extreme else (-hi, hi, 0, 1, -1)
    W = array("h", r.values(n_in * n_out, -hi, hi, edges))
    d = array("h", r.values(n_out, -hi, hi, edges))
    e1, e2 = pair("h", [7] * (n_in + 1))
    pk.matvec_t(W, d, n_in, n_out, k, s, e1)
    args = (W, d, n_in, n_out, k, s, e2)
    call(nk.matvec_t, args)
    same("matvec_t n_in=%d n_out=%d k=%d s=%d" % (n_in, n_out, k, s), e1, e2)
    if lock:
        locked(nk.matvec_t, args)
        same("matvec_t locked", e1, e2)


def test_matvec_t():
    need_native()
    r = Rand(2)
    for s in SHIFTS:
        check_matvec_t(r, 6, 5, 3, s, False, Q, s == 1)
        check_matvec_t(r, 3, 4, 2, s, True)
        check_matvec_t(r, 4, 1, 0, s, False)
        check_matvec_t(r, 9, 4, 2, s, False, 3)
    for s in (-3, 0, 6, 12, 20):
        check_matvec_t(r, 3, 500, 9, s, False)
        check_matvec_t(r, 2, 500, 9, s, True)
    for k in GUARDS:
        n_out = min(1 << k, 300)
        check_matvec_t(r, 3, n_out, k, 2, True)
        check_matvec_t(r, 6, n_out, k, 2, True)  # four columns at a time, then two
    for n_in in (0, 1, 2, 5):
        for n_out in (0, 1, 2, 7):
            check_matvec_t(r, n_in, n_out, ceil_log2(max(n_out, 1)), 1, True)


def check_outer_acc(r, n_in, n_out, one, kg, lock=False):
    # start anywhere that one more sample cannot leave [-2**30, 2**30)
    lim = (1 << 30) - ((32768 * 32768) >> kg) - 1
    G1, G2 = pair("i", r.values(n_in * n_out + 1, -lim, lim, (-lim, lim, 0)))
    GB1, GB2 = pair("i", r.values(n_out + 1, -lim, lim, (-lim, lim, 0)))
    d = array("h", r.values(n_out, -Q, Q, (-Q, Q, -32768, 0, 0, 0)))
    x = array("h", r.values(n_in, -Q, Q, (-Q, Q, -32768, 0)))
    pk.outer_acc(G1, GB1, d, x, n_in, n_out, one, kg)
    args = (G2, GB2, d, x, n_in, n_out, one, kg)
    call(nk.outer_acc, args)
    what = "outer_acc n_in=%d n_out=%d kg=%d one=%d" % (n_in, n_out, kg, one)
    same(what + " G", G1, G2)
    same(what + " GB", GB1, GB2)
    if lock:
        locked(nk.outer_acc, args)  # a second sample into the same sums
        pk.outer_acc(G1, GB1, d, x, n_in, n_out, one, kg)
        same(what + " locked G", G1, G2)
        same(what + " locked GB", GB1, GB2)


def test_outer_acc():
    need_native()
    r = Rand(3)
    for n_in, n_out, kg in ((5, 4, 0), (7, 3, 2), (500, 2, 1), (3, 3, 15), (0, 2, 1), (4, 0, 1)):
        for one in (1, 1 << 14):
            check_outer_acc(r, n_in, n_out, one, kg, kg == 2)
    for kg in GUARDS:
        for n_in in range(10):
            check_outer_acc(r, n_in, 3, 1 << 14, kg)
    # a full batch of extreme samples from zero: the sums reach the edge of the range, in rows
    # of 2 (the plain loop) and of 19 (two turns of the unrolled loop and a remainder)
    for kg, n_in in ((3, 2), (0, 19), (3, 19), (7, 19)):
        G1, G2 = pair("i", [0] * (2 * n_in))
        GB1, GB2 = pair("i", [0] * 2)
        for t in range(1 << kg):
            sign = Q if t & 1 else -Q
            d = array("h", [sign, -sign])
            x = array("h", [sign if i & 1 else Q for i in range(n_in)])
            pk.outer_acc(G1, GB1, d, x, n_in, 2, 1 << 14, kg)
            nk.outer_acc(G2, GB2, d, x, n_in, 2, 1 << 14, kg)
        same("outer_acc full batch G kg=%d" % kg, G1, G2)
        same("outer_acc full batch GB kg=%d" % kg, GB1, GB2)


Z_EDGES = (-Q, Q, -32768, 0, -1, 1, -32768 + 512, 32767 - 511, -4096, 4096, 511, 512, -512, 513)


def test_act_fwd():
    need_native()
    r = Rand(4)
    for kind in (0, 1, 2, 3, 4, 5, 6, 7, 8, -1):  # 8 and -1: not a kind, nothing is written
        # the last parameter: the leaky slope, or for softmax the net's logit_k
        for alpha in (0, 1, 2, 3, 17) if kind == fixed.SOFTMAX else (0, 41, 4096):
            for n in (1, 2, 10, 130):
                z = array("h", r.values(n, -Q, Q, Z_EDGES))
                a1, a2 = pair("h", [7] * (n + 1))
                pk.act_fwd(kind, z, a1, n, alpha)
                args = (kind, z, a2, n, alpha)
                call(nk.act_fwd, args)
                what = "act_fwd kind=%d alpha=%d n=%d" % (kind, alpha, n)
                same(what, a1, a2)
                if n == 10:
                    locked(nk.act_fwd, args)
                    same(what + " locked", a1, a2)
    # every table node and the points between them, both LUT ends included
    z = array("h", [v for v in range(-32768, 32768, 128)] + [Q, -Q, -32767 + 511])
    for kind in (fixed.SIGMOID, fixed.TANH):
        a1, a2 = pair("h", [0] * len(z))
        pk.act_fwd(kind, z, a1, len(z), 41)
        nk.act_fwd(kind, z, a2, len(z), 41)
        same("act_fwd nodes " + fixed.ACT_NAMES[kind], a1, a2)


def test_gated_every_z():
    # swish and mish over every int16 z, in chunks: the forward value, and the derivative
    # through e = Q, -32768 (the saturating products) and a spread of e, by turns
    need_native()
    r = Rand(14)
    n = 256  # small buffers: a 192 KiB board's heap stays in large pieces for the tests after
    z, e, a1, a2, d1, d2 = (array("h", range(n)) for _ in range(6))
    for kind in (fixed.SWISH, fixed.MISH):
        for lo in range(-32768, 32768, n):
            for i in range(n):
                z[i] = lo + i
            pk.act_fwd(kind, z, a1, n, 41)
            nk.act_fwd(kind, z, a2, n, 41)
            same("act_fwd %s z from %d" % (fixed.ACT_NAMES[kind], lo), a1, a2)
            for i in range(n):
                turn = (lo + i) % 3
                if turn == 2:
                    e[i] = r.value(-Q, Q, (-Q, Q, 0, 1, -1))
                else:
                    e[i] = Q if turn == 0 else -32768
            pk.act_bwd(kind, e, z, a1, d1, n, 41)
            nk.act_bwd(kind, e, z, a1, d2, n, 41)
            same("act_bwd %s z from %d" % (fixed.ACT_NAMES[kind], lo), d1, d2)
    args = (fixed.MISH, z, a2, n, 41)
    locked(nk.act_fwd, args)
    args = (fixed.SWISH, a1, z, a1, d2, n, 41)
    locked(nk.act_bwd, args)


def test_exp_neg():
    need_native()
    x = 0
    while x < 70000:
        if pk.exp_neg(x) != nk.exp_neg(x):
            raise AssertionError("exp_neg(%d): pure %d, native %d" % (x, pk.exp_neg(x),
                                                                       nk.exp_neg(x)))
        x += 1 if x < 5000 else 37
    for x in (42588, 42589, 42590, 65535, 1 << 17, (1 << 18) - 1, 1 << 18, 1 << 29):
        if pk.exp_neg(x) != nk.exp_neg(x):
            raise AssertionError("exp_neg(%d)" % x)


def test_softmax_edges():
    need_native()
    r = Rand(5)
    cases = [[0], [Q, -Q], [Q] * 10, [-Q] * 10, [Q] + [-Q] * 9, [0] * 300, [-32768, Q]]
    cases.append(r.values(300, -Q, Q, (-Q, Q)))
    cases.append(r.values(50, -400, 400))
    # 2**-ip for every shift ip, and the cut-off at ip = 15 (z 42589 below the maximum)
    cases.append([0] + [-(1 << i) for i in range(15)])
    cases.append([Q] + [Q - 42589 + d for d in range(-3, 4)])
    for k in range(fixed.LOGIT_K_MAX + 1):
        # the cut-offs in Q(12 - k): 42590 in Q12, and 65535 where the argument is clamped
        cases.append([Q] + [Q - (42589 >> k) + d for d in range(-3, 4)])
        cases.append([Q] + [max(Q - (65535 >> k) + d, -32768) for d in range(-3, 4)])
    # 0..3 is what a net takes; beyond, the kernel still shifts as Python does
    for k in list(range(fixed.LOGIT_K_MAX + 1)) + [16, 17, 40]:
        for vals in cases:
            n = len(vals)
            z = array("h", vals)
            a1, a2 = pair("h", [7] * (n + 1))
            pk.softmax(z, a1, n, k)
            nk.softmax(z, a2, n, k)
            same("softmax n=%d k=%d" % (n, k), a1, a2)
            a3, a4 = pair("h", [7] * (n + 1))
            pk.act_fwd(fixed.SOFTMAX, z, a3, n, k)
            nk.act_fwd(fixed.SOFTMAX, z, a4, n, k)
            same("act_fwd softmax n=%d k=%d" % (n, k), a1, a3)
            same("act_fwd softmax native n=%d k=%d" % (n, k), a1, a4)
            if n == 10 and k <= fixed.LOGIT_K_MAX:
                locked(nk.softmax, (z, a2, n, k))
                same("softmax locked", a1, a2)
    z = array("h", [0, 1])
    for f, args in ((pk.softmax, (z, array("h", [0, 0]), 2, -1)),
                    (nk.softmax, (z, array("h", [0, 0]), 2, -1))):
        try:
            f(*args)
        except ValueError:
            continue
        raise AssertionError("softmax with k = -1 did not raise ValueError")


def act_bwd_case(r, kind, n, alpha, in_place, lock=False):
    z = array("h", r.values(n, -Q, Q, Z_EDGES))
    if kind == fixed.SIGMOID:
        a = array("h", r.values(n, 0, 16384, (0, 16384, 8192)))
    elif kind == fixed.TANH:
        a = array("h", r.values(n, -16384, 16384, (-16384, 16384, 0)))
    else:
        a = array("h", r.values(n, -Q, Q, Z_EDGES))
    e = r.values(n, -Q, Q, (-Q, Q, -32768, 0, 1, -1)) + [5]
    e1, e2 = pair("h", e)
    if in_place:
        d1, d2 = e1, e2
    else:
        d1, d2 = pair("h", [7] * (n + 1))
    pk.act_bwd(kind, e1, z, a, d1, n, alpha)
    args = (kind, e2, z, a, d2, n, alpha)
    call(nk.act_bwd, args)
    what = "act_bwd kind=%d alpha=%d n=%d in_place=%d" % (kind, alpha, n, in_place)
    same(what, d1, d2)
    same(what + " e", e1, e2)
    if lock and not in_place:
        locked(nk.act_bwd, args)
        same(what + " locked", d1, d2)


def test_act_bwd():
    need_native()
    r = Rand(6)
    for kind in (0, 1, 2, 3, 4, 5, 6, 7, 8, -1):
        for alpha in (0, 41, 4096):
            for n in (1, 9, 200):
                act_bwd_case(r, kind, n, alpha, False, n == 9)
                act_bwd_case(r, kind, n, alpha, True)


def check_update(r, n, m, u, mu, c_m, c_s, mode, momentum, g_lo=G_LO, g_hi=G_HI, lock=False):
    W1, W2 = r.pair("h", n + 1, -Q, Q, (-Q, Q, -32768, 0, 1, -1))
    edges = (g_lo, g_hi, -g_hi, 0, 255, -255, -256, 128, -128, 127 << 8)
    G1, G2 = r.pair("i", n + 1, g_lo, g_hi, edges)
    if momentum:
        vm = fixed.V_MAX
        V1, V2 = r.pair("i", n + 1, -vm, vm, (-vm, vm, 0))
    else:
        V1 = V2 = None
    seed = seed30(r.int_in(1, 1 << 29))
    rng1, rng2 = pair("i", [seed])
    pk.update(W1, G1, V1, n, m, u, mu, c_m, c_s, mode, rng1)
    args = (W2, G2, V2, n, m, u, mu, c_m, c_s, mode, rng2)
    call(nk.update, args)
    what = "update n=%d m=%d u=%d mu=%d c_m=%d c_s=%d mode=%d" % (n, m, u, mu, c_m, c_s, mode)
    same(what + " W", W1, W2)
    same(what + " G", G1, G2)
    if momentum:
        same(what + " V", V1, V2)
    same(what + " rng", rng1, rng2)
    if lock:
        # again, locked: G is now zero, so weight decay and momentum alone move W
        pk.update(W1, G1, V1, n, m, u, mu, c_m, c_s, mode, rng1)
        locked(nk.update, args)
        same(what + " locked W", W1, W2)
        same(what + " locked rng", rng1, rng2)


C_DECAY = ((0, 0), (1, 0), (255, 0), (255, 1), (100, 8), (255, 22), (255, 23), (255, 24),
           (255, 31), (255, 32), (255, 40), (255, 64), (255, 70), (17, -3))


def test_update():
    need_native()
    r = Rand(7)
    for mode in (fixed.NEAREST, fixed.STOCHASTIC):
        for u in (0, 1, 7, 8, 9, 10, 15, 16, 17, 22, 23, 24, 29, 30, 31, 32, 45, 64, 70):
            for m in (-256, -255, -1, 0, 1, 128, 200, 255, 256):
                check_update(r, 11, m, u, 0, 0, 0, mode, False, G_LO, G_HI, u == 9)
        for mu in (0, 1, 128, 255):
            for c_m, c_s in C_DECAY:
                for u in (3, 12):
                    check_update(r, 11, 173, u, mu, c_m, c_s, mode, True, G_LO, G_HI,
                                 c_m == 100)
        check_update(r, 11, 173, 3, 0, 17, 9, mode, False)
    check_update(r, 2000, 131, 9, 230, 164, 8, fixed.STOCHASTIC, True)
    check_update(r, 2000, 255, 11, 0, 0, 0, fixed.STOCHASTIC, False)
    for n in range(10):  # every remainder of an unrolled loop, and n = 0
        for mode in (fixed.NEAREST, fixed.STOCHASTIC):
            check_update(r, n, 256, 9, 0, 0, 0, mode, False)
            check_update(r, n, 200, 9, 0, 0, 0, mode, False)
            check_update(r, n, 200, 10, 77, 3, 9, mode, True)


def test_update_every_int32_gradient():
    # kernels.c is exact for every int32 G (m <= 256), not only for the contract's range
    need_native()
    r = Rand(8)
    for mode in (fixed.NEAREST, fixed.STOCHASTIC):
        for u in (0, 5, 8, 9, 12, 16, 17, 22, 23, 31, 40):
            for m in (-255, 128, 255, 256):
                check_update(r, 23, m, u, 0, 0, 0, mode, False, I32_LO, I32_HI)
                check_update(r, 23, m, u, 200, 255, 9, mode, True, I32_LO, I32_HI)


def test_generator_sequence():
    # 1000 stochastic steps through one rng: the state after each call is the same
    need_native()
    r = Rand(9)
    for seed in (1, 2, (1 << 30) - 1, 0x2545F491):
        rng1, rng2 = pair("i", [seed30(seed)])
        W1, W2 = pair("h", r.values(100, -Q, Q))
        for _ in range(10):
            G1, G2 = pair("i", r.values(100, G_LO, G_HI))
            pk.update(W1, G1, None, 100, 255, 20, 0, 0, 0, fixed.STOCHASTIC, rng1)
            nk.update(W2, G2, None, 100, 255, 20, 0, 0, 0, fixed.STOCHASTIC, rng2)
            same("rng seed=%d" % seed, rng1, rng2)
            same("W seed=%d" % seed, W1, W2)


def raises(fn, args):
    try:
        call(fn, args)
    except Exception as e:  # noqa: BLE001 - the class is the result
        return type(e)
    return None


def test_errors_match():
    # wrong sizes and negative guard shifts fail as the pure kernels do (native: before any write)
    need_native()
    h = array("h", [1] * 8)
    short = array("h", [1] * 3)
    i32 = array("i", [0] * 8)
    rng = array("i", [seed30(3)])
    cases = (
        ("matvec", (h, h, h, 2, 4, 1, 2, 0, short)),
        ("matvec", (short, h, h, 2, 2, 1, 2, 0, h)),
        ("matvec", (h, h, h, 2, 2, 1, -1, 0, h)),
        ("matvec_t", (h, h, 2, 4, 2, 0, short[:1])),
        ("matvec_t", (h, h, 2, 2, -1, 0, h)),
        ("outer_acc", (i32, i32, h, h, 3, 3, 1, -1)),
        ("outer_acc", (i32, i32, h, short, 4, 2, 1, 0)),
        ("act_fwd", (fixed.TANH, short, h, 5, 41)),
        ("act_bwd", (fixed.RELU, h, short, h, h, 5, 41)),
        ("act_bwd", (fixed.LEAKY, h, short, h, h, 5, 41)),
        ("act_bwd", (fixed.SIGMOID, h, h, short, h, 5, 41)),
        ("act_bwd", (fixed.TANH, short, h, h, h, 5, 41)),
        ("act_bwd", (fixed.IDENTITY, h, h, h, short, 5, 41)),
        ("softmax", (h, short, 5)),
        ("softmax", (array("h"), short, 0)),  # Python reads z[0] even for n = 0
        ("act_fwd", (fixed.SOFTMAX, array("h"), short, 0, 0)),
        ("update", (h, i32, None, 5, 200, 9, 3, 0, 0, 0, rng)),  # momentum without V
        ("update", (h, i32, i32, 9, 200, 9, 3, 0, 0, 0, rng)),
        ("update", (h, i32, i32, 5, 200, 9, 3, 0, 0, 0, array("i"))),
        ("update", (short, i32, None, 5, 200, 9, 0, 0, 0, 0, rng)),
        ("update", (h, i32, None, 5, 200, -1, 0, 0, 0, 0, rng)),
    )
    for name, args in cases:
        pure = raises(getattr(pk, name), args)
        native = raises(getattr(nk, name), args)
        if pure is None or pure is not native:
            raise AssertionError("%s: pure raises %r, native %r" % (name, pure, native))
    # what the pure kernels accept and the native ones refuse: ints beyond int32 (on a 32-bit
    # port long ints, which Python computes with and the core never passes), a list, a
    # wrong typecode
    for big in (1 << 31, -(1 << 31) - 1, 1 << 40):
        if raises(nk.matvec, (h, h, h, 2, 2, big, 2, 0, h)) is not ValueError:
            raise AssertionError("native matvec took one=%d" % big)
        # as a size: too long for the arrays (IndexError), or a long int (ValueError)
        if big > 0 and raises(nk.matvec, (h, h, h, big, 2, 1, 2, 0, h)) not in (ValueError,
                                                                               IndexError):
            raise AssertionError("native matvec took n_in=%d" % big)
    if raises(nk.act_fwd, (fixed.RELU, h, h, 4.0, 0)) is not TypeError:
        raise AssertionError("native act_fwd took a float size")
    for bad in ([1, 2, 3, 4], array("H", [1] * 8), bytearray(16)):
        if raises(nk.act_fwd, (fixed.RELU, bad, h, 4, 0)) is not TypeError:
            raise AssertionError("native act_fwd accepted %r" % (bad,))
    # and what both accept: guard shifts that run nowhere, empty loops, rows never touched
    for name, args in (("outer_acc", (i32, i32, array("h", [0] * 3), h, 2, 3, 1, -1)),
                       ("outer_acc", (i32, i32, array("h", [0] * 3), short, 4, 3, 1, 0)),
                       # only row 0 is used: G needs n_in values, GB one
                       ("outer_acc", (array("i", [0] * 4), array("i", [0]),
                                      array("h", [5, 0, 0]), h, 4, 3, 1, 1)),
                       ("matvec", (h, h, h, 2, 0, 1, -1, 0, h)),
                       ("update", (h, i32, None, 0, 200, -1, 0, 0, 0, 0, rng))):
        for fn in (getattr(pk, name), getattr(nk, name)):
            if raises(fn, args) is not None:
                raise AssertionError(name + ": raised where Python does not")


def test_aliased_buffers():
    # outputs that share memory with inputs: the native kernels read and write in Python's
    # order, so the results are the same
    need_native()
    r = Rand(12)
    for n in (1, 3, 4, 6, 9):
        k = ceil_log2(n + 1)
        W = array("h", r.values(n * n, -Q, Q, (-Q, Q)))
        B = array("h", r.values(n, -Q, Q))
        for s in (-3, 0, 9):
            x1, x2 = pair("h", r.values(n, -Q, Q, (-Q, Q)))
            pk.matvec(W, B, x1, n, n, 1 << 14, k, s, x1)  # z is x
            nk.matvec(W, B, x2, n, n, 1 << 14, k, s, x2)
            same("matvec z=x n=%d s=%d" % (n, s), x1, x2)
            W1, W2 = pair("h", list(W))
            pk.matvec(W1, B, x1, n, n, 1 << 14, k, s, W1)  # z is the start of W
            nk.matvec(W2, B, x1, n, n, 1 << 14, k, s, W2)
            same("matvec z=W n=%d s=%d" % (n, s), W1, W2)
            B1, B2 = pair("h", list(B))
            pk.matvec(W, B1, x1, n, n, 1 << 14, k, s, B1)  # z is B
            nk.matvec(W, B2, x1, n, n, 1 << 14, k, s, B2)
            same("matvec z=B n=%d s=%d" % (n, s), B1, B2)
            d1, d2 = pair("h", r.values(n, -Q, Q, (-Q, Q)))
            pk.matvec_t(W, d1, n, n, k, s, d1)  # e is d
            nk.matvec_t(W, d2, n, n, k, s, d2)
            same("matvec_t e=d n=%d s=%d" % (n, s), d1, d2)
            W1, W2 = pair("h", list(W))
            pk.matvec_t(W1, B, n, n, k, s, W1)  # e is the start of W
            nk.matvec_t(W2, B, n, n, k, s, W2)
            same("matvec_t e=W n=%d s=%d" % (n, s), W1, W2)
        for kind in range(6):
            z1, z2 = pair("h", r.values(n, -Q, Q, Z_EDGES))
            pk.act_fwd(kind, z1, z1, n, 41)  # in place
            nk.act_fwd(kind, z2, z2, n, 41)
            same("act_fwd in place kind=%d n=%d" % (kind, n), z1, z2)
        G1, G2 = pair("i", r.values(n * n, -(1 << 28), 1 << 28))
        d = array("h", r.values(n, -Q, Q, (0,)))
        pk.outer_acc(G1, G1, d, B, n, n, 1 << 14, 2)  # GB is the start of G
        nk.outer_acc(G2, G2, d, B, n, n, 1 << 14, 2)
        same("outer_acc GB=G n=%d" % n, G1, G2)
        for mode in (fixed.NEAREST, fixed.STOCHASTIC):
            W1, W2 = pair("h", r.values(n, -Q, Q))
            G1, G2 = pair("i", r.values(n, G_LO, G_HI))
            rng1, rng2 = pair("i", [seed30(n)])
            pk.update(W1, G1, G1, n, 200, 9, 230, 0, 0, mode, rng1)  # V is G
            nk.update(W2, G2, G2, n, 200, 9, 230, 0, 0, mode, rng2)
            same("update V=G n=%d W" % n, W1, W2)
            same("update V=G n=%d G" % n, G1, G2)


# -- whole nets: both kernel sets train the same nets to the same state --

HIDDEN = (fixed.IDENTITY, fixed.RELU, fixed.LEAKY, fixed.SIGMOID, fixed.TANH, fixed.SWISH,
          fixed.MISH)
OUTPUTS = (
    (fixed.MSE, fixed.IDENTITY),
    (fixed.MSE, fixed.RELU),
    (fixed.MSE, fixed.SIGMOID),
    (fixed.MSE, fixed.TANH),
    (fixed.SOFTMAX_CE, fixed.SOFTMAX),
    (fixed.BCE, fixed.SIGMOID),
)
# name: (lr_m, lr_e, mu_q8, c_m, c_e, batch, mode)
OPTIMISERS = (
    ("sgd", 128, 9, 0, 0, 0, 1, fixed.NEAREST),
    ("sgd-stochastic", 255, 9, 0, 0, 0, 1, fixed.STOCHASTIC),
    ("momentum", 128, 10, 230, 0, 0, 1, fixed.STOCHASTIC),
    ("decay", 128, 9, 0, 164, 16, 1, fixed.NEAREST),
    ("minibatch", 255, 8, 128, 134, 18, 3, fixed.STOCHASTIC),
)
SQUASH = (fixed.SIGMOID, fixed.TANH, fixed.SOFTMAX)


def make_net(kernels, sizes, hidden, loss, out, opt, r, extreme):
    L = len(sizes) - 1
    acts = [hidden] * (L - 1) + [out]
    shift_a = [14] + [14 if a in SQUASH else 12 for a in acts]
    shift_w = [12] * L
    shift_d = [14] * L
    if loss == fixed.MSE:
        shift_d[L - 1] = shift_a[L]
    name, lr_m, lr_e, mu, c_m, c_e, batch, mode = opt
    net = Net(sizes, acts, shift_a, shift_w, shift_d, loss, 4, mu > 0, 41, kernels)
    for l in range(L):
        if extreme:
            edges = (-Q, Q)
            lim = Q
        else:
            edges = ()
            lim = 4096 * 3 // (2 * sizes[l])
        for i in range(len(net.W[l])):
            net.W[l][i] = r.values(1, -lim, lim, edges)[0]
        for i in range(len(net.B[l])):
            net.B[l][i] = r.values(1, -lim, lim, edges)[0]
    net.set_lr(lr_m, lr_e + 2)  # + 2: the MSE formats of the last layer need a smaller step
    net.set_batch(batch)
    net.set_momentum(mu)
    net.set_decay(c_m, c_e)
    net.set_rounding(mode, 5)
    return net


def samples(r, sizes, loss, out, n, extreme):
    xs, ts = [], []
    for _ in range(n):
        if extreme:
            xs.append(array("h", r.values(sizes[0], -Q, Q, (-Q, Q))))
        else:
            xs.append(array("h", r.values(sizes[0], -16384, 16384)))
        n_out = sizes[-1]
        if loss == fixed.SOFTMAX_CE:
            ts.append(array("h", [r.below(n_out)]))
        elif loss == fixed.BCE:
            ts.append(array("h", [16384 * r.below(2) for j in range(n_out)]))
        else:
            hi = 1 << (14 if out in SQUASH else 12)
            lo = 0 if out in (fixed.RELU, fixed.SIGMOID) else -hi
            ts.append(array("h", r.values(n_out, lo, hi, (-Q, Q) if extreme else ())))
    return xs, ts


def same_state(what, a, b):
    # every buffer a later step reads, compared in place (a list of a [40, 24, 3] net's
    # state is an 8 KB block, more than a fragmented 192 KiB board may have in one piece)
    for l in range(a.L):
        same("%s W[%d]" % (what, l), a.W[l], b.W[l])
        same("%s B[%d]" % (what, l), a.B[l], b.B[l])
        if a.VW[l] is not None or b.VW[l] is not None:
            same("%s VW[%d]" % (what, l), a.VW[l], b.VW[l])
            same("%s VB[%d]" % (what, l), a.VB[l], b.VB[l])
    same(what + " rng, loss, correct, seen",
         [a.rng[0], a.loss_sum, a.correct, a.seen], [b.rng[0], b.loss_sum, b.correct, b.seen])


def check_training(sizes, hidden, loss, out, opt, seed, extreme):
    r = Rand(seed)
    xs, ts = samples(r, sizes, loss, out, 5, extreme)
    nets = []
    for kernels in (pk, nk):
        r = Rand(seed + 1)
        net = make_net(kernels, sizes, hidden, loss, out, opt, r, extreme)
        losses = []
        for i in range(len(xs)):
            losses.append(net.learn(xs[i], ts[i]))
        net.update()
        nets.append((net, losses))
    what = "%s-%s-%s-%s%s" % (fixed.ACT_NAMES[hidden], fixed.ACT_NAMES[out],
                              fixed.LOSS_NAMES[loss], opt[0], " extreme" if extreme else "")
    same(what + " losses", nets[0][1], nets[1][1])
    same_state(what, nets[0][0], nets[1][0])


def test_training_every_combination():
    need_native()
    seed = 100
    for hidden in HIDDEN:
        for loss, out in OUTPUTS:
            for opt in OPTIMISERS:
                seed += 2
                check_training([4, 5, 3], hidden, loss, out, opt, seed, False)


def test_training_extreme_and_deep():
    need_native()
    seed = 1000
    for hidden in HIDDEN:
        for loss, out in OUTPUTS:
            seed += 2
            check_training([40, 24, 3], hidden, loss, out, OPTIMISERS[4], seed, True)
            check_training([5, 6, 4, 3], hidden, loss, out, OPTIMISERS[2], seed, False)


def test_training_step_allocates_nothing():
    need_native()
    if not ALLOC_CHECKED:
        skip("no heap_lock on this runtime")
    r = Rand(10)
    sizes = [64, 32, 10]
    for opt in (OPTIMISERS[0], OPTIMISERS[2], OPTIMISERS[4]):
        for hidden, loss, out in ((fixed.TANH, fixed.SOFTMAX_CE, fixed.SOFTMAX),
                                  (fixed.LEAKY, fixed.MSE, fixed.SIGMOID),
                                  (fixed.RELU, fixed.BCE, fixed.SIGMOID)):
            # the last net let go first: on a 192 KiB board, beside the native module, two
            # 64-32-10 nets with momentum may find no 8 KB block between them
            net = xs = ts = None
            gc.collect()
            net = make_net(nk, sizes, hidden, loss, out, opt, r, False)
            xs, ts = samples(r, sizes, loss, out, 4, False)
            net.learn(xs[0], ts[0])  # first run unlocked: real errors keep their messages
            for i in range(1, 4):
                no_alloc(net.learn, xs[i], ts[i])
            no_alloc(net.update)
