# The viper kernels against the pure-Python kernels, which define the arithmetic: every
# output buffer and the generator state must be bit-identical, on random inputs and at the
# edges of the ranges the core admits. Needs the viper emitter (the unix port on x64).
import gc
from array import array

from devtest import ALLOC_CHECKED, Rand, no_alloc, skip
from edgebp import fixed, kernels as pk
from edgebp.fixed import ceil_log2, seed30
from edgebp.net import Net

try:
    from edgebp import kernels_viper as vk
except (ImportError, SyntaxError, ValueError):
    vk = None

Q = 32767
G_LO = -(1 << 30)
G_HI = (1 << 30) - 1
# Shift counts of 32 and 64 and beyond: hardware takes them modulo the word size, Python not
SHIFTS = (-70, -40, -17, -16, -15, -7, -1, 0, 1, 2, 9, 15, 29, 30, 31, 32, 45, 64, 70)


def need_viper():
    if vk is None:
        skip("no viper emitter on this runtime")


def same(what, a, b):
    if len(a) != len(b):
        raise AssertionError("%s: lengths %d and %d" % (what, len(a), len(b)))
    for i in range(len(a)):
        if a[i] != b[i]:
            raise AssertionError("%s: index %d: pure %d, viper %d" % (what, i, a[i], b[i]))


def pair(typ, values):
    return array(typ, values), array(typ, values)


# -- kernels one by one --


def check_matvec(r, n_in, n_out, one, s, extreme, hi=Q):
    # hi: the magnitude of random values; small ones give sums near zero, where a
    # negative requant shift is most delicate
    k = ceil_log2(n_in + 1)
    edges = (-Q, Q) if extreme else (-hi, hi, 0, 1, -1)
    W = array("h", r.values(n_in * n_out, -hi, hi, edges))
    B = array("h", r.values(n_out, -hi, hi, edges))
    x = array("h", r.values(n_in, -hi, hi, edges))
    if extreme:
        for i in range(n_in):
            W[i] = Q if x[i] > 0 else -Q  # row 0 sums to the largest admitted magnitude
        B[0] = Q
    z1, z2 = pair("h", [7] * n_out)
    pk.matvec(W, B, x, n_in, n_out, one, k, s, z1)
    vk.matvec(W, B, x, n_in, n_out, one, k, s, z2)
    same("matvec n_in=%d n_out=%d one=%d s=%d" % (n_in, n_out, one, s), z1, z2)


def test_matvec():
    need_viper()
    r = Rand(1)
    for s in SHIFTS:
        for one in (1, 1 << 7, 1 << 14):
            check_matvec(r, 7, 5, one, s, False)
            check_matvec(r, 3, 2, one, s, True)
            check_matvec(r, 4, 9, one, s, False, 3)
    for s in (-3, 0, 6, 12, 20):
        check_matvec(r, 500, 3, 1 << 14, s, False)
        check_matvec(r, 500, 2, 1 << 14, s, True)
    check_matvec(r, 1, 1, 1, 0, False)


def check_matvec_t(r, n_in, n_out, s, extreme, hi=Q):
    k = ceil_log2(n_out)
    edges = (-Q, Q) if extreme else (-hi, hi, 0, 1, -1)
    W = array("h", r.values(n_in * n_out, -hi, hi, edges))
    d = array("h", r.values(n_out, -hi, hi, edges))
    e1, e2 = pair("h", [7] * n_in)
    pk.matvec_t(W, d, n_in, n_out, k, s, e1)
    vk.matvec_t(W, d, n_in, n_out, k, s, e2)
    same("matvec_t n_in=%d n_out=%d s=%d" % (n_in, n_out, s), e1, e2)


