"""Float weights -> QuantNet: the formats, chosen from a float calibration pass.

Formats (value = q * 2**-shift, q int16 in [-32767, 32767]):

inputs      The declared input range is mapped to [-1, 1] (in_offset = centre, in_scale =
            2 / width, folded into QuantNet.quantize_inputs) and stored in Q14: the declared
            range uses half of int16, so inputs up to twice as far from the centre still fit.
            [-1, 1] rather than [0, 1]: one more bit of resolution and zero-centred inputs.
weights     shift_w[l] per tensor (W and B together): the largest shift at which max|w| maps
            to at most 32767 / growth, so weights can grow `growth` times during training
            before they saturate: the spec's weight_growth, by default W_HEADROOM = 4 (more
            for nets whose weights grow far from their start, at log2(growth) bits each).
            max|w| is taken at least 1/sqrt(n_in), the size that passes a unit signal
            through the layer, so a layer of tiny weights can grow.
targets    with the spec's normalise_targets (mse, identity output), the declared target
            range is mapped to [-1, 1] the same way, with one scale for all outputs (the
            widest output's range fills [-1, 1]): QuantNet.out_offset, out_scale. The net
            learns and outputs normalised values; QuantNet.user_outputs maps them back, and
            float weights on raw units (raw_inputs=True) have it folded into the last layer.
activations sigmoid/tanh/softmax: fixed by the core (z Q12, a Q14; a softmax output's z in
            Q(12 - logit_k) from the spec's logit_range). identity/relu/leaky hidden
            units: from the largest |a| on the calibration data, with A_HEADROOM = 4 (weights
            grow, so do activations). An MSE output: from the calibration outputs and targets
            (and the declared target range) with OUT_HEADROOM = 2: training pulls the outputs
            to the targets, which are known; at least 6 (the core's minimum), at most 14.
deltas      output: fixed by the loss (Q14 for cross-entropy, the output's format for MSE).
            hidden: from the largest |W^T delta| and |delta| of a float backward pass on the
            calibration data, with D_HEADROOM = 2. The core's delta buffer holds both in
            shift_d[l]: first the back-propagated error W^T delta (requantised and saturated
            to int16), then f' times it; for sigmoid f' <= 1/4, so the error is up to 4 times
            the delta. Errors shrink as the net learns, so the deltas at the initial weights
            are near the largest it will see; little headroom keeps resolution for the small
            deltas late in training, and a saturated delta only clips a step's size.
then, lowering shifts only (so the search ends), until all hold:
  - the learning rate is representable (Net.set_lr):
        e + shift_d[l] + shift_a[l] - kg - shift_w[l] - 16 >= 0      (lower shift_w[l])
  - no requant shifts left (it would invent fractional bits; see ranges.check_ranges):
        shift_w[l] + shift_a[l] - k_f[l] - shift_z[l] >= 0         (lower shift_a[l+1])
        shift_w[l] + shift_d[l] - k_b[l] - shift_d[l-1] >= 0      (lower shift_d[l-1])
A constraint that cannot be met (a squashing unit's z is fixed at Q12, an MSE output at >= 6)
is refused with a RangeError naming the layer. Every net quantize returns has passed
check_ranges (edgebp.host.nets.ranges) for the declared input range.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from edgebp import fixed
from edgebp.fixed import A_SHIFT_SQUASH, Q_MAX, Z_SHIFT_SQUASH, ceil_log2
from edgebp.host.nets.qnet import Hyper, QuantNet, mantissa_exponent, sdlm_formats, sdlm_q
from edgebp.host.nets.ranges import MSE_MIN_SHIFT, RangeError, check_ranges, core_layout, max_lr
from edgebp.host.nets.reference import FloatNet
from edgebp.host.nets.second_order import curvature_maxima
from edgebp.host.nets.spec import Spec
from edgebp.net import Net

__all__ = [
    "RangeError", "check_ranges", "declared_input_range", "dequantize", "formats_table",
    "input_normalisation", "max_lr", "needed_formats", "quantize", "requantize",
    "target_normalisation",
]

IN_SHIFT = 14
W_HEADROOM = Spec.weight_growth
A_HEADROOM = 4
OUT_HEADROOM = 2
D_HEADROOM = 2
MAX_SHIFT = 24  # the core's limit for shift_w and shift_d
# dynamic weight formats (edgebp/dynfmt.py) start with room for 2x, just below the rule's
# HIGH, and may go DYN_ROOM bits down (fewer where the formats that follow them would leave
# the core's limits: dyn_windows)
DYN_GROWTH = 2.0
DYN_ROOM = 8
CALIB_SAMPLES = 256

_SQUASH = (fixed.SIGMOID, fixed.TANH, fixed.SOFTMAX)
_GATED = (fixed.SWISH, fixed.MISH)  # z and output in Q12, the tables' format


# -- input normalisation --


def input_normalisation(spec: Spec) -> tuple[np.ndarray, np.ndarray]:
    """(in_offset, in_scale) mapping the declared input range to [-1, 1]."""
    lo = np.asarray(spec.input_min, np.float64)
    hi = np.asarray(spec.input_max, np.float64)
    return (lo + hi) / 2, 2.0 / (hi - lo)


def target_normalisation(spec: Spec) -> tuple[np.ndarray, float] | None:
    """(out_offset, out_scale) mapping the declared target range into [-1, 1] (the widest
    output's exactly), or None without normalise_targets."""
    if not spec.normalise_targets or spec.target_min is None or spec.target_max is None:
        return None
    lo = np.asarray(spec.target_min, np.float64)
    hi = np.asarray(spec.target_max, np.float64)
    return (lo + hi) / 2, float(2.0 / (hi - lo).max())


def _fold(Ws, Bs, offset, scale, to_normalised: bool, out=None):
    # layer 0 on raw x: W x + B = (W / scale) x' + (B + W offset), x' = (x - offset) scale;
    # with out = (out_offset, out_scale) the last (identity) layer gives raw targets:
    # y = y' / out_scale + out_offset, so W_raw = W' / out_scale, B_raw = B' / out_scale + off
    Ws = [np.asarray(w, np.float64) for w in Ws]
    Bs = [np.asarray(b, np.float64).reshape(-1) for b in Bs]
    if to_normalised:
        if out is not None:
            Ws[-1] = Ws[-1] * out[1]
            Bs[-1] = (Bs[-1] - out[0]) * out[1]
        if offset is not None:
            Bs[0] = Bs[0] + Ws[0] @ offset
            Ws[0] = Ws[0] / scale[None, :]
    else:
        if offset is not None:
            Ws[0] = Ws[0] * scale[None, :]
            Bs[0] = Bs[0] - Ws[0] @ offset
        if out is not None:
            Ws[-1] = Ws[-1] / out[1]
            Bs[-1] = Bs[-1] / out[1] + out[0]
    return Ws, Bs


def _out_norm(qnet: QuantNet):
    return (np.asarray(qnet.out_offset), qnet.out_scale) if qnet.scales_targets else None


# -- float calibration pass --


def _calibration(spec: Spec, X, T, rng: np.random.Generator):
    # calibration inputs and targets (in the user's units); drawn from the declared ranges
    # when not given
    n_in, n_out = spec.sizes[0], spec.sizes[-1]
    if X is None:
        X = rng.uniform(spec.input_min, spec.input_max, (CALIB_SAMPLES, n_in))
    X = np.asarray(X, np.float64).reshape(-1, n_in)
    N = len(X)
    if T is None:
        if spec.loss == "softmax_ce":
            T = rng.integers(0, n_out, N)
        elif spec.loss == "bce":
            T = rng.integers(0, 2, (N, n_out)).astype(np.float64)
        elif spec.target_min is not None and spec.target_max is not None:
            T = rng.uniform(spec.target_min, spec.target_max, (N, n_out))
        else:
            T = np.zeros((N, n_out))
    T = np.asarray(T)
    if len(T) != N:
        raise ValueError(f"{N} calibration inputs but {len(T)} targets")
    return X, T


def _float_pass(spec: Spec, Ws, Bs, Xn, T):
    """Activations a^l (n_l, N) and, per layer, the largest |value| per sample that the
    core's delta buffer D[l] holds, in float64: a hidden layer's buffer first holds the
    back-propagated error W^T delta in shift_d[l] and only then f' times it (for sigmoid,
    f' <= 1/4, so the error is the larger)."""
    net = FloatNet(spec.sizes, spec.acts, spec.loss_code, Ws, Bs, spec.alpha_q / 4096)
    net.forward(Xn)
    net.backward(T)
    return net.a, [np.maximum(np.abs(e), np.abs(d)) for e, d in zip(net.error, net.delta,
                                                                      strict=True)]


# -- choosing the formats --


def _shift_for(mag: float, headroom: float, lo: int, hi: int) -> int:
    # the largest shift in lo..hi at which mag * headroom stays within int16
    if not mag > 0:
        return hi
    s = math.floor(math.log2(Q_MAX / (headroom * mag)))
    while s < hi and mag * headroom * 2.0 ** (s + 1) <= Q_MAX:
        s += 1
    while s > lo and mag * headroom * 2.0**s > Q_MAX:
        s -= 1
    return max(lo, min(hi, s))


def _choose_formats(spec: Spec, Ws, Bs, A, D, T, lr: float, t_bound: float | None = None):
    L, sizes, acts = spec.L, spec.sizes, spec.acts
    mse = spec.loss == "mse"
    lr_e = mantissa_exponent(lr)[1]
    sa = [IN_SHIFT] + [0] * L
    for l in range(L):
        if acts[l] in _SQUASH:
            sa[l + 1] = A_SHIFT_SQUASH
        elif acts[l] in _GATED:
            sa[l + 1] = Z_SHIFT_SQUASH
        elif l < L - 1:
            sa[l + 1] = _shift_for(float(np.abs(A[l + 1]).max()), A_HEADROOM, 0, 14)
        else:
            mag = max(float(np.abs(A[L]).max()), float(np.abs(np.asarray(T, float)).max()))
            if t_bound is not None:
                mag = max(mag, t_bound)
            if mag * OUT_HEADROOM * 2.0**MSE_MIN_SHIFT > Q_MAX:
                raise RangeError([f"layer {L}: outputs and targets up to {mag:.4g} need an "
                                  f"output shift below {MSE_MIN_SHIFT}, the core's minimum "
                                  "for mse: scale the targets down, or declare normalise_"
                                  "targets in the spec (edgebp init --task regression does)"])
            sa[L] = _shift_for(mag, OUT_HEADROOM, MSE_MIN_SHIFT, 14)
    w_mag = [max(float(np.abs(Ws[l]).max()), float(np.abs(Bs[l]).max()),
                 1 / math.sqrt(sizes[l])) for l in range(L)]
    growth = DYN_GROWTH if spec.weight_formats == "dynamic" else spec.weight_growth
    sw = [_shift_for(w_mag[l], growth, 0, MAX_SHIFT) for l in range(L)]
    sw_mag = list(sw)
    sd = [_shift_for(float(np.abs(D[l]).max()), D_HEADROOM, 0, MAX_SHIFT) for l in range(L)]
    kf = [ceil_log2(sizes[l] + 1) for l in range(L)]
    kb = [ceil_log2(sizes[l + 1]) for l in range(L)]
    kg = ceil_log2(spec.batch_max)

    def refuse(N: int, msg: str):
        raise RangeError([f"layer {N}: {msg}"])

    changed = True
    while changed:
        before = (list(sa), list(sw), list(sd))
        sd[L - 1] = sa[L] if mse else 14
        for l in range(L):
            sw[l] = min(sw[l], lr_e + sd[l] + sa[l] - kg - 16)
            if sw[l] < 0:
                refuse(l + 1, f"learning rate {lr:g} needs weights in Q{sw[l]}, below Q0: "
                       "lower the learning rate or batch_max")
            if acts[l] not in _SQUASH + _GATED:
                sa[l + 1] = min(sa[l + 1], sw[l] + sa[l] - kf[l])
        sd[L - 1] = sa[L] if mse else 14
        for l in range(1, L):
            sd[l - 1] = min(sd[l - 1], sw[l] + sd[l] - kb[l])
        for l in range(L):
            N = l + 1
            sz = Z_SHIFT_SQUASH if acts[l] in _SQUASH + _GATED else sa[l + 1]
            if acts[l] == fixed.SOFTMAX:
                sz -= spec.logit_k
            need = sz + kf[l] - sa[l]
            if sw[l] < need:
                why = (f"learning rate {lr:g} allows" if sw[l] < sw_mag[l]
                       else f"weights up to {w_mag[l]:.4g} allow")
                refuse(N, f"z in Q{sz} needs weights in Q{need} or finer, but the {why} at "
                       f"most Q{sw[l]}")
            if sa[l + 1] < 0 or (N == L and mse and sa[L] < MSE_MIN_SHIFT):
                refuse(N, f"no output format fits: weights in Q{sw[l]} times inputs in "
                       f"Q{sa[l]} over a fan-in of {sizes[l]} leave Q{sa[l + 1]}: lower the "
                       "learning rate")
            if sd[l] < 0:
                refuse(N, f"no delta format fits under the weights of layer {N + 1} "
                       f"(Q{sw[l + 1]}): lower the learning rate")
        changed = before != (sa, sw, sd)
    return sa, sw, sd


def _quantize_tensor(w: np.ndarray, shift: int, what: str) -> np.ndarray:
    q = np.floor(np.asarray(w, np.float64) * 2.0**shift + 0.5)
    if q.size and np.abs(q).max() > Q_MAX:
        raise RangeError([f"{what}: |w| up to {np.abs(w).max():.4g} does not fit in Q{shift}"])
    return q.astype(np.int16)


def quantize(spec: Spec, Ws, Bs, calib_X=None, calib_T=None, *, hyper: Hyper | None = None,
             lr_max: float | None = None, raw_inputs: bool = False) -> QuantNet:
    """A QuantNet for `spec` at float weights Ws[l] (n_out, n_in), Bs[l] (n_out,).

    Ws, Bs act on normalised inputs (the declared range mapped to [-1, 1], as
    init_float_weights makes them), or on raw inputs with raw_inputs=True. calib_X (raw
    inputs, (N, n_in)) and calib_T (class indices for softmax_ce, else (N, n_out) floats)
    set the activation and delta formats; without them samples are drawn from the declared
    ranges (mse targets: from target_range if declared, else zero). The formats admit
    learning rates up to lr_max (default: the hyper's, which defaults to the spec's). The
    result passes check_ranges for the declared input range, or RangeError names the layer.
    """
    if spec.acts[-1] in _GATED:
        raise RangeError([f"layer {spec.L}: {fixed.ACT_NAMES[spec.acts[-1]]} is for hidden "
                          "layers only on the board (the float64 reference has it as output)"])
    hyper = hyper or spec.hyper()
    offset, scale = input_normalisation(spec)
    out = target_normalisation(spec)
    if raw_inputs:
        Ws, Bs = _fold(Ws, Bs, offset, scale, to_normalised=True, out=out)
    Ws = [np.asarray(w, np.float64) for w in Ws]
    Bs = [np.asarray(b, np.float64).reshape(-1) for b in Bs]
    for l in range(spec.L):
        shape = (spec.sizes[l + 1], spec.sizes[l])
        if Ws[l].shape != shape or Bs[l].shape != shape[:1]:
            raise ValueError(f"layer {l + 1}: W must be {shape}, B ({shape[0]},)")
    rng = np.random.default_rng(spec.init_seed)
    X, T = _calibration(spec, calib_X, calib_T, rng)
    t_bound = None
    if spec.target_min is not None and spec.target_max is not None:
        t_bound = max(abs(v) for v in spec.target_min + spec.target_max)
    if out is not None:
        T = (np.asarray(T, np.float64).reshape(len(T), -1) - out[0]) * out[1]
        t_bound = float(np.abs((np.array([spec.target_min, spec.target_max]) - out[0])
                               * out[1]).max())
    Xn = (X - offset) * scale
    A, D = _float_pass(spec, Ws, Bs, Xn, T)
    lr = lr_max if lr_max is not None else hyper.lr
    sa, sw, sd = _choose_formats(spec, Ws, Bs, A, D, T, lr, t_bound)
    q = QuantNet(
        sizes=list(spec.sizes), acts=spec.acts, shift_a=sa, shift_w=sw, shift_d=sd,
        loss=spec.loss_code,
        W=[_quantize_tensor(Ws[l], sw[l], f"layer {l + 1}") for l in range(spec.L)],
        B=[_quantize_tensor(Bs[l], sw[l], f"layer {l + 1}") for l in range(spec.L)],
        batch_max=spec.batch_max, momentum=hyper.momentum > 0, alpha_q=spec.alpha_q,
        in_offset=offset, in_scale=scale, classes=list(spec.classes),
        out_offset=None if out is None else out[0], out_scale=None if out is None else out[1],
        adam=spec.adam, logit_k=spec.logit_k,
    )
    if spec.optimizer == "sdlm":
        fnet = FloatNet(spec.sizes, spec.acts, spec.loss_code, Ws, Bs, spec.alpha_q / 4096)
        q.sdlm = sdlm_settings(fnet, Xn, T, spec.mu, spec.gamma)
    x_range = declared_input_range(q, spec)
    if spec.integer_inputs:
        from edgebp.host.nets.inmap import derive

        q.in_map = derive(q, spec.input_min, spec.input_max)
        # the map is monotone: its extremes are at the ends of the raw range, within one
        # LSB of the float's (inmap.error_bound)
        ends = q.in_map.apply(np.array([spec.input_min, spec.input_max]))
        x_range = (min(x_range[0], int(ends.min())), max(x_range[1], int(ends.max())))
    if spec.weight_formats == "dynamic":
        q.dyn = dyn_windows(q, lambda qd: check_ranges(qd, hyper, x_range=x_range))
    check_ranges(q, hyper, x_range=x_range)
    return q


def dyn_windows(q: QuantNet, prove=None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The window of each layer's weight format when formats follow the weights: from its
    format now up, and at most DYN_ROOM bits down (room for DYN_ROOM doublings beyond the
    start), as wide as the formats that follow them allow within the core's limits
    (edgebp.dynfmt.check) with at most ranges.MAX_COMBINATIONS combinations (narrowed where
    needed, the widest first, then each widened again while it may be), and narrowed further,
    the widest first, until `prove` (a function of the net with its windows that raises
    RangeError, e.g. the range proof) accepts them."""
    from edgebp import dynfmt
    from edgebp.host.nets.ranges import MAX_COMBINATIONS

    net = Net(list(q.sizes), list(q.acts), list(q.shift_a), list(q.shift_w), list(q.shift_d),
              q.loss, q.batch_max)
    hi = list(q.shift_w)
    lo = [max(0, sw - DYN_ROOM) for sw in hi]

    def fits(low: list[int]) -> bool:
        try:
            dynfmt.check(net, low, hi)
        except ValueError:
            return False
        return math.prod(h - w + 1 for w, h in zip(low, hi, strict=True)) <= MAX_COMBINATIONS

    def narrow() -> bool:
        width = [h - w for w, h in zip(lo, hi, strict=True)]
        if max(width) == 0:
            return False
        lo[max(range(q.L), key=lambda j: (width[j], j))] += 1
        return True

    while not fits(lo):
        if not narrow():
            dynfmt.check(net, lo, hi)  # the formats now break the core's limits: say why
    grown = True
    while grown:
        grown = False
        for l in range(q.L):
            if lo[l] > max(0, hi[l] - DYN_ROOM) and fits(lo[:l] + [lo[l] - 1] + lo[l + 1:]):
                lo[l] -= 1
                grown = True
    while prove is not None:
        try:
            prove(replace(q, dyn=(tuple(lo), tuple(hi))))
            break
        except RangeError:
            if not narrow():
                raise
    return tuple(lo), tuple(hi)


SDLM_HEADROOM = 4.0  # room in SDLM's curvature formats over the calibration's largest


def sdlm_settings(fnet: FloatNet, Xn, T, mu: float, gamma: float):
    """QuantNet.sdlm for the net at float weights `fnet` (on normalised inputs): curvature
    formats holding SDLM_HEADROOM times the largest curvature the calibration samples Xn
    (normalised inputs, (N, n_in)) and their targets T give, with mu and gamma (sdlm_q); a
    parameter format too fine for mu is made coarser until mu fits (fit_mu)."""
    formats = sdlm_formats(*curvature_maxima(fnet, Xn, T), headroom=SDLM_HEADROOM)
    try:
        mu_m, mu_e, g, fc, fh = sdlm_q(mu, gamma, *formats)
    except ValueError as e:
        raise RangeError([str(e)]) from None
    return mu_m, mu_e, g, fc, fit_mu(mu_m, mu_e, fh)


def fit_mu(mu_m: int, mu_e: int, fh) -> tuple[int, ...]:
    """SDLM's parameter formats fh made coarser where mu = mu_m * 2**-mu_e would not fit
    them (mu in Q(fh) above 32767); RangeError where mu is below one LSB of one."""
    from edgebp import sdlm

    fh = [int(v) for v in fh]
    for l in range(len(fh)):
        while fh[l] > 0 and mu_m * 2.0 ** (fh[l] - mu_e) >= 32767.5:
            fh[l] -= 1
        try:
            sdlm.mu_in(mu_m, mu_e, fh[l], l)
        except ValueError as e:
            raise RangeError([f"{e}: raise mu"]) from None
    return tuple(fh)


def needed_formats(spec: Spec, Ws, Bs, calib_X=None, calib_T=None,
                   raw_inputs: bool = False) -> QuantNet:
    """The net quantize makes when no learning rate constrains it: the formats its weights,
    activations and deltas need. max_lr of it is the largest learning rate the net allows
    at those formats; above it quantize stores the weights coarser (a lower shift_w) so that
    the core can apply a step that large."""
    tiny = Hyper(**{**spec.hyper().__dict__, "lr": 2.0**-40})
    return quantize(spec, Ws, Bs, calib_X, calib_T, hyper=tiny, raw_inputs=raw_inputs)


def requantize(qnet: QuantNet, Ws, Bs, raw_inputs: bool = False) -> QuantNet:
    """A copy of qnet carrying float weights Ws, Bs in qnet's own formats."""
    if raw_inputs:
        Ws, Bs = _fold(Ws, Bs, qnet.in_offset, qnet.in_scale, to_normalised=True,
                       out=_out_norm(qnet))
    W = [_quantize_tensor(Ws[l], s, f"layer {l + 1}") for l, s in enumerate(qnet.shift_w)]
    B = [_quantize_tensor(np.reshape(Bs[l], -1), s, f"layer {l + 1}")
         for l, s in enumerate(qnet.shift_w)]
    return replace(qnet, W=W, B=B)


def dequantize(qnet: QuantNet, raw_inputs: bool = False
               ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Float weights of qnet: on normalised inputs and outputs, or with raw_inputs=True on
    raw inputs and (with a target normalisation) giving outputs in the targets' units."""
    Ws, Bs = qnet.float_weights()
    if raw_inputs:
        Ws, Bs = _fold(Ws, Bs, qnet.in_offset, qnet.in_scale, to_normalised=False,
                       out=_out_norm(qnet))
    return Ws, Bs


def declared_input_range(qnet: QuantNet, spec: Spec) -> tuple[int, int]:
    """The interval of quantised inputs the declared input range produces."""
    q = qnet.quantize_inputs(np.array([spec.input_min, spec.input_max]))
    return int(q.min()), int(q.max())


def formats_table(qnet: QuantNet) -> str:
    """One line per layer: widths, activation and the formats, as Q numbers."""
    lay = core_layout(qnet)
    rows = ["layer  n_in->n_out  act         in   W    z    out  delta  s_f  s_b  |w|max"]
    for l, y in enumerate(lay.layers):
        rows.append(f"{l + 1:5}  {y.n_in:4}->{y.n_out:<5}  {fixed.ACT_NAMES[y.act]:10}  "
                    f"Q{y.sa_in:<3} Q{y.sw:<3} Q{y.sz:<3} Q{y.sa_out:<3} Q{y.sd:<4}  "
                    f"{y.s_f:3}  {y.s_b if l else '-':>3}  {Q_MAX * 2.0**-y.sw:.4g}")
    rows.append(f"loss {fixed.LOSS_NAMES[qnet.loss]}, batch_max {qnet.batch_max}, "
                f"learning rate up to {max_lr(qnet):.4g}")
    return "\n".join(rows)
