"""Error bounds of swish and mish in the core, derived from their tables' construction.

The core computes both from Q14 tables on the sigmoid grid (z = -8 + i/8, i = 0..128, z in
Q12, edgebp/luts_act.py): a gate g (sigmoid for swish, tanh(softplus) for mish) and the
derivative f'. A table read is linear interpolation between two nodes that were rounded to
the nearest LSB, with the interpolated value rounded again, so on the interval [z_i, z_i+1]

    |g_core(z) - g(z)| <= h**2/8 max|g''| * 2**14 + 1/2 (nodes) + 1/2 (interpolation)  (Q14)

and likewise for f' with max|f'''|. The output a = z g_core(z) >> 14, rounded half up, is in
Q12; as z_q = 4096 z exactly, |a - 4096 f(z)| <= |z|/4 * (gate error in Q14) + 1/2.

The maxima of |g''| and |f'''| on each interval are taken from their closed forms (below,
checked against finite differences by the tests) at 1024 points per interval, plus the most
a function of slope D can rise between two samples (D = the largest finite-difference slope,
doubled). Every bound is per interval, and the reported bound is the largest over the table.
"""

from __future__ import annotations

import numpy as np

from edgebp import fixed

H = 1 / 8  # grid step of the tables
NODES = 129  # z = -8 + i/8
_SAMPLES = 1024


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def gate(kind: int, z: np.ndarray) -> np.ndarray:
    if kind == fixed.SWISH:
        return _sigmoid(z)
    return np.tanh(np.logaddexp(0.0, z))


def gate_second(kind: int, z: np.ndarray) -> np.ndarray:
    """g''(z): sigmoid'' = s (1 - s)(1 - 2 s); for t = tanh(softplus z), t' = (1 - t^2) s and
    t'' = (1 - t^2) s ((1 - s) - 2 t s)."""
    s = _sigmoid(z)
    if kind == fixed.SWISH:
        return s * (1 - s) * (1 - 2 * s)
    t = gate(kind, z)
    return (1 - t * t) * s * ((1 - s) - 2 * t * s)


def third(kind: int, z: np.ndarray) -> np.ndarray:
    """f'''(z), the derivative of the reference's act_second_derivative.
    swish: f'' = q (2 + z (1 - 2s)), q = s (1 - s), q' = q (1 - 2s):
        f''' = q ((1 - 2s)(3 + z (1 - 2s)) - 2 z q)
    mish: f'' = u (2 + z w), u = (1 - t^2) s, w = (1 - s) - 2 t s, u' = u w,
        w' = -q - 2 (u s + t q):  f''' = u (w (3 + z w) + z w')"""
    s = _sigmoid(z)
    q = s * (1 - s)
    if kind == fixed.SWISH:
        r = 1 - 2 * s
        return q * (r * (3 + z * r) - 2 * z * q)
    t = gate(kind, z)
    u = (1 - t * t) * s
    w = (1 - s) - 2 * t * s
    dw = -q - 2 * (u * s + t * q)
    return u * (w * (3 + z * w) + z * dw)


def _interval_max(fn) -> np.ndarray:
    # max |fn| on each of the 128 grid intervals, as an upper bound
    left = -8.0 + H * np.arange(NODES - 1)
    z = left[:, None] + H * np.linspace(0.0, 1.0, _SAMPLES)[None, :]
    v = np.abs(fn(z))
    step = H / (_SAMPLES - 1)
    slope = 2 * np.abs(np.diff(v, axis=1)).max() / step
    return v.max(axis=1) + slope * step / 2


def _table_terms(fn) -> np.ndarray:
    # per interval: the error of a Q14 table of a function whose second derivative is fn
    return H * H / 8 * _interval_max(fn) * 2**14 + 1.0


def gate_bounds(kind: int) -> np.ndarray:
    """Per interval, the bound on the gate's error, Q14 LSB."""
    return _table_terms(lambda z: gate_second(kind, z))


def forward_bounds(kind: int) -> np.ndarray:
    """Per interval, the bound on |a_core - 4096 f(z)|, Q12 LSB."""
    left = -8.0 + H * np.arange(NODES - 1)
    zmax = np.maximum(np.abs(left), np.abs(left + H))
    return zmax / 4 * gate_bounds(kind) + 0.5


def derivative_bounds(kind: int) -> np.ndarray:
    """Per interval, the bound on the f' table's error, Q14 LSB."""
    return _table_terms(lambda z: third(kind, z))


def bounds(kind: int) -> tuple[float, float]:
    """(forward bound in Q12 LSB, derivative bound in Q14 LSB) over every Q12 z."""
    return float(forward_bounds(kind).max()), float(derivative_bounds(kind).max())


SWISH_BOUND, SWISH_D_BOUND = bounds(fixed.SWISH)
MISH_BOUND, MISH_D_BOUND = bounds(fixed.MISH)
