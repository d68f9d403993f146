"""Static range analysis: proves that the core runs a QuantNet exactly, inside the small ints.

check_ranges(qnet, hyper) bounds every intermediate of edgebp/kernels.py and edgebp/net.py by
interval arithmetic, for any int16 weights (the core saturates them at +-32767), any int16
input (or a declared input interval) and any int16 targets, and at most batch_max samples per
gradient sum; RangeError names the layer of each problem. core_layout(qnet) is what the core
derives from the formats (guards, requant shifts), max_lr(qnet) the largest learning rate
they represent.

Limits: a MicroPython small int on a 32-bit port, [-2**30, 2**30), for every intermediate;
the core's symmetric int16 storage, [-32767, 32767], for every stored value.

A net with Adam (qnet.adam, edgebp/adam.py) has its update bounded through the Adam kernel
instead of SGD's, from the argument ranges the kernel is documented to assume, each derived
here rather than taken: the mean gradient x from the gradient terms for every count
1..batch_max, the first moment m inside the hull of 0 and every x (each update moves m
towards x and not past it), the second moment's exponent from the largest x's bit length and
its mantissa from the fixed point of the normalisation, the step ratio from the clamp, and
the per-update scalars (beta**t, the bias correction, lr_m times it, the layer multiplier)
over every t from the betas and the largest mantissa of the learning rate.

A net with SDLM (qnet.sdlm, edgebp/sdlm.py) has its curvature pass bounded (layer by layer,
names starting "curvature:"): the output curvature (f'**2 of 1 through act_bwd twice, or
a (1 - a)), sq_t's two products and guarded sum, its requant, act_bwd twice on the result
(f'**2 >= 0: the curvature stays in [0, 32767], what sq_t and curv_acc assume), curv_acc's
two products per weight, the sample's requantised curvature, the running h (a blend with
weight at most 1 keeps it between 0 and the largest sample) and the blend's product; and
its step through the sdlm kernel in place of SGD's: mu_q + h, the quotient's and the
remainder's pieces of the two-part division, then SGD's decay and rounding. A curvature
requant with a negative shift only leaves low bits zero (requant(0) is 0 for every shift),
so it is not refused.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field, replace

from edgebp import adam as adam_core, dynfmt as dynfmt_core, fixed, kernels, sdlm as sdlm_core
from edgebp.fixed import (
    ALPHA_SHIFT,
    FV,
    MU_SHIFT,
    Q_MAX,
    SMALL_MAX,
    V_MAX,
    ceil_log2,
    requant,
    rshift_round,
)
from edgebp.host.nets.qnet import Hyper, QuantNet, mantissa_exponent
from edgebp.luts import EXP2, LOG2, SIGMOID as SIG_LUT, TANH as TANH_LUT
from edgebp.luts_act import MISH_D, MISH_G, SWISH_D
from edgebp.net import MAX_BATCH, Net

MSE_MIN_SHIFT = 6  # the core's minimum output format for mse
SMALL_MIN = -(1 << 30)
_SQUASH = (fixed.SIGMOID, fixed.TANH, fixed.SOFTMAX)


class RangeError(ValueError):
    """A net the core cannot run safely or exactly; the message names the layer.

    `problems` lists every problem found (the message is the first), `report` the bounds."""

    def __init__(self, problems: list[str], report: RangeReport | None = None) -> None:
        super().__init__(problems[0])
        self.problems = problems
        self.report = report


@dataclass
class LayerLayout:
    """What the core derives for one layer from the formats (edgebp.net.Net.__init__)."""

    n_in: int
    n_out: int
    act: int
    sa_in: int
    sa_out: int
    sz: int
    sw: int
    sd: int
    sd_prev: int | None  # delta format of the layer below (None for the first layer)
    k: int  # forward guard
    s_f: int
    kb: int  # guard of the sum sent back to the layer below
    s_b: int
    one: int


@dataclass
class Layout:
    layers: list[LayerLayout]
    loss: int
    kg: int
    batch_max: int
    alpha: int
    # the least forward requant shift accepted: 0, or for formats that follow the weights
    # -15 (a negative shift leaves low bits zero: exact, and requant(0) is 0 down to -15)
    s_f_least: int = 0
    logit_k: int = 0  # a softmax output's z in Q(12 - logit_k)


def core_layout(qnet: QuantNet) -> Layout:
    """The guards and requant shifts the core uses for qnet (mirrors Net.__init__; a test
    checks the two agree)."""
    layers = []
    for l in range(qnet.L):
        act = qnet.acts[l]
        sz = qnet.shift_z(l)
        k = ceil_log2(qnet.sizes[l] + 1)
        kb = ceil_log2(qnet.sizes[l + 1])
        sd_prev = qnet.shift_d[l - 1] if l > 0 else None
        layers.append(LayerLayout(
            n_in=qnet.sizes[l], n_out=qnet.sizes[l + 1], act=act, sa_in=qnet.shift_a[l],
            sa_out=qnet.shift_a[l + 1], sz=sz, sw=qnet.shift_w[l], sd=qnet.shift_d[l],
            sd_prev=sd_prev, k=k, s_f=qnet.shift_w[l] + qnet.shift_a[l] - k - sz,
            kb=kb if l > 0 else 0,
            s_b=qnet.shift_w[l] + qnet.shift_d[l] - kb - sd_prev if l > 0 else 0,
            one=1 << qnet.shift_a[l] if qnet.shift_a[l] >= 0 else 0))
    return Layout(layers, qnet.loss, ceil_log2(qnet.batch_max), qnet.batch_max, qnet.alpha_q,
                  logit_k=qnet.logit_k)


Interval = tuple[int, int]
SMALL = (SMALL_MIN, SMALL_MAX)  # a MicroPython small int on a 32-bit port
INT16 = (-Q_MAX, Q_MAX)  # the core's symmetric int16 storage


@dataclass
class Bound:
    layer: int  # 1-based; 0 for the net as a whole
    what: str
    lo: int
    hi: int
    limit: Interval

    @property
    def ok(self) -> bool:
        return self.limit[0] <= self.lo and self.hi <= self.limit[1]

    @property
    def headroom_bits(self) -> float:
        """log2 of limit / worst magnitude: how many doublings the bound could survive."""
        mag = max(-self.lo, self.hi, 1)
        return math.log2(self.limit[1] / mag)

    def problem(self) -> str:
        where = f"layer {self.layer}" if self.layer else "net"
        if self.hi > self.limit[1]:
            name = {SMALL: "2**30-1", INT16: "32767 (int16)"}.get(self.limit, self.limit[1])
            return f"{where}: {self.what} can reach {self.hi} > {name}"
        low = {SMALL: "-2**30", INT16: "-32767 (int16)"}.get(self.limit, self.limit[0])
        return f"{where}: {self.what} can reach {self.lo} < {low}"


@dataclass
class RangeReport:
    bounds: list[Bound] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def get(self, layer: int, what: str) -> Bound:
        for b in self.bounds:
            if b.layer == layer and b.what == what:
                return b
        raise KeyError((layer, what))

    def table(self) -> str:
        rows = ["layer  intermediate          worst case                 limit   bits spare"]
        for b in self.bounds:
            lim = {SMALL: "2**30", INT16: "int16"}.get(b.limit, str(b.limit[1]))
            rows.append(f"{b.layer or 'net':>5}  {b.what:20}  [{b.lo:>11}, {b.hi:>11}]  "
                        f"{lim:>6}  {b.headroom_bits:6.2f}{'' if b.ok else '  FAILS'}")
        return "\n".join(rows)


def _mul(a: Interval, b: Interval) -> Interval:
    c = (a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1])
    return min(c), max(c)


def _add(a: Interval, b: Interval) -> Interval:
    return a[0] + b[0], a[1] + b[1]


def _shr(a: Interval, k: int) -> Interval:
    return a[0] >> k, a[1] >> k  # floor: monotone, so the ends map to the ends


def _rnd(a: Interval, s: int) -> Interval:
    return rshift_round(a[0], s), rshift_round(a[1], s)


def _terms(t: Interval, n: int) -> Interval:
    # every partial sum of at most n terms from t (the running sum starts at 0)
    return n * min(t[0], 0), n * max(t[1], 0)


def _join(a: Interval, b: Interval) -> Interval:
    return min(a[0], b[0]), max(a[1], b[1])


def _clip(a: Interval, lo: int, hi: int) -> Interval:
    return max(lo, min(a[0], hi)), max(lo, min(a[1], hi))


def _requant(a: Interval, s: int) -> Interval:
    if s <= -16:  # requant(0, s) is Q_MAX there (see the report); any output is possible
        return INT16
    return requant(a[0], s), requant(a[1], s)


def _nlog_product(p: int) -> int:
    # the largest intermediate of edgebp.net.nlog_q14: ((14 - e) << 12 - log2 part) * ln2
    if p < 1:
        p = 1
    e = 0
    while (p >> (e + 1)) > 0:
        e += 1
    m = p << (12 - e) if e <= 12 else p >> (e - 12)
    f = m - 4096
    i = f >> 6
    l2 = LOG2[i] + rshift_round((LOG2[i + 1] - LOG2[i]) * (f & 63), 6)
    return (((14 - e) << 12) - l2) * 2839


def _nlog(p: int) -> int:
    from edgebp.net import nlog_q14

    return nlog_q14(p)


def _step_product(table, frac_max: int) -> Interval:
    # (T[i+1] - T[i]) * frac of an interpolating table read, frac in 0..frac_max
    steps = [table[i + 1] - table[i] for i in range(len(table) - 1)]
    return min(0, min(steps) * frac_max), max(0, max(steps) * frac_max)


class _Bounds:
    """Collects the bounds and the problems of one analysis."""

    def __init__(self) -> None:
        self.report = RangeReport()

    def add(self, layer: int, what: str, iv: Interval, limit: Interval = SMALL) -> Interval:
        b = Bound(layer, what, int(iv[0]), int(iv[1]), limit)
        self.report.bounds.append(b)
        if not b.ok:
            self.report.problems.append(b.problem())
        return iv

    def problem(self, msg: str) -> None:
        self.report.problems.append(msg)


def _table_range(table, z: Interval) -> Interval:
    # every value kernels._lut(table, v) takes for v in z: between the nodes it reads
    nodes = table[(z[0] + 32768) >> 9:((z[1] + 32768) >> 9) + 2]
    return min(nodes), max(nodes)


def _gated_forward(c: _Bounds, N: int, act: int, z: Interval) -> Interval:
    # swish and mish: z * gate(z) >> 14, rounded (kernels.gated)
    T = SIG_LUT if act == fixed.SWISH else MISH_G
    c.add(N, "LUT interpolation", _step_product(T, 511))
    return _rnd(c.add(N, "z*gate", _mul(z, _table_range(T, z))), 14)


def _gated_backward(c: _Bounds, N: int, act: int, e: Interval, z: Interval) -> Interval:
    # f'(z) from its table times the error, rounded and saturated (kernels.gated_bwd)
    T = SWISH_D if act == fixed.SWISH else MISH_D
    c.add(N, "LUT interpolation", _step_product(T, 511))
    p = c.add(N, "error*f'", _mul(e, _table_range(T, z)))
    return _clip(_rnd(p, 14), -Q_MAX, Q_MAX)


def _act_forward(c: _Bounds, N: int, act: int, z: Interval, alpha: int, n: int,
                 logit_k: int = 0) -> Interval:
    if act == fixed.IDENTITY:
        return z
    if act in (fixed.SWISH, fixed.MISH):
        return _gated_forward(c, N, act, z)
    if act == fixed.RELU:
        return max(z[0], 0), max(z[1], 0)
    if act == fixed.LEAKY:
        neg = (min(z[0], 0), min(z[1], 0))
        p = c.add(N, "alpha*z", _mul(neg, (alpha, alpha)))
        return _join((max(z[0], 0), max(z[1], 0)), _rnd(p, ALPHA_SHIFT))
    if act in (fixed.SIGMOID, fixed.TANH):
        T = SIG_LUT if act == fixed.SIGMOID else TANH_LUT
        c.add(N, "LUT interpolation", _step_product(T, 511))
        return kernels._lut(T, z[0]), kernels._lut(T, z[1])
    # softmax: exp_neg(min((max - z) << logit_k, 65535)) in Q14, summed, then divided
    diff = c.add(N, "zmax - z", (0, z[1] - z[0]))
    if logit_k:
        diff = c.add(N, "zmax - z in Q12", (0, diff[1] << logit_k))
    diff = (0, min(diff[1], 65535))
    c.add(N, "exp argument", _mul(diff, (kernels._LOG2E_Q12, kernels._LOG2E_Q12)))
    c.add(N, "exp interpolation", _step_product(EXP2, 63))
    c.add(N, "softmax sum", (0, n * 16384))
    c.add(N, "softmax numerator", (0, 16384 * 16384 + n * 16384 // 2))
    return 0, 16384


def _act_backward(c: _Bounds, N: int, act: int, e: Interval, a: Interval,
                  alpha: int, z: Interval = INT16) -> Interval:
    if act in (fixed.SWISH, fixed.MISH):
        return _gated_backward(c, N, act, e, z)
    if act in (fixed.IDENTITY, fixed.SOFTMAX):
        return e
    if act == fixed.RELU:
        return _join(e, (0, 0))
    if act == fixed.LEAKY:
        p = c.add(N, "alpha*error", _mul(e, (alpha, alpha)))
        return _join(e, _rnd(p, ALPHA_SHIFT))
    if act == fixed.SIGMOID:
        top = min(max(8192, a[0]), a[1])  # v (16384 - v) peaks at v = 8192
        vals = [v * (16384 - v) for v in (a[0], a[1], top)]
        g = _rnd(c.add(N, "a*(1-a)", (min(vals), max(vals))), 14)
    else:
        sq = [a[0] * a[0], a[1] * a[1]]
        r = _rnd(c.add(N, "a*a", (0 if a[0] <= 0 <= a[1] else min(sq), max(sq))), 14)
        g = (16384 - r[1], 16384 - r[0])
    return _rnd(c.add(N, "error*f'", _mul(e, g)), 14)


# -- Adam (edgebp/adam.py) --


def _round_div(g: int, n: int) -> int:
    # the kernel's mean of a sum: g / n rounded half away from zero, by floor division
    half = n >> 1
    return (g + half) // n if g >= 0 else -((half - g) // n)


def _mul_q15(c: _Bounds, N: int, what: str, a: Interval, k: int, kname: str) -> Interval:
    # adam.mul_q15(a, k) = floor(a * k / 2**15) for 0 <= k, split at bit 15: its two
    # products, and the result (monotone in a: extreme at the ends)
    c.add(N, f"{what}>>15 * {kname}", _mul(_shr(a, 15), (k, k)))
    c.add(N, f"{what}&32767 * {kname}", (0, 32767 * k))
    return adam_core.mul_q15(a[0], k), adam_core.mul_q15(a[1], k)


def _isqrt(c: _Bounds, N: int, n: Interval) -> int:
    # adam.isqrt(n) for n in 0..n[1]: its argument (the loop is exact below 2**30) and its
    # sum r + b. After the step with bit b = 4**j, r = y * 4**j with y = isqrt(n >> 2j), so the
    # next sum is at most isqrt(n) * 2**j + 4**(j-1) (j at most J, 4**J the first b <= n;
    # the first sum is 4**J itself). Returns isqrt(n[1]).
    c.add(N, "isqrt argument", n, (0, SMALL_MAX))
    top = 1 << 28
    while top > n[1] and top > 1:
        top >>= 2
    r = adam_core.isqrt(n[1])
    c.add(N, "isqrt r + b", (0, max(top, r * math.isqrt(top) + (top >> 2))))
    return r


def _adam_kernel(c: _Bounds, N: int, term: Interval, G: Interval, batch_max: int, kg: int,
                 c1: int, c2: int) -> Interval:
    """The Adam kernel's intermediates for one layer, whose gradient sums hold up to
    batch_max terms from `term` (G: their bound); returns the step before decay."""
    half = batch_max >> 1
    c.add(N, "G + count/2", (G[0], G[1] + half))
    c.add(N, "count/2 - G", (-G[1], half - G[0]))
    # the mean over `count` samples of a sum of `count` terms, for every count
    h = (0, 0)
    for n in range(1, batch_max + 1):
        g = _terms(term, n)
        h = _join(h, (_round_div(g[0], n), _round_div(g[1], n)))
    x = c.add(N, "mean gradient x", (h[0] << (kg - 1), h[1] << (kg - 1)) if kg
              else _shr(h, 1))
    # m += floor((x - m) c1 / 2**15), 0 <= c1 <= 2**15, moves m towards x, never past it (the
    # floor of a value between x - m and 0 lies between the two integers): from m = 0, every
    # m lies in the hull of 0 and every x
    M = c.add(N, "m", _join(x, (0, 0)))
    _mul_q15(c, N, "(x - m)", c.add(N, "x - m", (x[0] - M[1], x[1] - M[0])), c1, "c1")
    # x*x as a*a * 4**k, a the top 12 bits of |x| (|x| shifted up to 2**11 or more, or down
    # below 2**12), k from -11 to |x|'s bit length - 12. v's exponent e becomes max(e, k) and
    # then only falls, never below -11 (from -11: e <= the largest k); its mantissa lies
    # between f and a*a, or below 2**22 before a shift by 2: below 2**24 throughout
    B = adam_core.BIAS
    xmax = max(-x[0], x[1])
    e_max = max(-B, xmax.bit_length() - 12)
    if xmax:
        c.add(N, "a << 1", (0, min(xmax, 2047) << 1))
    sq = c.add(N, "x*x mantissa", (0, 4095 ** 2 if xmax else 0))
    f_max = max(sq[1], ((1 << 22) - 1) << 2 if e_max > -B else 0)
    _mul_q15(c, N, "(x*x - f)", c.add(N, "x*x - f", (-f_max, sq[1])), c2, "c2")
    if e_max > -B:
        c.add(N, "f << 2", (0, ((1 << 22) - 1) << 2))
    c.add(N, "v (E + 11 << 25 | F)", (0, ((e_max + B) << 25) | f_max))
    r = _isqrt(c, N, (0, f_max))
    # rho = (|m| >> e) * 4096 // r below the clamp |m| >> e >= 8 r: there |m| >> e <= 8 r - 1;
    # for e < 0, (|m| << -e) * 4096 // r below the clamp |m| >= ceil(8 r / 2**-e): there
    # |m| << -e <= 8 r - 1 too
    mabs = c.add(N, "|m|", (0, max(-M[0], M[1])))
    rr = max(r, 1)
    c.add(N, "r << 3", (8, rr << 3))
    c.add(N, "8 r + 2**-e - 1", (8, (rr << 3) + (1 << B) - 1))
    c.add(N, "|m| << -e", (0, (rr << 3) - 1))
    c.add(N, "|m| << 12", (0, min(mabs[1], (rr << 3) - 1) << 12))
    rho = c.add(N, "rho", (0, max(adam_core.RHO_MAX, (8 << 12) - 1)), (0, adam_core.RHO_MAX))
    p = c.add(N, "rho*am", _mul(rho, (0, adam_core.AM_MAX)))
    return _clip((-p[1], p[1]), -V_MAX, V_MAX)  # >> u, u >= 0, the sign of m, the clamp


def _adam_scalars(c: _Bounds, c1: int, c2: int, lr_m: int) -> None:
    """Adam.update's scalars over every t: beta**t in Q28, kept in [0, 2**28] and falling
    (p -> floor(p (2**15 - c) / 2**15)); the bias correction sqrt(1 - beta2**t) / (1 -
    beta1**t) in Q12, largest at the first update (beta1**t at its largest) and beta2**t at
    its least (0); lr_m times it; the layer multiplier shifted up (adam.layer_am)."""
    one = adam_core.ONE28
    for name, k in (("beta1**t", 32768 - c1), ("beta2**t", 32768 - c2)):
        _mul_q15(c, 0, name, (0, one), k, "beta")
    p1 = adam_core.mul_q15(one, 32768 - c1)
    d = c.add(0, "1 - beta1**t", (one - p1, one))
    d_min = max(1, d[0] >> 14)
    r = _isqrt(c, 0, c.add(0, "1 - beta2**t", (0, one)))
    num = c.add(0, "correction numerator", (0, r << 12))
    corr = c.add(0, "bias correction", (0, num[1] // d_min))
    c.add(0, "lr_m * correction", (0, lr_m * corr[1]))
    c.add(0, "am << -u", (0, adam_core.AM_MAX << 14))


def _adam_settings(qnet: QuantNet, hyper: Hyper | None, c: _Bounds) -> bool:
    # what the core refuses of a net with Adam, one line each; whether the bounds apply
    assert qnet.adam is not None
    c1, c2 = qnet.adam
    ok = True
    try:
        adam_core.check(c1, c2)
    except ValueError as err:
        c.problem(f"net: {err}")
        ok = False
    if qnet.momentum:
        c.problem("net: Adam replaces momentum: a net with Adam has no momentum buffers "
                  "(momentum=False)")
    if hyper is not None and hyper.momentum > 0:
        c.problem(f"net: momentum {hyper.momentum:g} set for a net with Adam (its beta1 is "
                  "the momentum)")
    return ok



# -- SDLM (edgebp/sdlm.py) --


class _Named:
    """Collects bounds under a prefix, joining those of one name (act_bwd's twice on the
    curvature), for _Bounds.add when done."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.got: dict[tuple[int, str], tuple[Interval, Interval]] = {}

    def add(self, layer: int, what: str, iv: Interval, limit: Interval = SMALL) -> Interval:
        key = (layer, self.prefix + what)
        old = self.got.get(key)
        self.got[key] = (iv if old is None else _join(old[0], iv), limit)
        return iv

    def done(self, c: _Bounds) -> None:
        for (layer, what), (iv, limit) in self.got.items():
            c.add(layer, what, iv, limit)


