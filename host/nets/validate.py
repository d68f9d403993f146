"""Gradient validation: the core's integer gradients against the float64 reference.

For a QuantNet and a batch, the core (edgebp.net.Net: forward and backward per sample, no
update) sums its gradients in GW, GB; dequantised, GW * grad_scale(l) / count is the batch's
mean gradient. The reference (reference.FloatNet) computes the same mean at the dequantised
weights, inputs x_q 2**-shift_a[0] and targets as the core reads them. Per layer, W and B
together as one vector (the bias is the weight on the constant input):

    cosine       g_q . g_f / (|g_q| |g_f|)
    rel L2       |g_q - g_f| / |g_f|
    bound        the rel L2 allowed: propagated from the net's formats and tables (below)
    max err      max |g_q - g_f| in LSB of the gradient sums, grad_scale(l) / count

The integer sums can come from any runtime: compare_gradients takes them raw;
core_gradient_script / parse_gradient_output produce them under MicroPython.

Where the error comes from (LSB = of the format named):
  tables   sigmoid <= 4.08 LSB Q14, tanh <= 25.6 LSB Q14 (129 points, h = 1/8:
           h**2/8 max|f''| + 1 for the two roundings), exp_neg <= 2.91 LSB Q14, softmax
           <= max(1, n-1) 2.91 + 0.5 LSB Q14, nlog_q14 <= 3.15 LSB Q12. Measured over every
           input: 3.85, 24.98, 2.40, (1.4 at n=2, 2.3 at n=10, 3.3 at n=32), 1.92.
  formats  z, a, delta rounded to 1/2 LSB of Q12 / Q14 / shift_d; the guard shifts floor each
           product (at most n_in + 1 units of 2**(k - shift_w - shift_a) per z, at most one
           unit of grad_scale per sample in a gradient sum).
  depth    an error e_a in a layer's outputs reaches the next z through |W| and the loss's
           delta (MSE: a - t, directly). In relative terms a layer adds about e_a / rms(a):
           0.3% per tanh layer (1.6e-3 against outputs of ~0.5), 0.05% per sigmoid layer,
           a few 0.01% for rounding alone. With the exactly rounded functions in place of
           the tables, the worst tanh nets measured below drop from 5.2% to 0.11%: the tanh table
           dominates.
  kinks    at a ReLU kink the gradient jumps; a unit whose z lies within the forward error
           bound of 0 (z_error_bounds) may take either side in the core, and one such sample
           of 32 moves a layer's gradient by up to 26%. The core reports its sides
           (Z > 0) and the reference follows them at those units only.

The bound. Each layer passes when its rel L2 is within its own bound, and its cosine at least
sqrt(1 - bound**2) (what an error that small leaves). The bound is Thresholds.safety (2) times
the error of the layer's mean gradient that the net's formats and tables lead to on these
samples, relative to |g_ref|, propagated through the reference's own values per unit and
sample: forward, a z's error is its inputs' errors through W, the guard floors, its rounding
and any saturation at the edge of its format; a's adds f'(z) times it and the table bound
(above); backward, the output error is a's (the targets are exact), an error sent down is
the deltas' errors through W^T plus its floors and rounding, and a delta's adds |e| times the
error of f' (computed from a in Q14) and its rounding; a gradient entry's error is
|a| e_delta + |delta| e_a + e_delta e_a + one LSB of the sum, averaged over the samples (a
table's error is systematic: they may share a sign). Local worst cases add; the terms of a
dot product add in quadrature (their signs are independent), which is what keeps the bound
near the measured error through eight layers (worst cases added through |W| overshoot it by
10**5 there). So the bound follows the net: a delta that is a sum of nearly cancelling terms
(a width-1 layer: 34-40-57-1-6-33-46-32-26 tanh, one sample, measures 0.25 on layers 1-3 at
cosine 0.999999) has a large error relative to itself, and every layer below it gets a large
bound; a layer that passes with a bound above Thresholds.weak (0.5) is marked weak, since a
gradient off by 2x would pass there too.

Measured (python tests/test_validate.py: 35 activation x loss pairs; 7 layouts from 2 to 8
layers, up to 64 inputs; 10 seeds; batches of 1, 32 and 128; batch_max 8; formats calibrated
on the batch; 26,250 layer comparisons): none fails; the measured error is at most 0.97 of
the propagated one (so at most 0.48 of the bound); the largest bound of a net with identity,
ReLU or leaky-ReLU hidden layers is 0.26, and 196 layers, all of nets with sigmoid or tanh
hidden layers, are weak. What a broken gradient gives
stays outside it: a sign flip (cosine -1), a shift off by one (rel 0.5 or 1), units exchanged,
a saturated delta format (not covered by the bound); tests/test_validate.py shows each failing,
in the width-1 net too. Worst cosine 0.99920, worst rel L2 0.158 (a tanh net with a ReLU
output, 8 layers); layers whose deltas use fewer than 8 bits of their format have bounds to
match and pass, mostly as weak: the delta-bits column says why.

The max-err column is in LSB of the gradient sums (grad_scale / count), far finer than any
delta's: one LSB of a delta times an activation a_q is a_q 2**-kg LSB of a sum, so it reads
1e4..1e7 on sound nets. It is for diagnosis (a wrong shift shows as a power of two), not
judged. The delta-bits column says whether the delta format suits the deltas: log2 of the
largest per-sample |delta| (or error before f', which shares the buffer) in LSB of shift_d.
Above 15 the core saturates it; below 8 the rounding of the deltas alone costs several per
cent (deep sigmoid nets at init reach the core's finest format, Q24, with deltas of 1e-6).

Two conditions for meaningful numbers: the gradient must not vanish (validate away from a
minimum: initial weights, random targets), since the errors do not shrink with it; and
the sides of the ReLU kinks must be passed when the net has ReLU or leaky-ReLU layers.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field

import numpy as np

from edgebp import fixed
from edgebp.host.nets import actbounds
from edgebp.host.nets.reference import act_second_derivative, from_qnet

# -- error bounds of the core's function tables, in LSB of their output format --
#
# A table of f on a grid of step h, rounded to the nearest LSB, read by linear interpolation
# whose own result is rounded: |error| <= h**2/8 * max|f''| (interpolation) + 1/2 (table)
# + 1/2 (interpolation rounding).

_SIG_F2 = 1 / (6 * math.sqrt(3))  # max |sigmoid''|, at z = ln(2 +- sqrt 3)
_TANH_F2 = 4 / (3 * math.sqrt(3))  # max |tanh''|, at z = atanh(1/sqrt 3)
_LOG2E_Q12 = round(math.log2(math.e) * 4096)  # the constants of the core, rounded as it does
_LN2_Q12 = round(math.log(2) * 4096)


def _table_bound(h: float, f2: float, bits: int) -> float:
    return h * h / 8 * f2 * 2**bits + 1.0


SIGMOID_BOUND = _table_bound(1 / 8, _SIG_F2, 14)  # Q14 output, z on the Q12 grid
TANH_BOUND = _table_bound(1 / 8, _TANH_F2, 14)


def _exp_neg_bound() -> float:
    # exp(-x) = 2**-y, y = x log2(e) rounded to Q12 with the rounded constant:
    # |dy| <= 1/2 + x |log2(e) - 5909/4096| (Q12), and d(2**-y)/dy = ln2 2**-y, so in Q14
    # 4 ln2 e**-x |dy| <= 4 ln2 (1/2 + 4096 c / e) (x e**-x peaks at x = 1).
    c = abs(math.log2(math.e) - _LOG2E_Q12 / 4096)
    from_y = 4 * math.log(2) * (0.5 + 4096 * c / math.e)
    # the 65-point table of 2**-f, f'' = ln2**2 2**-f; then a rounded shift by the integer
    # part, which only shrinks the table's error (err/2 + 1/2 <= err, as err >= 1)
    table = _table_bound(1 / 64, math.log(2) ** 2, 14)
    return from_y + table


EXP_NEG_BOUND = _exp_neg_bound()  # Q14 output

# swish and mish (edgebp.host.nets.actbounds): the output z * gate in Q12 LSB, the derivative
# table in Q14 LSB; |f'| <= 1.1 for both
GATED_BOUND = {fixed.SWISH: actbounds.SWISH_BOUND, fixed.MISH: actbounds.MISH_BOUND}
GATED_D_BOUND = {fixed.SWISH: actbounds.SWISH_D_BOUND, fixed.MISH: actbounds.MISH_D_BOUND}
_GATED_F1 = 1.1


def softmax_bound(n: int) -> float:
    """Q14 LSB. p_j = e_j / S with e_j off by at most EXP_NEG_BOUND except the largest (exactly
    1.0) and S >= 1.0: |dp_j| <= ((1 - p_j)|de_j| + p_j sum_k!=j |de_k|) / S
    <= max(1, n - 1) EXP_NEG_BOUND, plus 1/2 for the rounded division."""
    return max(1, n - 1) * EXP_NEG_BOUND + 0.5


def _nlog_bound() -> float:
    # -ln(p/2**14) = ((14 - e) - log2(m)) ln 2 with p = m 2**(e-12), m in [4096, 8192).
    # log2(m) from a 65-point table (f'' = -1/((1+f)**2 ln 2)); times the rounded ln 2 (an
    # error of |ln2 - 2839/4096| per unit of (14 - e) - log2 m, at most 14 units); the result
    # rounded; for 8192 <= p < 16384 the mantissa p >> 1 drops a bit (at most 1/2 LSB of ln).
    c = abs(math.log(2) - _LN2_Q12 / 4096)
    table = _table_bound(1 / 64, 1 / math.log(2), 12)
    worst = 0.0
    for e in range(15):
        trunc = 0.5 if e == 13 else 0.0
        worst = max(worst, (14 - e) * 4096 * c + math.log(2) * table + 0.5 + trunc)
    return worst


NLOG_BOUND = _nlog_bound()  # Q12 output, for p in 1..16384 (Q14)


# -- forward error bounds: how far the core's z can be from the reference's --


def z_error_bounds(qnet) -> list[np.ndarray]:
    """Per layer and unit, a bound on |z_core - z_ref| (float units) for inputs exact in the
    input format, from: the tables above, the rounding to each format, the floor of each
    guarded product (n_in + 1 products of 2**(k - shift_w - shift_a) at most), and the error
    of the layer's inputs carried through |W|. Saturated values are not covered; they are far
    from the kinks this is used for."""
    Ws, Bs = qnet.float_weights()
    err_a = np.zeros(qnet.sizes[0])
    bounds = []
    for l in range(qnet.L):
        act, sa, sw = qnet.acts[l], qnet.shift_a[l], qnet.shift_w[l]
        sz = qnet.shift_z(l)
        k = fixed.ceil_log2(qnet.sizes[l] + 1)
        s_f = sw + sa - k - sz
        floors = (qnet.sizes[l] + 1) * 2.0 ** (k - sw - sa)
        err_z = np.abs(Ws[l]) @ err_a + floors + (0.5 * 2.0**-sz if s_f > 0 else 0.0)
        bounds.append(err_z)
        if act == fixed.SIGMOID:
            # beyond |z| = 8 the core's z saturates: add sigmoid's tail 1 - sigmoid(8)
            err_a = err_z / 4 + (SIGMOID_BOUND + 16384 / (1 + math.exp(8))) * 2.0**-14
        elif act == fixed.TANH:
            err_a = err_z + (TANH_BOUND + 16384 * (1 - math.tanh(8))) * 2.0**-14
        elif act == fixed.LEAKY:
            # the slope's product is rounded to the output format
            err_a = err_z + 0.5 * 2.0 ** -qnet.shift_a[l + 1]
        elif act in GATED_BOUND:
            err_a = _GATED_F1 * err_z + GATED_BOUND[act] * 2.0**-12
        else:
            err_a = err_z
    return bounds


# -- the integer gradients --

_KINKED = (fixed.RELU, fixed.LEAKY)
_SQUASH = (fixed.SIGMOID, fixed.TANH, fixed.SOFTMAX)


def core_gradients(qnet, Xq, Tq, kernels=None):
    """Gradient sums of the core over the samples Xq (int16, (N, n_0)) with targets Tq (as
    QuantNet.quantize_targets gives them): forward and backward per sample, no update.

    The core sums at most 2**kg samples (kg = ceil_log2(batch_max)) before its sums could
    leave the small-int range, so the samples go in chunks of 2**kg whose sums are added
    here in exact integers. Returns (GW, GB, count, sides): GW[l] int64 (n_{l+1}, n_l),
    GB[l] (n_{l+1},), and for each ReLU / leaky-ReLU layer the side of the kink the core
    took, sides[l] = Z[l] > 0 as a bool (n_{l+1}, N) array (None for other layers).
    """
    Xq = np.asarray(Xq, np.int16).reshape(len(Xq), -1)
    Tq = np.asarray(Tq, np.int16).reshape(len(Tq), -1)
    N, L, sizes = len(Xq), qnet.L, qnet.sizes
    net = qnet.build(kernels=kernels)
    GW = [np.zeros((sizes[l + 1], sizes[l]), np.int64) for l in range(L)]
    GB = [np.zeros(sizes[l + 1], np.int64) for l in range(L)]
    sides = [np.zeros((sizes[l + 1], N), bool) if qnet.acts[l] in _KINKED else None
             for l in range(L)]
    chunk = 1 << net.kg
    for i in range(N):
        net.forward(array("h", Xq[i].astype("<i2").tobytes()))
        for l, side in enumerate(sides):
            if side is not None:
                side[:, i] = np.array(net.Z[l]) > 0
        net.backward(array("h", Tq[i].astype("<i2").tobytes()))
        if net.count == chunk or i == N - 1:
            for l in range(L):
                GW[l] += np.array(net.GW[l], np.int64).reshape(GW[l].shape)
                GB[l] += np.array(net.GB[l], np.int64)
                _zero(net.GW[l])
                _zero(net.GB[l])
            net.count = 0
    return GW, GB, N, sides


def _zero(buf) -> None:
    for p in range(len(buf)):
        buf[p] = 0


# -- the same, as a script for any MicroPython --

_BEGIN = "EDGEBP-GRAD"
_END = "EDGEBP-END"

# the routine, once per script however many nets it runs
_SCRIPT = f"""
from array import array