def test_matvec_t():
    need_viper()
    r = Rand(2)
    for s in SHIFTS:
        check_matvec_t(r, 6, 5, s, False)
        check_matvec_t(r, 3, 4, s, True)
        check_matvec_t(r, 4, 1, s, False)
        check_matvec_t(r, 9, 4, s, False, 3)
    for s in (-3, 0, 6, 12, 20):
        check_matvec_t(r, 3, 500, s, False)
        check_matvec_t(r, 2, 500, s, True)


def test_outer_acc():
    need_viper()
    r = Rand(3)
    for n_in, n_out, kg in ((5, 4, 0), (7, 3, 2), (500, 2, 1), (3, 3, 15)):
        for one in (1, 1 << 14):
            # start anywhere that one more sample cannot leave [-2**30, 2**30)
            lim = (1 << 30) - ((Q * Q) >> kg) - 1
            G1, G2 = pair("i", r.values(n_in * n_out, -lim, lim, (-lim, lim, 0)))
            GB1, GB2 = pair("i", r.values(n_out, -lim, lim, (-lim, lim, 0)))
            d = array("h", r.values(n_out, -Q, Q, (-Q, Q, 0, 0, 0)))
            x = array("h", r.values(n_in, -Q, Q, (-Q, Q, 0)))
            pk.outer_acc(G1, GB1, d, x, n_in, n_out, one, kg)
            vk.outer_acc(G2, GB2, d, x, n_in, n_out, one, kg)
            what = "outer_acc n_in=%d n_out=%d kg=%d one=%d" % (n_in, n_out, kg, one)
            same(what + " G", G1, G2)
            same(what + " GB", GB1, GB2)
    # a full batch of extreme samples from zero: the sums reach the edge of the range
    kg = 3
    G1, G2 = pair("i", [0] * 4)
    GB1, GB2 = pair("i", [0] * 2)
    for t in range(1 << kg):
        sign = Q if t & 1 else -Q
        d = array("h", [sign, -sign])
        x = array("h", [sign, Q])
        pk.outer_acc(G1, GB1, d, x, 2, 2, 1 << 14, kg)
        vk.outer_acc(G2, GB2, d, x, 2, 2, 1 << 14, kg)
    same("outer_acc full batch G", G1, G2)
    same("outer_acc full batch GB", GB1, GB2)


Z_EDGES = (-Q, Q, 0, -1, 1, -32768 + 512, 32767 - 511, -4096, 4096, 511, 512, -512, 513)


def test_act_fwd():
    need_viper()
    r = Rand(4)
    for kind in range(8):
        # the last parameter: the leaky slope, or for softmax the net's logit_k
        for alpha in (0, 1, 2, 3) if kind == fixed.SOFTMAX else (0, 41, 4096):
            for n in (1, 2, 10, 130):
                z = array("h", r.values(n, -Q, Q, Z_EDGES))
                a1, a2 = pair("h", [7] * n)
                pk.act_fwd(kind, z, a1, n, alpha)
                vk.act_fwd(kind, z, a2, n, alpha)
                same("act_fwd %s alpha=%d n=%d" % (fixed.ACT_NAMES[kind], alpha, n), a1, a2)
    # every table node and the points between them, both LUT ends included
    z = array("h", [max(-Q, min(Q, v)) for v in range(-32768, 32768, 256)] + [Q, -Q])
    for kind in (fixed.SIGMOID, fixed.TANH):
        a1, a2 = pair("h", [0] * len(z))
        pk.act_fwd(kind, z, a1, len(z), 41)
        vk.act_fwd(kind, z, a2, len(z), 41)
        same("act_fwd nodes " + fixed.ACT_NAMES[kind], a1, a2)