CURV = "curvature: "
CURV_RANGE = (0, Q_MAX)  # what sq_t and curv_acc take: 0 <= C, h < 2**15


def _requant_up(a: Interval, s: int) -> Interval:
    # fixed.requant is monotone for every shift (0 stays 0): the ends map to the ends
    return requant(a[0], s), requant(a[1], s)


def _curv_square(c: _Bounds, N: int, act: int, e: Interval, a: Interval, alpha: int,
                 z: Interval) -> Interval:
    # act_bwd twice on e >= 0: e f' rounded has the sign of f' (or is 0), so the second
    # product is >= 0: the result is f'**2 e >= 0
    p = _Named(CURV)
    d = _act_backward(p, N, act, e, a, alpha, z)  # type: ignore[arg-type]
    d = _act_backward(p, N, act, d, a, alpha, z)  # type: ignore[arg-type]
    p.done(c)
    return max(0, d[0]), max(0, d[1])


def _sdlm_curvature(c: _Bounds, lay: Layout, sd: tuple, A: list[Interval],
                    Z: list[Interval]) -> list[Interval]:
    """Sdlm.curvature's intermediates: C per layer from the output down, then curv_acc's;
    returns the range of the running h of each layer (weights and biases)."""
    _, _, gamma, fc, fh = sd
    L = len(lay.layers)
    alpha = lay.alpha
    out = lay.layers[-1]
    C: list[Interval] = [(0, 0)] * L
    a = A[L]
    if lay.loss == fixed.MSE:
        C[L - 1] = _curv_square(c, L, out.act, (16384, 16384), a, alpha, Z[L - 1])
    else:
        # p (1 - p), p in Q14 (a softmax or sigmoid output in [0, 16384])
        top = min(max(8192, a[0]), a[1])
        vals = [v * (16384 - v) for v in (a[0], a[1], top)]
        C[L - 1] = _rnd(c.add(L, CURV + "p*(1-p)", (min(vals), max(vals))), 14)
    c.add(L, CURV + "C", C[L - 1], CURV_RANGE)
    w = 32768  # |W| of any int16 weight
    for l in range(L - 1, 0, -1):
        y = lay.layers[l]
        N = l + 1
        kq = ceil_log2(y.n_out)
        sq = 2 * y.sw - 15 + fc[l] - kq - fc[l - 1]
        cmax = max(C[l][1], 0)
        p1 = c.add(N, CURV + "|W| C", (0, w * cmax))
        p2 = c.add(N, CURV + "(|W| C >> 15) |W|", (0, (p1[1] >> 15) * w))
        acc = c.add(N, CURV + "sq_t sum", _terms(_shr(p2, kq), y.n_out))
        e = _requant_up(acc, sq)
        C[l - 1] = c.add(l, CURV + "C", _curv_square(c, l, lay.layers[l - 1].act, e, A[l],
                                                     alpha, Z[l - 1]), CURV_RANGE)
    # curv_acc: h += round((x - h) gam / 2**14), gam <= 2**14 (max(gamma, 2**14 // (n + 1))):
    # the step is a rounding of a value between 0 and x - h, so h stays between h and x, and
    # from h = 0 in the hull of 0 and every sample's x
    gmax = max(gamma, sdlm_core.ONE_Q14)
    H: list[Interval] = []
    for l, y in enumerate(lay.layers):
        N = l + 1
        cmax = max(C[l][1], 0)
        amax = max(-A[l][0], A[l][1], 0)
        s_w = fc[l] + 2 * y.sa_in - 15 - fh[l]
        s_b = fc[l] - fh[l]
        p1 = c.add(N, CURV + "C |a|", (0, cmax * amax))
        p2 = c.add(N, CURV + "(C |a| >> 15) |a|", (0, (p1[1] >> 15) * amax))
        x = _join(_requant_up(p2, s_w), _requant_up((0, cmax), s_b))
        x = c.add(N, CURV + "sample h", x, CURV_RANGE)
        h = c.add(N, CURV + "h", (0, x[1]), CURV_RANGE)
        diff = c.add(N, CURV + "sample h - h", (-h[1], x[1]))
        c.add(N, CURV + "(sample h - h) gam", _mul(diff, (0, gmax)))
        H.append(h)
    return H