def _gradients(make, X, T, n0, nt, count, kinked):
    net = make()
    x = array('h', bytes(2 * n0))
    t = array('h', bytes(2 * nt))
    chunk = 1 << net.kg
    sw = [[0] * len(net.GW[l]) for l in range(net.L)]
    sb = [[0] * len(net.GB[l]) for l in range(net.L)]
    sides = [[] for l in range(net.L)]
    for i in range(count):
        for j in range(n0):
            x[j] = X[i * n0 + j]
        for j in range(nt):
            t[j] = T[i * nt + j]
        net.forward(x)
        for l in kinked:
            z = net.Z[l]
            m = 0
            for j in range(len(z)):
                if z[j] > 0:
                    m |= 1 << j
            sides[l].append(m)
        net.backward(t)
        if net.count == chunk or i == count - 1:
            for l in range(net.L):
                for G, s in ((net.GW[l], sw[l]), (net.GB[l], sb[l])):
                    for p in range(len(G)):
                        s[p] += G[p]
                        G[p] = 0
            net.count = 0
    print('{_BEGIN}', count, net.L)
    for l in range(net.L):
        print('GW', l, net.sizes[l + 1], net.sizes[l], ' '.join([str(v) for v in sw[l]]))
        print('GB', l, net.sizes[l + 1], ' '.join([str(v) for v in sb[l]]))
    for l in kinked:
        print('ZS', l, net.sizes[l + 1], ' '.join(['%x' % m for m in sides[l]]))
    print('{_END}')