def test_gated_every_z():
    # swish and mish over every int16 z, in chunks: the forward value, and the derivative
    # through e = Q, -32768 (the saturating products) and a spread of e, by turns
    need_viper()
    r = Rand(14)
    n = 256  # small buffers: a 192 KiB board's heap stays in large pieces for the tests after
    z, e, a1, a2, d1, d2 = (array("h", range(n)) for _ in range(6))
    for kind in (fixed.SWISH, fixed.MISH):
        for lo in range(-32768, 32768, n):
            for i in range(n):
                z[i] = lo + i
            pk.act_fwd(kind, z, a1, n, 41)
            vk.act_fwd(kind, z, a2, n, 41)
            same("act_fwd %s z from %d" % (fixed.ACT_NAMES[kind], lo), a1, a2)
            for i in range(n):
                turn = (lo + i) % 3
                if turn == 2:
                    e[i] = r.value(-Q, Q, (-Q, Q, 0, 1, -1))
                else:
                    e[i] = Q if turn == 0 else -32768
            pk.act_bwd(kind, e, z, a1, d1, n, 41)
            vk.act_bwd(kind, e, z, a1, d2, n, 41)
            same("act_bwd %s z from %d" % (fixed.ACT_NAMES[kind], lo), d1, d2)


def test_softmax_edges():
    need_viper()
    r = Rand(5)
    cases = [[0], [Q, -Q], [Q] * 10, [-Q] * 10, [Q] + [-Q] * 9, [0] * 300]
    cases.append(r.values(300, -Q, Q, (-Q, Q)))
    cases.append(r.values(50, -400, 400))
    # 2**-ip for every shift ip, and the cut-off at ip = 15 (z 42589 below the maximum)
    cases.append([0] + [-(1 << i) for i in range(15)])
    cases.append([Q] + [Q - 42589 + d for d in range(-3, 4)])
    for k in range(fixed.LOGIT_K_MAX + 1):
        # the cut-offs in Q(12 - k): 42590 in Q12, and 65535 where the argument is clamped
        cases.append([Q] + [Q - (42589 >> k) + d for d in range(-3, 4)])
        cases.append([Q] + [max(Q - (65535 >> k) + d, -32768) for d in range(-3, 4)])
    for k in range(fixed.LOGIT_K_MAX + 1):
        for vals in cases:
            n = len(vals)
            z = array("h", vals)
            a1, a2 = pair("h", [7] * n)
            pk.softmax(z, a1, n, k)
            vk.softmax(z, a2, n, k)
            same("softmax n=%d k=%d" % (n, k), a1, a2)


def act_bwd_case(r, kind, n, alpha, in_place):
    z = array("h", r.values(n, -Q, Q, Z_EDGES))
    if kind == fixed.SIGMOID:
        a = array("h", r.values(n, 0, 16384, (0, 16384, 8192)))
    elif kind == fixed.TANH:
        a = array("h", r.values(n, -16384, 16384, (-16384, 16384, 0)))
    else:
        a = array("h", r.values(n, -Q, Q, Z_EDGES))
    e = r.values(n, -Q, Q, (-Q, Q, 0, 1, -1))
    e1, e2 = pair("h", e)
    if in_place:
        d1, d2 = e1, e2
    else:
        d1, d2 = pair("h", [7] * n)
    pk.act_bwd(kind, e1, z, a, d1, n, alpha)
    vk.act_bwd(kind, e2, z, a, d2, n, alpha)
    what = "act_bwd %s alpha=%d n=%d in_place=%d" % (fixed.ACT_NAMES[kind], alpha, n, in_place)
    same(what, d1, d2)
    same(what + " e", e1, e2)


def test_act_bwd():
    need_viper()
    r = Rand(6)
    for kind in range(8):
        for alpha in (0, 41, 4096):
            for n in (1, 9, 200):
                act_bwd_case(r, kind, n, alpha, False)
                act_bwd_case(r, kind, n, alpha, True)


