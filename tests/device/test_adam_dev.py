# Adam's fast kernels (edgebp/adam_viper.py, adam_native.mpy's adam) and the definition
# (edgebp.adam.adam): the same cases, drawn by xorshift30 on every runtime, run through the
# kernel set adam_under.KERNELS names ("python", "viper" or "native"), each call with the heap
# locked; every buffer after the call is printed, one ADAM line a case. The host runs this
# module under CPython with the pure kernel and compares the lines (tests/coredrive.py).
import gc
from array import array

import adam_under

from devtest import ALLOC_CHECKED, Rand, no_alloc, skip
from edgebp import adam as pure

Q = 32767
BIG = (1 << 25) - 1  # the largest mantissa of V
LOW = 1 << 22  # the smallest of an exponent above the lowest


def kernel():
    name = adam_under.KERNELS
    if name == "viper":
        from edgebp import adam_viper

        return adam_viper.adam
    if name == "native":
        from edgebp import adam_native

        return adam_native.adam
    return pure.adam


def g_limits(count, kg):
    # the sum of count terms (d*x) >> kg, |d*x| <= 2**30 - 1
    return count * ((1 - (1 << 30)) >> kg), count * (((1 << 30) - 1) >> kg)


def v_value(r):
    # a well-formed second moment: exponent field 0..29 (E = -11..18), F >= 2**22 above the
    # lowest, and the edges: E = 18 with F near 2**25, E = 0, E = -11, zero
    t = r.below(8)
    if t == 0:
        return (29 << 25) | (BIG - r.below(4096))
    if t == 1:
        return (pure.BIAS << 25) | r.int_in(LOW, BIG)
    if t == 2:
        return r.below(64) if r.below(2) else 0
    field = r.below(30)
    return (field << 25) | r.int_in(0 if field == 0 else LOW, BIG)


def call(k, B, P):
    k(B[0], B[1], B[2], B[3], P[0], P[1], P[2], P[3], P[4], P[5], P[6], P[7], P[8], P[9], B[4])


def line(name, B):
    out = []
    for b in B:
        out.append(" ".join([str(v) for v in b]))
    return "ADAM " + name + "|" + "|".join(out)


def run_case(k, r, name, n, count, kg, c1, c2, am, u, c_m, c_s, mode):
    g_lo, g_hi = g_limits(count, kg)
    m_lim = 1 << 29
    W = array("h", r.values(n, -Q, Q, (-Q, Q, 0, 1, -1)))
    G = array("i", r.values(n, g_lo, g_hi, (g_lo, g_hi, 0, 1, -1, count, -count)))
    M = array("i", r.values(n, -m_lim, m_lim, (-m_lim, m_lim, 0, 1, -1)))
    V = array("i", range(n))
    for i in range(n):
        V[i] = v_value(r)
    rng = array("i", [r.int_in(1, (1 << 30) - 1)])
    B = [W, G, M, V, rng]
    P = array("i", [n, count, kg, c1, c2, am, u, c_m, c_s, mode])
    if ALLOC_CHECKED:
        no_alloc(call, k, B, P)
    else:
        call(k, B, P)
    print(line(name, B))


def test_adam_cases():
    k = kernel()
    r = Rand(61)
    # the edges: kg and count, the betas, the step's scale, decay and rounding; the buffers
    # carry the edge values of G, M, V and W
    for kg, counts in ((0, (1,)), (1, (1, 2)), (7, (1, 5, 127, 128)), (15, (1, 3, 32767, 32768))):
        for count in counts:
            for mode in (0, 1):
                run_case(k, r, "kg%d-count%d-mode%d" % (kg, count, mode), 24, count, kg,
                         3277, 33, 20000, 12, 0, 0, mode)
    for c1 in (32, 3277, 32768):
        for c2 in (1, 33, 32768):
            for mode in (0, 1):
                kg = r.below(16)
                run_case(k, r, "c1=%d-c2=%d-mode%d" % (c1, c2, mode), 24,
                         r.int_in(1, 1 << kg), kg, c1, c2, r.below(32768), r.below(31),
                         r.below(256), r.below(31), mode)
    for am in (0, 1, 32767):
        for u in (0, 1, 15, 30):
            for c_m, c_s in ((0, 0), (255, 0), (255, 1), (100, 8), (255, 30), (1, 30)):
                mode = r.below(2)
                kg = r.below(16)
                run_case(k, r, "am=%d-u=%d-decay%d,%d" % (am, u, c_m, c_s), 8,
                         r.int_in(1, 1 << kg), kg, 1 + r.below(32768), 1 + r.below(32768),
                         am, u, c_m, c_s, mode)
    # random settings, sizes 0..50
    for i in range(40):
        kg = r.below(16)
        run_case(k, r, "random%d" % i, r.below(51), r.int_in(1, 1 << kg), kg,
                 r.int_in(32, 32768), r.int_in(1, 32768), r.below(32768), r.below(31),
                 r.below(256) if r.below(2) else 0, r.below(31), r.below(2))
    gc.collect()


def test_native_adam_refuses_bad_arguments():
    # sizes, buffer types and the scalars outside the ranges the range proof admits: an
    # error before anything is written
    if adam_under.KERNELS != "native":
        skip("the native kernel's argument checks")
    k = kernel()
    h = array("h", [5] * 8)
    i32 = array("i", [7] * 8)
    rng = array("i", [12345])
    good = [h, i32, i32, i32, 8, 3, 2, 3277, 33, 100, 9, 0, 0, 1, rng]
    a = [array("h", [5] * 8), array("i", [7] * 8), array("i", [7] * 8), array("i", [7] * 8)]
    k(a[0], a[1], a[2], a[3], 8, 3, 2, 3277, 33, 100, 9, 0, 0, 1, array("i", [12345]))  # accepted
    bad = (
        (0, array("h", [5] * 7), IndexError), (1, array("i", [7] * 7), IndexError),
        (2, array("i", [7] * 7), IndexError), (3, array("i", [7] * 7), IndexError),
        (14, array("i"), IndexError), (0, array("i", [5] * 8), TypeError),
        (1, array("h", [7] * 16), TypeError), (3, [7] * 8, TypeError),
        (5, 0, ValueError), (5, 5, ValueError), (6, -1, ValueError), (6, 16, ValueError),
        (7, 31, ValueError), (7, 32769, ValueError), (8, 0, ValueError),
        (8, 32769, ValueError), (9, -1, ValueError), (9, 32768, ValueError),
        (10, -1, ValueError), (10, 31, ValueError), (11, -1, ValueError),
        (11, 256, ValueError), (12, -1, ValueError), (12, 31, ValueError),
        (6, 1 << 40, ValueError),
    )
    for i, value, err in bad:
        a = list(good)
        a[i] = value
        got = None
        try:
            k(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12],
              a[13], a[14])
        except Exception as e:  # noqa: BLE001 - the class is the result
            got = type(e)
        if got is not err:
            raise AssertionError("argument %d = %r: %r, not %r" % (i, value, got, err))
        if list(h) != [5] * 8 or list(i32) != [7] * 8 or rng[0] != 12345:
            raise AssertionError("argument %d = %r changed a buffer" % (i, value))