"""


def core_gradient_script(qnet, Xq, Tq) -> str:
    """Source for MicroPython (or CPython) that builds `qnet` with the core, runs forward and
    backward over the samples without updating, and prints what core_gradients returns:

        EDGEBP-GRAD <count> <L>
        GW <l> <n_out> <n_in> <n_out*n_in integers, row-major>
        GB <l> <n_out> <n_out integers>
        ZS <l> <n_out> <count hex masks: bit j set if unit j had z > 0>   (ReLU/leaky layers)
        EDGEBP-END

    It needs the core (edgebp/) on the device's path; parse_gradient_output reads the output.
    Samples are embedded as int16 little-endian bytes.
    """
    return core_gradient_script_many([(qnet, Xq, Tq)])


def core_gradient_script_many(nets) -> str:
    """core_gradient_script for each (qnet, Xq, Tq) of `nets`, in one source that holds the
    routine once and prints one block per net, in order. On a 192 KiB board the script is
    imported whole: 70 small nets take 28 KB compiled this way, 77 KB as 70 scripts."""
    out = [_SCRIPT]
    for i, (qnet, Xq, Tq) in enumerate(nets):
        Xq = np.asarray(Xq, np.int16).reshape(len(Xq), -1)
        Tq = np.asarray(Tq, np.int16).reshape(len(Tq), -1)
        if len(Xq) != len(Tq) or len(Xq) == 0:
            raise ValueError("need the same positive number of inputs and targets")
        kinked = [l for l, act in enumerate(qnet.acts) if act in _KINKED]
        out.append(qnet.device_source().replace("def make():", f"def _make_{i}():"))
        out.append(
            f"_gradients(_make_{i}, array('h', {Xq.astype('<i2').tobytes()!r}), "
            f"array('h', {Tq.astype('<i2').tobytes()!r}), {Xq.shape[1]}, {Tq.shape[1]}, "
            f"{len(Xq)}, {kinked!r})\n"
        )
    return "".join(out)


def parse_gradient_output(text: str):
    """(GW, GB, count, sides) from the output of core_gradient_script, as core_gradients
    returns them; lines outside the block are ignored. ValueError if the block is missing,
    truncated or malformed."""
    lines = [ln.strip() for ln in text.splitlines()]
    try:
        start = next(i for i, ln in enumerate(lines) if ln.split()[:1] == [_BEGIN])
        end = lines.index(_END, start)
    except (StopIteration, ValueError):
        raise ValueError("no complete gradient block in the output") from None
    head = lines[start].split()
    if len(head) != 3:
        raise ValueError(f"bad gradient header: {lines[start]!r}")
    count, L = int(head[1]), int(head[2])
    found: dict[str, list] = {"GW": [None] * L, "GB": [None] * L, "ZS": [None] * L}
    for ln in lines[start + 1 : end]:
        parts = ln.split()
        kind = parts[0] if parts else ""
        if kind not in found or len(parts) < 3 or not 0 <= int(parts[1]) < L:
            raise ValueError(f"unexpected line in the gradient block: {ln[:60]!r}")
        l, n_out = int(parts[1]), int(parts[2])
        shape: tuple[int, ...]
        if kind == "GW":
            shape, values = (n_out, int(parts[3])), parts[4:]
        else:
            shape, values = (n_out,), parts[3:]
        want = count if kind == "ZS" else math.prod(shape)
        if len(values) != want:
            raise ValueError(f"{kind} {l}: expected {want} values, got {len(values)}")
        if kind == "ZS":
            masks = [int(v, 16) for v in values]
            found[kind][l] = np.array([[(m >> j) & 1 for m in masks] for j in range(n_out)],
                                      bool).reshape(n_out, count)
        else:
            found[kind][l] = np.array([int(v) for v in values], np.int64).reshape(shape)
    GW, GB = found["GW"], found["GB"]
    if any(g is None for g in GW + GB):
        raise ValueError("gradient block lacks a layer")
    return GW, GB, count, found["ZS"]


# -- the comparison --


@dataclass
class Thresholds:
    """How a layer is judged: its relative L2 error against `safety` times the error the
    net's own formats and tables predict for it (gradient_error_bounds), and a cosine the
    bound implies (an error of r |g| leaves a cosine of at least sqrt(1 - r**2)). `weak`:
    a bound above it cannot tell a gradient off by a factor of two from the core's rounding;
    the report says so."""

    safety: float = 2.0
    weak: float = 0.5


@dataclass
class LayerReport:
    layer: int  # 1-based, as in the core's messages
    params: int
    norm: float  # ||g_ref||, the reference gradient of W and B together
    cos: float
    rel: float
    bound: float  # the relative L2 error allowed: safety x the propagated error / ||g_ref||
    max_lsb: float
    # log2 of the largest |delta| (or error before f') of a sample in LSB of shift_d: above 15
    # the core's delta saturates, below ~8 its resolution limits the gradient
    delta_bits: float
    ok: bool

    @property
    def cos_min(self) -> float:
        return cos_floor(self.bound)


def cos_floor(bound: float) -> float:
    """The least cosine an error of at most `bound` |g| leaves (0 from a bound of 1 on: then
    only a gradient turned away fails)."""
    return math.sqrt(1 - bound * bound) if bound < 1 else 0.0


@dataclass
class Report:
    layers: list[LayerReport]
    count: int
    kinks: int = 0  # ReLU / leaky (unit, sample) pairs with |z| within the forward error bound
    kinks_taken: int = 0  # ... where the core took the other side, as did the reference then
    sides_beyond_bound: int = 0  # the core on the other side of a kink farther than the bound
    thresholds: Thresholds = field(default_factory=Thresholds)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.layers)

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "count": self.count,
            "kinks": self.kinks,
            "kinks_taken": self.kinks_taken,
            "sides_beyond_bound": self.sides_beyond_bound,
            "thresholds": dict(self.thresholds.__dict__),
            "layers": [{**r.__dict__, "cos_min": r.cos_min} for r in self.layers],
        }

    def table(self) -> str:
        head = ("layer", "params", "|g_ref|", "cosine", "rel L2", "bound", "max err (LSB of sum)",
                "delta bits", "verdict")
        rows = [head]
        for r in self.layers:
            verdict = "FAIL" if not r.ok else "ok, weak" if r.bound > self.thresholds.weak else "ok"
            rows.append((str(r.layer), str(r.params), f"{r.norm:.4g}", f"{r.cos:.6f}",
                         f"{r.rel:.2e}", f"{r.bound:.2e}", f"{r.max_lsb:.2e}",
                         f"{r.delta_bits:.1f}", verdict))
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        out = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
        out.append(f"{self.count} samples; W and B of each layer together. bound: the largest "
                   f"rel L2 allowed, {self.thresholds.safety:g} x the error the net's formats and "
                   "tables propagate to the layer")
        out.append("max err: the largest error of one gradient entry in units of the gradient "
                   "sums (grad_scale / count), far finer than a delta's LSB, so 1e4..1e7 is "
                   "normal: for diagnosis (a wrong shift is a power of two), not judged")
        weak = [str(r.layer) for r in self.layers if r.ok and r.bound > self.thresholds.weak]
        if weak:
            out.append(f"weak (layer{'s' if len(weak) > 1 else ''} {', '.join(weak)}): a bound "
                       f"above {self.thresholds.weak:g} cannot tell a gradient off by 2x from "
                       "the core's rounding on these samples (deltas small for their format, or "
                       "cancelling behind a narrow layer); validate on other samples")
        if self.kinks:
            out.append(f"ReLU kinks within the forward error: {self.kinks}, on the core's "
                       f"other side: {self.kinks_taken}")
        if self.sides_beyond_bound:
            out.append(f"WARNING: {self.sides_beyond_bound} ReLU units on the other side of "
                       f"their kink beyond the forward error bound")
        verdict = "gradients agree" if self.ok else "gradients DISAGREE"
        out.append(f"{verdict} (per layer: rel L2 <= bound, cosine >= sqrt(1 - bound^2))")
        return "\n".join(out)


def dequantize_batch(qnet, Xq, Tq):
    """Inputs and targets as the core sees them, as floats for the reference."""
    X = np.asarray(Xq, np.float64).reshape(len(Xq), -1) * 2.0 ** -qnet.shift_a[0]
    Tq = np.asarray(Tq).reshape(len(Tq), -1)
    if qnet.loss == fixed.SOFTMAX_CE:
        return X, Tq[:, 0].astype(np.int64)
    if qnet.loss == fixed.BCE:
        return X, np.clip(Tq, 0, 16384) / 16384.0  # the core clamps BCE targets to [0, 1]
    return X, Tq * 2.0 ** -qnet.shift_a[-1]


def _flatten(GW, GB, scales) -> list[np.ndarray]:
    return [np.concatenate([np.asarray(w, np.float64).ravel(), np.asarray(b, np.float64).ravel()])
            * s for w, b, s in zip(GW, GB, scales, strict=True)]


def reference_gradients(qnet, Xq, Tq, sides=None):
    """Mean float64 gradients (W then B, one vector per layer) at the dequantised weights,
    inputs and targets; the kink counts (kinks, taken, beyond) for the Report; per layer
    the bits of the delta format the reference's deltas would use (LayerReport.delta_bits);
    and per layer the propagated error of the core's gradient (gradient_error_bounds).

    The gradient jumps at a ReLU kink, and a z within its forward error bound of 0 may land
    on either side in the core: one such sample among 32 moves a layer's gradient by tens of
    per cent. Where the core's sides are known, the reference takes the core's side at those
    units (and only there: a side taken farther from the kink is counted, not followed)."""
    X, T = dequantize_batch(qnet, Xq, Tq)
    ref = from_qnet(qnet)
    ref.forward(X)
    fprime = ref.derivatives()
    kinks = taken = beyond = 0
    if sides is not None:
        bounds = z_error_bounds(qnet)
        for l, act in enumerate(qnet.acts):
            if act not in _KINKED or sides[l] is None:
                continue
            z = ref.z[l]
            near = np.abs(z) <= bounds[l][:, None]
            other = sides[l] != (z > 0)
            kinks += int(near.sum())
            taken += int((near & other).sum())
            beyond += int((~near & other).sum())
            positive = np.where(near, sides[l], z > 0)
            fprime[l] = np.where(positive, 1.0, 0.0 if act == fixed.RELU else ref.alpha)
    dW, dB = ref.backward(T, fprime)
    bits = [math.log2(max(np.abs(e).max(), np.abs(d).max(), 1e-300)) + qnet.shift_d[l]
            for l, (e, d) in enumerate(zip(ref.error, ref.delta, strict=True))]
    errors = _propagated_errors(qnet, ref, fprime)
    return _flatten(dW, dB, [1.0] * qnet.L), (kinks, taken, beyond), bits, errors


def gradient_error_bounds(qnet, Xq, Tq, sides=None) -> list[float]:
    """Per layer, the error of the core's mean gradient (W and B together, L2, float units)
    that the net's formats and function tables lead to on these samples: see the module's
    header ("The bound") for how it is propagated."""
    return reference_gradients(qnet, Xq, Tq, sides)[3]


def _propagated_errors(qnet, ref, fprime) -> list[float]:
    # Per unit and sample, an error scale of every value the core computes, propagated as the
    # module header describes: local worst cases add, a dot product's terms add in quadrature.
    L, N = qnet.L, ref.a[0].shape[1]
    sizes, acts, W = qnet.sizes, qnet.acts, ref.W
    q14 = 2.0**-14

    def through(M, err):  # a dot product's terms: independent in sign, so in quadrature
        return np.sqrt((M * M) @ (err * err))

    ea = [np.zeros_like(ref.a[0])]  # inputs: exactly what the reference takes
    ezs = []
    for l in range(L):
        act, sa, sw = acts[l], qnet.shift_a[l], qnet.shift_w[l]
        sz = qnet.shift_z(l)
        k = fixed.ceil_log2(sizes[l] + 1)
        floors = (sizes[l] + 1) * 2.0 ** (k - sw - sa)  # the guard shift floors each product
        ez = through(W[l], ea[l]) + floors + (0.5 * 2.0**-sz if sw + sa - k - sz > 0 else 0.0)
        z, a = ref.z[l], ref.a[l + 1]
        if act not in _SQUASH:  # z saturates at the edge of its format (the tables' at +-8)
            ez = ez + np.maximum(np.abs(z) - fixed.Q_MAX * 2.0**-sz, 0.0)
        ezs.append(ez)
        if act == fixed.TANH:
            tail = np.where(np.abs(z) > 8, 1 - math.tanh(8), 0.0)  # z saturates at +-8
            ea.append((1 - a * a) * ez + TANH_BOUND * q14 + tail)
        elif act == fixed.SIGMOID:
            tail = np.where(np.abs(z) > 8, 1 / (1 + math.exp(8)), 0.0)
            ea.append(a * (1 - a) * ez + SIGMOID_BOUND * q14 + tail)
        elif act == fixed.SOFTMAX:  # dp_j = p_j (dz_j - sum_k p_k dz_k)
            ea.append(a * (ez + (a * ez).sum(axis=0, keepdims=True))
                      + softmax_bound(sizes[l + 1]) * q14)
        elif act == fixed.LEAKY:
            ea.append(np.where(z > 0, 1.0, ref.alpha) * ez + 0.5 * 2.0 ** -qnet.shift_a[l + 1])
        elif act == fixed.RELU:
            ea.append(np.where(z > 0, 1.0, 0.0) * ez)
        elif act in GATED_BOUND:  # a = z gate(z) from a table, rounded to Q12
            ea.append(np.abs(fprime[l]) * ez + GATED_BOUND[act] * 2.0**-12)
        else:
            ea.append(ez)

    def times_fprime(l: int, e, ee):
        # delta = f' e, f' from the output a in Q14 (1 - a^2, a (1 - a)), the product rounded
        act, a = acts[l], ref.a[l + 1]
        if act == fixed.TANH:
            ef = 2 * np.abs(a) * ea[l + 1] + 0.5 * q14
        elif act == fixed.SIGMOID:
            ef = np.abs(1 - 2 * a) * ea[l + 1] + 0.5 * q14
        elif act in GATED_D_BOUND:  # f' read from its table at the core's z
            f2 = np.abs(act_second_derivative(act, ref.z[l], a, ref.alpha))
            ef = f2 * ezs[l] + GATED_D_BOUND[act] * q14
        else:
            ef = 0.0
        rounded = act in (fixed.TANH, fixed.SIGMOID, fixed.LEAKY, *GATED_D_BOUND)
        return (np.abs(fprime[l]) * ee + np.abs(e) * ef
                + (0.5 * 2.0 ** -qnet.shift_d[l] if rounded else 0.0))

    ed: list[np.ndarray] = [np.empty(0)] * L
    out = L - 1
    # the output error a - t: the targets are what the reference takes, exactly
    ed[out] = (times_fprime(out, ref.error[out], ea[L]) if qnet.loss == fixed.MSE
               else ea[L])  # cross-entropy: p - t in Q14, no more rounding
    for l in range(L - 1, 0, -1):
        kb = fixed.ceil_log2(sizes[l + 1])
        floors = sizes[l + 1] * 2.0 ** (kb - qnet.shift_w[l] - qnet.shift_d[l])
        ee = through(W[l].T, ed[l]) + floors + 0.5 * 2.0 ** -qnet.shift_d[l - 1]
        ed[l - 1] = times_fprime(l - 1, ref.error[l - 1], ee)
    kg = fixed.ceil_log2(qnet.batch_max)
    errors = []
    for l in range(L):
        a = np.vstack([ref.a[l], np.ones((1, N))])  # the bias: a weight on a constant 1
        ea_l = np.vstack([ea[l], np.zeros((1, N))])
        d, e_d = ref.delta[l], ed[l]
        unit = 2.0 ** (kg - qnet.shift_d[l] - qnet.shift_a[l])  # the floor of d x >> kg
        # per entry: the sample errors may share a sign (a table's error is systematic), so
        # they add before the mean
        entry = (np.abs(a)[None] * e_d[:, None] + np.abs(d)[:, None] * ea_l[None]
                 + e_d[:, None] * ea_l[None] + unit).mean(axis=2)
        errors.append(float(np.sqrt((entry * entry).sum())))
    return errors


def compare_gradients(qnet, GW, GB, count, Xq, Tq, sides=None,
                      thresholds: Thresholds | None = None) -> Report:
    """Compare integer gradient sums (from any runtime) over the samples (Xq, Tq) with the
    float reference; `sides` as core_gradients returns them (without them a ReLU net may fail
    on a sample at a kink, see reference_gradients). Each layer passes when its relative L2
    error is within its bound (thresholds.safety x the propagated error / ||g_ref||) and its
    cosine at least what that bound implies.

    W and B of a layer are compared together, as one vector: the bias is the weight on the
    constant input, and a layer's few biases alone make too short a vector for a cosine."""
    if count != len(Xq) or count != len(Tq):
        raise ValueError(f"gradient sums over {count} samples, but {len(Xq)} inputs and "
                         f"{len(Tq)} targets given")
    thresholds = thresholds or Thresholds()
    units = [qnet.grad_scale(l) / count for l in range(qnet.L)]  # one LSB of the mean
    gq = _flatten(GW, GB, units)
    gf, (kinks, taken, beyond), bits, errors = reference_gradients(qnet, Xq, Tq, sides)
    layers = []
    for l in range(qnet.L):
        cos, rel = _cosine(gq[l], gf[l]), _relative(gq[l], gf[l])
        norm = float(np.linalg.norm(gf[l]))
        if norm > 0:
            bound = thresholds.safety * errors[l] / norm
            ok = rel <= bound and cos >= cos_floor(bound)
        else:  # no gradient (dead units): the core's must stay within the propagated error
            bound = 0.0
            ok = float(np.linalg.norm(gq[l])) <= thresholds.safety * errors[l]
        layers.append(LayerReport(l + 1, gf[l].size, norm, cos, rel, bound,
                                  float(np.abs(gq[l] - gf[l]).max() / units[l]), bits[l],
                                  bool(ok)))
    return Report(layers, int(count), kinks, taken, beyond, thresholds)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(a @ b / (na * nb))


def _relative(a: np.ndarray, ref: np.ndarray) -> float:
    err, nr = np.linalg.norm(a - ref), np.linalg.norm(ref)
    if nr == 0:
        return 0.0 if err == 0 else math.inf
    return float(err / nr)


def validate(qnet, X, T, thresholds: Thresholds | None = None, kernels=None) -> Report:
    """Quantise a float batch as the net's input normalisation says, run the core on CPython
    and compare its gradients with the reference."""
    Xq = qnet.quantize_inputs(X)
    Tq = qnet.quantize_targets(T)
    GW, GB, count, sides = core_gradients(qnet, Xq, Tq, kernels)
    return compare_gradients(qnet, GW, GB, count, Xq, Tq, sides, thresholds)