def check_update(r, n, m, u, mu, c_m, c_s, mode, momentum):
    W1, W2 = r.pair("h", n, -Q, Q, (-Q, Q, 0, 1, -1))
    G1, G2 = r.pair("i", n, G_LO, G_HI, (G_LO, G_HI, -G_HI, 0, 255, -255, -256))
    if momentum:
        vm = fixed.V_MAX
        V1, V2 = r.pair("i", n, -vm, vm, (-vm, vm, 0))
    else:
        V1 = V2 = None
    seed = seed30(r.int_in(1, 1 << 29))
    rng1, rng2 = pair("i", [seed])
    pk.update(W1, G1, V1, n, m, u, mu, c_m, c_s, mode, rng1)
    vk.update(W2, G2, V2, n, m, u, mu, c_m, c_s, mode, rng2)
    what = "update n=%d m=%d u=%d mu=%d c_m=%d c_s=%d mode=%d" % (n, m, u, mu, c_m, c_s, mode)
    same(what + " W", W1, W2)
    same(what + " G", G1, G2)
    if momentum:
        same(what + " V", V1, V2)
    same(what + " rng", rng1, rng2)


def test_update():
    need_viper()
    r = Rand(7)
    for mode in (fixed.NEAREST, fixed.STOCHASTIC):
        for u in (0, 1, 7, 16, 29, 30, 31, 32, 45, 64, 70):
            for m in (128, 200, 256):
                check_update(r, 11, m, u, 0, 0, 0, mode, False)
        for mu in (0, 1, 128, 255):
            for c_m, c_s in ((0, 0), (1, 0), (255, 0), (255, 1), (100, 8), (255, 22),
                             (255, 23), (255, 24), (255, 31), (255, 40), (255, 64), (255, 70)):
                check_update(r, 11, 173, 3, mu, c_m, c_s, mode, True)
        check_update(r, 11, 173, 3, 0, 17, 9, mode, False)
    check_update(r, 1000, 131, 9, 230, 164, 8, fixed.STOCHASTIC, True)


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
    ("sgd-stochastic", 128, 9, 0, 0, 0, 1, fixed.STOCHASTIC),
    ("momentum", 128, 10, 230, 0, 0, 1, fixed.STOCHASTIC),
    ("decay", 128, 9, 0, 164, 16, 1, fixed.NEAREST),
    ("minibatch", 128, 8, 128, 134, 18, 3, fixed.STOCHASTIC),
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
    for kernels in (pk, vk):
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
    need_viper()
    seed = 100
    for hidden in HIDDEN:
        for loss, out in OUTPUTS:
            for opt in OPTIMISERS:
                seed += 2
                check_training([4, 5, 3], hidden, loss, out, opt, seed, False)


def test_training_extreme_and_deep():
    need_viper()
    seed = 1000
    for hidden in HIDDEN:
        for loss, out in OUTPUTS:
            seed += 2
            check_training([40, 24, 3], hidden, loss, out, OPTIMISERS[4], seed, True)
            check_training([5, 6, 4, 3], hidden, loss, out, OPTIMISERS[2], seed, False)


def test_training_step_allocates_nothing():
    need_viper()
    if not ALLOC_CHECKED:
        skip("no heap_lock on this runtime")
    r = Rand(9)
    sizes = [64, 32, 10]
    net = None
    for opt in (OPTIMISERS[0], OPTIMISERS[2], OPTIMISERS[4]):
        for hidden, loss, out in ((fixed.TANH, fixed.SOFTMAX_CE, fixed.SOFTMAX),
                                  (fixed.LEAKY, fixed.MSE, fixed.SIGMOID),
                                  (fixed.RELU, fixed.BCE, fixed.SIGMOID)):
            # the last net is garbage before the next is made: two of them at once are more
            # than a 192 KiB board's heap holds in large enough pieces
            net = None
            gc.collect()
            net = make_net(vk, sizes, hidden, loss, out, opt, r, False)
            xs, ts = samples(r, sizes, loss, out, 4, False)
            net.learn(xs[0], ts[0])  # first run unlocked: real errors keep their messages
            for i in range(1, 4):
                no_alloc(net.learn, xs[i], ts[i])
            no_alloc(net.update)
