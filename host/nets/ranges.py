"""Static range analysis: proves that the core runs a QuantNet exactly, inside the small ints.

check_ranges(qnet, hyper) bounds every intermediate of edgebp/kernels.py and edgebp/net.py by
interval arithmetic, for any int16 weights (the core saturates them at +-32767), any int16
input (or a declared input interval) and any int16 targets, and at most batch_max samples per
gradient sum; RangeError names the layer of each problem. core_layout(qnet) is what the core
derives from the formats (guards, requant shifts), max_lr(qnet) the largest learning rate
they represent.

Limits: a MicroPython small int on a 32-bit port, [-2**30, 2**30), for every intermediate;
the core's symmetric int16 storage, [-32767, 32767], for every stored value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from edgebp import fixed, kernels
from edgebp.fixed import (
    ALPHA_SHIFT,
    FV,
    MU_SHIFT,
    Q_MAX,
    SMALL_MAX,
    V_MAX,
    Z_SHIFT_SQUASH,
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


def core_layout(qnet: QuantNet) -> Layout:
    """The guards and requant shifts the core uses for qnet (mirrors Net.__init__; a test
    checks the two agree)."""
    layers = []
    for l in range(qnet.L):
        act = qnet.acts[l]
        sz = Z_SHIFT_SQUASH if act in _SQUASH else qnet.shift_a[l + 1]
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
    return Layout(layers, qnet.loss, ceil_log2(qnet.batch_max), qnet.batch_max, qnet.alpha_q)


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
        name = "2**30-1" if self.limit == SMALL else "32767 (int16)"
        if self.hi > self.limit[1]:
            return f"{where}: {self.what} can reach {self.hi} > {name}"
        low = "-2**30" if self.limit == SMALL else "-32767 (int16)"
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
            lim = "2**30" if b.limit == SMALL else "int16"
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


def _act_forward(c: _Bounds, N: int, act: int, z: Interval, alpha: int, n: int) -> Interval:
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
    # softmax: exp_neg(max - z) in Q14, summed, then divided
    diff = c.add(N, "zmax - z", (0, z[1] - z[0]))
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
    weight; the update's random-number steps. Refused, with the layer: any bound outside
    its limit; a requant shift below zero (the accumulator has fewer fractional bits than
    its result claims, and for shifts <= -16 edgebp.fixed.requant maps 0 to 32767); a
    learning rate the formats cannot represent; batch > batch_max; formats the core refuses.

    hyper=None bounds the update for every setting the core accepts. Raises RangeError with
    the report attached when anything is refused; returns the report otherwise.
    """
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
        A.append(c.add(N, "a", _act_forward(c, N, y.act, z, alpha, y.n_out), INT16))

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

    # gradient sums and the update
    for l, y in enumerate(lay.layers):
        N = l + 1
        gp = c.add(N, "d*x", _mul(D[l], A[l]))
        G = c.add(N, "gradient sum", _terms(_shr(gp, kg), lay.batch_max))
        bp = c.add(N, "d*one", _mul(D[l], (y.one, y.one)))
        GB = c.add(N, "bias gradient sum", _terms(_shr(bp, kg), lay.batch_max))
        g = _join(G, GB)
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
        if y.s_f < 0:
            c.problem(f"layer {N}: forward requant shift {y.s_f} < 0: z in Q{y.sz} claims "
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
        if hyper.momentum > 0 and not qnet.momentum:
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
