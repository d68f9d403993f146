"""Test nets as a quantiser would make them: a float init, quantised with shifts calibrated on
a batch (weights use most of int16; activations and deltas keep one bit of headroom).

Kept apart from host/nets/quantize.py so that the validation's measurements do not move with the
quantiser's choices. A hidden delta format is sized from both the delta and the error W^T
delta that the core's delta buffer holds before f' is applied."""

from __future__ import annotations

import math

import numpy as np

from edgebp import fixed
from edgebp.host.nets.qnet import QuantNet
from edgebp.host.nets.reference import FloatNet, act_derivative

SQUASH = (fixed.SIGMOID, fixed.TANH, fixed.SOFTMAX)
A = {name: i for i, name in enumerate(fixed.ACT_NAMES)}
LOSS = {name: i for i, name in enumerate(fixed.LOSS_NAMES)}


def fit_shift(peak: float, limit: float = 32767, lo: int = 0, hi: int = 24) -> int:
    """Largest shift s in lo..hi with peak * 2**s <= limit."""
    if peak <= 0:
        return hi
    return int(min(hi, max(lo, math.floor(math.log2(limit / peak)))))


def float_init(sizes, acts, rng) -> tuple[list[np.ndarray], list[np.ndarray]]:
    # He for (leaky) ReLU, Xavier otherwise; small random biases
    Ws, Bs = [], []
    for l in range(len(sizes) - 1):
        gain = 2.0 if acts[l] in (fixed.RELU, fixed.LEAKY) else 1.0
        Ws.append(rng.normal(0.0, math.sqrt(gain / sizes[l]), (sizes[l + 1], sizes[l])))
        Bs.append(rng.normal(0.0, 0.1, sizes[l + 1]))
    return Ws, Bs


def sample_batch(sizes, acts, loss, n, rng):
    """Float inputs in [-1, 1] and targets in the range of the output."""
    X = rng.uniform(-1.0, 1.0, (n, sizes[0]))
    n_out = sizes[-1]
    if loss == fixed.SOFTMAX_CE:
        return X, rng.integers(0, n_out, n)
    if loss == fixed.BCE:
        return X, rng.integers(0, 2, (n, n_out)).astype(np.float64)
    lo = 0.0 if acts[-1] in (fixed.RELU, fixed.SIGMOID) else -1.0
    return X, rng.uniform(lo, 1.0, (n, n_out))


def calibrated_qnet(sizes, acts, loss, X, T, rng, batch_max=1) -> QuantNet:
    acts = [A[a] if isinstance(a, str) else a for a in acts]
    loss = LOSS[loss] if isinstance(loss, str) else loss
    L = len(sizes) - 1
    Ws, Bs = float_init(sizes, acts, rng)
    shift_w = [fit_shift(max(np.abs(w).max(), np.abs(b).max()))
               for w, b in zip(Ws, Bs, strict=True)]
    Wq = [np.clip(np.floor(w * 2.0**s + 0.5), -32767, 32767).astype(np.int16)
          for w, s in zip(Ws, shift_w, strict=True)]
    Bq = [np.clip(np.floor(b * 2.0**s + 0.5), -32767, 32767).astype(np.int16)
          for b, s in zip(Bs, shift_w, strict=True)]
    ref = FloatNet(sizes, acts, loss, [q * 2.0**-s for q, s in zip(Wq, shift_w, strict=True)],
                   [q * 2.0**-s for q, s in zip(Bq, shift_w, strict=True)])
    ref.forward(X)
    shift_a = [fit_shift(np.abs(X).max(), 16383, hi=14)]
    for l in range(L):
        if acts[l] in SQUASH:
            shift_a.append(fixed.A_SHIFT_SQUASH)
        elif acts[l] in (fixed.SWISH, fixed.MISH):
            shift_a.append(fixed.Z_SHIFT_SQUASH)  # the core's tables fix z and a at Q12
        else:
            peak = np.abs(ref.a[l + 1]).max()
            if l == L - 1:
                peak = max(peak, np.abs(T).max())
            shift_a.append(fit_shift(peak, 16383, lo=6 if l == L - 1 else 0, hi=14))
    # per-sample deltas of the reference (the core's are before the batch mean); a hidden
    # delta's buffer first holds the back-propagated error W^T delta, then f' times it
    peaks = np.zeros(L)
    delta = ref.output_delta(T)
    peaks[-1] = np.abs(delta).max()
    for l in range(L - 1, 0, -1):
        e = ref.W[l].T @ delta
        delta = act_derivative(acts[l - 1], ref.z[l - 1], ref.a[l], ref.alpha) * e
        peaks[l - 1] = max(np.abs(e).max(), np.abs(delta).max())
    shift_d = [fit_shift(p, 16383) for p in peaks]
    if loss == fixed.MSE:
        shift_d[-1] = shift_a[-1]
    else:
        shift_d[-1] = fixed.A_SHIFT_SQUASH
    return QuantNet(list(sizes), acts, shift_a, shift_w, shift_d, loss, Wq, Bq,
                    batch_max=batch_max)


def random_case(hidden, out, loss, seed, sizes=(6, 10, 8, 3), n=32, batch_max=1):
    """(qnet, X, T) for a hidden activation, output activation and loss (names or codes)."""
    rng = np.random.default_rng(seed)
    L = len(sizes) - 1
    acts = [A[hidden] if isinstance(hidden, str) else hidden] * (L - 1)
    acts.append(A[out] if isinstance(out, str) else out)
    loss = LOSS[loss] if isinstance(loss, str) else loss
    X, T = sample_batch(sizes, acts, loss, n, rng)
    q = calibrated_qnet(sizes, acts, loss, X, T, rng, batch_max)
    return q, X, T