def _sdlm_step(c: _Bounds, N: int, v: Interval, mu_q: int, fh: int, h: Interval) -> Interval:
    """The sdlm kernel's division of the SGD step v by (mu_q + h) / 2**fh, in two parts:
    q = |v| // den, then (q << fh) + ((|v| - q den) << fh) // den; returns the step."""
    a = max(-v[0], v[1], 0)
    den = c.add(N, "mu_q + h", (mu_q, mu_q + h[1]), (1, (1 << 16) - 1))
    c.add(N, "q * den", (0, a))  # q den <= |v|
    lim = V_MAX >> fh
    q = min(a // den[0], lim)  # beyond lim the step saturates without the second part
    c.add(N, "q << fh", (0, q << fh))
    c.add(N, "remainder << fh", (0, (den[1] - 1) << fh))
    c.add(N, "divided step", (0, (q << fh) + (1 << fh) - 1))
    r = min(V_MAX, a * (1 << fh) // den[0])
    return -r, r


def _sdlm_settings(qnet: QuantNet, hyper: Hyper | None, c: _Bounds) -> list[int] | None:
    # what the core refuses of a net with SDLM, one line each; mu_q per layer when the
    # bounds apply
    assert qnet.sdlm is not None
    mu_m, mu_e, gamma, fc, fh = qnet.sdlm
    mus = None
    try:
        sdlm_core.check(qnet.L, mu_m, mu_e, gamma, list(fc), list(fh))
        mus = [sdlm_core.mu_in(mu_m, mu_e, fh[l], l) for l in range(qnet.L)]
    except ValueError as err:
        msg = str(err)
        c.problem(msg if _problem_layer(msg) else f"net: {msg}")
    if qnet.adam is not None:
        c.problem("net: a net has one optimiser: Adam and SDLM both set")
    if qnet.momentum:
        c.problem("net: SDLM replaces momentum: a net with SDLM has no momentum buffers "
                  "(momentum=False)")
    if hyper is not None and hyper.momentum > 0:
        c.problem(f"net: momentum {hyper.momentum:g} set for a net with SDLM (it has none)")
    return mus


# the most combinations of weight formats the proof of a net whose formats follow its
# weights visits
MAX_COMBINATIONS = 4096


def window_formats(qnet: QuantNet):
    """Every combination of weight formats the windows of qnet.dyn allow, as copies of qnet
    (dyn None) in those formats and the formats that follow them (edgebp.dynfmt.derived)."""
    assert qnet.dyn is not None
    lo, hi = qnet.dyn
    for sw in itertools.product(*(range(a, b + 1) for a, b in zip(lo, hi, strict=True))):
        sa, sd = dynfmt_core.derived(qnet.acts, qnet.shift_a, qnet.shift_d, qnet.shift_w,
                                     list(sw))
        yield replace(qnet, shift_w=list(sw), shift_a=sa, shift_d=sd, dyn=None)


def _check_windows(qnet: QuantNet, hyper: Hyper | None, x_range: Interval | None,
                   t_range: Interval | None) -> RangeReport:
    assert qnet.dyn is not None
    lo, hi = qnet.dyn
    L = qnet.L
    if len(lo) != L or len(hi) != L:
        raise RangeError([f"weight format windows for {len(lo)}, {len(hi)} layers, not {L}"])
    for l in range(L):
        if not 0 <= lo[l] <= qnet.shift_w[l] <= hi[l] <= 24:
            raise RangeError([f"layer {l + 1}: weight format Q{qnet.shift_w[l]} outside its "
                              f"window Q{lo[l]}..Q{hi[l]} (at most Q24)"])
    n = math.prod(h - w + 1 for w, h in zip(lo, hi, strict=True))
    if n > MAX_COMBINATIONS:
        raise RangeError([f"net: the windows of weight formats make {n} combinations, more "
                          f"than the {MAX_COMBINATIONS} the range proof visits: narrow them"])

    def prove(q: QuantNet) -> RangeReport:
        lay = core_layout(q)
        lay.s_f_least = -15
        return check_ranges(q, hyper, x_range=x_range, t_range=t_range, layout=lay)

    kg = ceil_log2(qnet.batch_max)
    lr_e = None if hyper is None else hyper.fixed()["lr_e"]

    def reached(q: QuantNet) -> bool:
        # the board makes no move that takes an update shift below zero at its learning rate
        # (edgebp.dynfmt.allowed): with that rate known, the formats where one is are never
        # reached
        return lr_e is None or all(
            lr_e + q.shift_d[l] + q.shift_a[l] - kg - q.shift_w[l] - 16 >= 0
            for l in range(q.L))

    for q in window_formats(qnet):
        if q.shift_w != list(qnet.shift_w) and reached(q):
            try:
                prove(q)
            except RangeError as err:
                fmt = ", ".join(f"Q{w}" for w in q.shift_w)
                raise RangeError([f"{p} (at weight formats {fmt} of the windows)"
                                  for p in err.problems], err.report) from None
    return prove(replace(qnet, dyn=None))


def check_ranges(qnet: QuantNet, hyper: Hyper | None = None, *,
                 x_range: Interval | None = None, t_range: Interval | None = None,
                 layout: Layout | None = None) -> RangeReport:
    """Prove that no intermediate of the core leaves [-2**30, 2**30) and no stored value
    leaves int16, for any int16 weights, inputs in x_range (default: any int16), targets
    in t_range (default: any int16) and at most batch_max samples per gradient sum.

    Bounded, per layer: forward products W*x and B*one, their guarded sum, z, the activation
    (LUT interpolation, z*gate, leaky product, softmax's exp argument, sum, numerator); the loss
    (a - t, its square, the BCE and -log products); backward products W*d, their guarded
    sum, the error sent down, the derivative products, the deltas; the gradient products
    and sums GW, GB; the update's (G >> 8) * m, decay and momentum products, step and new
    weight; the update's random-number steps. For a net with Adam, the Adam kernel's
    intermediates in place of SGD's update, and Adam.update's scalars (layer "net"); Adam
    settings the core refuses (betas outside their Q15 ranges, momentum beside Adam) are
    refused in one line. For a net with SDLM, its curvature pass and its division of the
    step (see the module's note); SDLM settings the core refuses (mu, gamma or a format
    outside its range, mu outside Q(fh), momentum beside SDLM) are refused in one line.
    Refused, with the layer: any bound outside its limit; a requant shift below zero (the
    accumulator has fewer fractional bits than its result claims, and for shifts <= -16
    edgebp.fixed.requant maps 0 to 32767); a learning rate the formats cannot represent;
    batch > batch_max; formats the core refuses.

    hyper=None bounds the update for every setting the core accepts. Raises RangeError with
    the report attached when anything is refused; returns the report otherwise.

    A net whose weight formats follow the weights (qnet.dyn, edgebp/dynfmt.py) is proved at
    every combination of its layers' formats the windows allow (window_formats: with the
    activation and delta formats that follow them; at most MAX_COMBINATIONS) that the board
    can reach at hyper's learning rate, where a forward shift may fall to -15; the report
    returned is that of its formats now.
    """
    if qnet.dyn is not None and layout is None:
        return _check_windows(qnet, hyper, x_range, t_range)
    lay = layout or core_layout(qnet)
    c = _Bounds()
    L = len(lay.layers)
    x = x_range or (-32768, 32767)
    t_any = t_range or (-32768, 32767)
    W = INT16
    alpha = lay.alpha
    kg = lay.kg
    out = lay.layers[-1]
    lr_e = None
    if hyper is not None:
        h = hyper.fixed()
        lr_e = h["lr_e"]
        mu, c_m = h["mu"], h["c_m"]
        c_s = h["c_e"] - FV if c_m else 0
    else:
        mu, c_m, c_s = 255, 255, 0  # the largest the core's setters accept
    adam = qnet.adam is not None
    c1, c2 = qnet.adam or (0, 0)
    adam_ok = adam and _adam_settings(qnet, hyper, c)
    if adam:
        mu = 0  # Adam's kernel has no momentum term
    if adam_ok:
        _adam_scalars(c, c1, c2, 255 if hyper is None else h["lr_m"])
    sdlm = qnet.sdlm is not None
    sdlm_mu = _sdlm_settings(qnet, hyper, c) if sdlm else None
    if sdlm:
        mu = 0  # SDLM's kernel has no momentum term

    # forward
    A = [x]
    Z = []
    for l, y in enumerate(lay.layers):
        N = l + 1
        bias = c.add(N, "B*one", _mul(W, (y.one, y.one)))
        prod = c.add(N, "W*x", _mul(W, A[l]))
        acc = c.add(N, "forward sum", _add(_shr(bias, y.k), _terms(_shr(prod, y.k), y.n_in)))
        z = c.add(N, "z", _requant(acc, y.s_f), INT16)
        Z.append(z)
        A.append(c.add(N, "a", _act_forward(c, N, y.act, z, alpha, y.n_out, lay.logit_k),
                       INT16))

    # loss and output delta
    a = A[L]
    if lay.loss == fixed.SOFTMAX_CE:
        c.add(L, "-log p product", (0, _nlog_product(max(a[0], 1))))
        d = c.add(L, "delta", (a[0] - 16384, a[1]), INT16)
    elif lay.loss == fixed.BCE:
        n1 = _nlog(max(a[0], 1))
        n2 = _nlog(max(16384 - a[1], 1))
        c.add(L, "-log p product", (0, max(_nlog_product(a[0]), _nlog_product(16384 - a[1]))))
        c.add(L, "BCE log products", (0, 16384 * max(n1, n2)))
        c.add(L, "sample loss", (0, out.n_out * max(n1, n2)))
        d = c.add(L, "delta", (a[0] - 16384, a[1]), INT16)
    else:
        diff = c.add(L, "a - t", (a[0] - t_any[1], a[1] - t_any[0]))
        err = _clip(diff, -Q_MAX, Q_MAX)
        sq = c.add(L, "error^2", (0, max(err[0] * err[0], err[1] * err[1])))
        c.add(L, "loss term", _rnd(sq, 2 * out.sa_out - 11))
        d = c.add(L, "delta", _act_backward(c, L, out.act, err, a, alpha, Z[L - 1]), INT16)

    # backward through the layers
    D: list[Interval] = [(0, 0)] * L
    D[L - 1] = d
    for l in range(L - 1, 0, -1):
        y = lay.layers[l]
        N = l + 1
        prod = c.add(N, "W*d", _mul(W, D[l]))
        acc = c.add(N, "backward sum", _terms(_shr(prod, y.kb), y.n_out))
        e = c.add(l, "error", _requant(acc, y.s_b), INT16)
        D[l - 1] = c.add(l, "delta", _act_backward(c, l, lay.layers[l - 1].act, e, A[l],
                                                   alpha, Z[l - 1]), INT16)

    H: list[Interval] = []
    if sdlm_mu is not None:
        assert qnet.sdlm is not None
        H = _sdlm_curvature(c, lay, qnet.sdlm, A, Z)

    # gradient sums and the update
    for l, y in enumerate(lay.layers):
        N = l + 1
        gp = c.add(N, "d*x", _mul(D[l], A[l]))
        G = c.add(N, "gradient sum", _terms(_shr(gp, kg), lay.batch_max))
        bp = c.add(N, "d*one", _mul(D[l], (y.one, y.one)))
        GB = c.add(N, "bias gradient sum", _terms(_shr(bp, kg), lay.batch_max))
        g = _join(G, GB)
        if adam:
            v = (0, 0)
            if adam_ok:
                v = _adam_kernel(c, N, _join(_shr(gp, kg), _shr(bp, kg)), g, lay.batch_max,
                                 kg, c1, c2)
            dp = c.add(N, "w*c_m", _mul(W, (0, c_m)))
            step = c.add(N, "step", _add(v, _rnd(dp, c_s) if c_s > 0 else dp))
            moved = _shr(_add(_clip(step, -V_MAX, V_MAX), (0, 255)), FV)
            c.add(N, "new weight", (W[0] - moved[1], W[1] - moved[0]))
            continue
        scaled = c.add(N, "(G>>8)*m", _mul(_shr(g, 8), (128, 256)))
        u = 0
        if hyper is not None and lr_e is not None:
            u = lr_e + y.sd + y.sa_in - kg - y.sw - 16
            if u < 0:
                c.problem(f"layer {N}: learning rate {hyper.lr:g} too large for its formats: "
                          f"the largest learning rate this layer allows is "
                          f"{max_lr_layer(y, kg):.4g} (the whole net: {max_lr(qnet):.4g})")
                u = 0
        v = _clip(_shr(scaled, u), -V_MAX, V_MAX)
        if sdlm:
            v = (0, 0)
            if sdlm_mu is not None and qnet.sdlm is not None:
                v = _sdlm_step(c, N, _shr(scaled, u), sdlm_mu[l], qnet.sdlm[4][l], H[l])
        dp = c.add(N, "w*c_m", _mul(W, (0, c_m)))
        decay = _rnd(dp, c_s) if c_s > 0 else dp
        mp = c.add(N, "V*mu", _mul((-V_MAX, V_MAX), (0, mu)))
        step = c.add(N, "step", _add(_add(v, decay), _rnd(mp, MU_SHIFT)))
        step = _clip(step, -V_MAX, V_MAX)
        moved = _shr(_add(step, (0, 255)), FV)
        c.add(N, "new weight", (W[0] - moved[1], W[1] - moved[0]))

    m30 = 0x3FFFFFFF
    c.add(0, "rng shift by 9", (0, (m30 >> 9) << 9))
    c.add(0, "rng shift by 12", (0, (m30 >> 12) << 12))

    # what the core would refuse, or would compute inexactly
    for l, y in enumerate(lay.layers):
        N = l + 1
        if y.s_f < lay.s_f_least:
            c.problem(f"layer {N}: forward requant shift {y.s_f} < {lay.s_f_least}: z in "
                      f"Q{y.sz} claims "
                      f"{-y.s_f} more fractional bits than W*x has (raise shift_w or lower "
                      "the output format)")
        if l > 0 and y.s_b < 0:
            c.problem(f"layer {N}: backward requant shift {y.s_b} < 0: the delta of layer "
                      f"{l} in Q{y.sd_prev} claims {-y.s_b} more fractional bits than W^T d "
                      "has (lower shift_d of that layer)")
        if l == L - 1 and lay.loss == fixed.MSE and y.sa_out < MSE_MIN_SHIFT:
            c.problem(f"layer {N}: mse output in Q{y.sa_out}, the core needs at least "
                      f"Q{MSE_MIN_SHIFT}")
    if hyper is not None:
        if hyper.batch > lay.batch_max:
            c.problem(f"net: batch {hyper.batch} exceeds batch_max {lay.batch_max}, the number "
                      "of samples the gradient sums are guarded for")
        if hyper.momentum > 0 and not qnet.momentum and not adam and not sdlm:
            c.problem("net: momentum requested but the net has no momentum buffers")
        if c_m and h["c_e"] < FV:
            c.problem(f"net: lr * weight_decay = {hyper.lr * hyper.weight_decay:g} is at "
                      "least one weight per step")
    if not 1 <= lay.batch_max <= MAX_BATCH:
        c.problem(f"net: batch_max {lay.batch_max} outside 1..{MAX_BATCH}")
    if not c.report.problems:
        _core_accepts(qnet, c)

    report = c.report
    if report.problems:
        report.problems.sort(key=_problem_layer)
        raise RangeError(report.problems, report)
    return report


def _core_accepts(qnet: QuantNet, c: _Bounds) -> None:
    # whatever else the core's constructor refuses
    try:
        Net(list(qnet.sizes), list(qnet.acts), list(qnet.shift_a), list(qnet.shift_w),
            list(qnet.shift_d), qnet.loss, max(1, min(qnet.batch_max, MAX_BATCH)),
            False, qnet.alpha_q)
    except ValueError as err:
        msg = str(err)
        c.problem(msg if _problem_layer(msg) else f"net: the core refuses: {msg}")


def _problem_layer(msg: str) -> int:
    m = re.match(r"layer (\d+): ", msg)
    return int(m.group(1)) if m else 0


def max_lr_layer(y: LayerLayout, kg: int) -> float:
    return 255 * 2.0 ** -(16 + kg + y.sw - y.sd - y.sa_in)


def max_lr(qnet: QuantNet) -> float:
    """The largest learning rate Net.set_lr accepts for qnet's formats."""
    lay = core_layout(qnet)
    return min(max_lr_layer(y, lay.kg) for y in lay.layers)


def lr_fits(qnet: QuantNet, lr: float) -> bool:
    """Whether Net.set_lr accepts `lr` (as its 8-bit mantissa and exponent) for qnet's
    formats: e + shift_d + shift_a - kg - shift_w - 16 >= 0 in every layer."""
    lay = core_layout(qnet)
    e = mantissa_exponent(lr)[1]
    return all(e + y.sd + y.sa_in - lay.kg - y.sw - 16 >= 0 for y in lay.layers)
