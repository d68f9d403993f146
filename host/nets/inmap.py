"""The input map: a net's input normalisation in integers, for raw integer inputs on the board.

On the host a raw input x becomes the net's input as x_q = round((x - in_offset) * in_scale *
2**shift_a[0]) in floats (QuantNet.float_quantize_inputs). A board program that reads its own
sensors has raw integers and no floats, so a net declared with integer inputs (the spec's
`"integer_inputs": true`, its input_range the raw integer range) carries, per input i,

    x_q = clamp(((clamp(x, lo, hi) - o) * m + c) >> s, -32767, 32767)

in its file (edgebp/ebp.py, the input-map section), applied by edgebp.ebp.InMap on the board
and by QuantNet.quantize_inputs on the host (so the host's tools and training through the
server feed the net exactly what a board program's learner does).

derive() chooses o = the middle of [lo, hi], the largest shift s for which the proof below
holds, m = round(g 2**s) with g = in_scale * 2**shift_a[0], and c = round((K + 1/2) 2**s) with
K = (o - in_offset) g (the rounding folded in). Error bound (error_bound()): for every x in
[lo, hi], the board's value before the floor, v(x) = ((x - o) m + c) / 2**s, differs from the
float's y(x) + 1/2, y = (x - in_offset) g, by at most

    e = max|x - o| * |m / 2**s - g| + |c / 2**s - (K + 1/2)|

so the board's x_q equals the float's except where y + 1/2 lies within e of an integer, and
then differs by one; derive() refuses a map with e >= 1 (a raw range too wide for 30 bits).
Where every x saturates the float's x_q (|K| > max|x - o| |g| + 32769), K is clipped to that
bound: both give +-32767 there.

Range proof (prove()): every intermediate of InMap.apply stays inside [-2**30, 2**30) for
any input, since x is first clamped to [lo, hi], -2**29 <= lo <= o <= hi < 2**29, and
|m| max|x - o| + |c| < 2**30 (the board's loader checks the same condition again,
edgebp.ebp.inmap_check).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from edgebp import ebp
from edgebp.fixed import Q_MAX, SMALL_MAX
from edgebp.host.nets.qnet import QuantNet

SMALL_MIN = -(1 << 30)
MAX_ERROR = 1.0  # derive() refuses a map whose error bound e reaches this


class InMapError(ValueError):
    """A raw input range the map cannot serve; the message names the input."""


@dataclass
class InputMap:
    """Per input (int64 arrays of n_in): raw range lo..hi, centre o, multiplier m, constant
    c (rounding folded in), shift s."""

    lo: np.ndarray
    hi: np.ndarray
    o: np.ndarray
    m: np.ndarray
    c: np.ndarray
    s: np.ndarray

    @property
    def n(self) -> int:
        return len(self.lo)

    def apply(self, X) -> np.ndarray:
        """The board's x_q for raw integer inputs X (N, n_in) or (n_in,): InMap.apply in
        numpy, bit for bit (int64 holds every intermediate)."""
        X = np.asarray(X, np.int64)
        v = np.minimum(np.maximum(X, self.lo), self.hi)
        v = ((v - self.o) * self.m + self.c) >> self.s
        return np.clip(v, -Q_MAX, Q_MAX).astype(np.int16)

    def section(self) -> bytes:
        """The input-map section of the net file: the records, then their CRC-16."""
        from edgebp.crc import crc16

        out = bytearray()
        for i in range(self.n):
            out += struct.pack("<iiiiiB", int(self.lo[i]), int(self.hi[i]), int(self.o[i]),
                               int(self.m[i]), int(self.c[i]), int(self.s[i]))
        return bytes(out) + struct.pack("<H", crc16(out, 0, len(out)))

    @classmethod
    def from_board(cls, mp) -> InputMap:
        """The host form of an edgebp.ebp.InMap (as a loader read it)."""
        return cls(*(np.array(list(a), np.int64) for a in (mp.lo, mp.hi, mp.o, mp.m, mp.c,
                                                            mp.s)))

    def __eq__(self, other) -> bool:
        return isinstance(other, InputMap) and all(
            np.array_equal(getattr(self, k), getattr(other, k))
            for k in ("lo", "hi", "o", "m", "c", "s"))


def _gain(qnet: QuantNet) -> tuple[list[Fraction], list[Fraction]]:
    # (g_i, in_offset_i) as exact rationals of the floats the host quantises with
    n = qnet.sizes[0]
    scale = np.broadcast_to(np.asarray(1.0 if qnet.in_scale is None else qnet.in_scale,
                                       np.float64), (n,))
    off = np.broadcast_to(np.asarray(0.0 if qnet.in_offset is None else qnet.in_offset,
                                     np.float64), (n,))
    g = [Fraction(float(v)) * 2 ** qnet.shift_a[0] for v in scale]
    return g, [Fraction(float(v)) for v in off]


def _round(f: Fraction) -> int:
    return math.floor(f + Fraction(1, 2))


def _record(i: int, lo: int, hi: int, g: Fraction, off: Fraction) -> tuple[int, ...]:
    o = lo + (hi - lo) // 2
    d = max(o - lo, hi - o)
    K = (o - off) * g
    bound = d * abs(g) + 32769
    K = max(-bound, min(K, bound))
    for s in range(30, -1, -1):
        m = _round(g * 2**s)
        c = _round((K + Fraction(1, 2)) * 2**s)
        if ebp.inmap_check(lo, hi, o, m, c, s) is None:
            return lo, hi, o, m, c, s
    raise InMapError(f"input {i}: no integer map of the raw range {lo}..{hi} stays inside "
                     "[-2**30, 2**30) (its gain is too large)")


def derive(qnet: QuantNet, lo, hi) -> InputMap:
    """The input map of `qnet` for raw integer inputs in [lo, hi] (one int or one per input);
    InMapError names an input it cannot serve within MAX_ERROR."""
    n = qnet.sizes[0]
    lo_a = np.broadcast_to(np.asarray(lo), (n,))
    hi_a = np.broadcast_to(np.asarray(hi), (n,))
    g, off = _gain(qnet)
    rows = []
    for i in range(n):
        a, b = lo_a[i], hi_a[i]
        if a != math.floor(a) or b != math.floor(b):
            raise InMapError(f"input {i}: the raw range {a}..{b} is not integers")
        a, b = int(a), int(b)
        if not -ebp.RAW_MAX <= a <= b < ebp.RAW_MAX:
            raise InMapError(f"input {i}: raw range {a}..{b} outside -2**29..2**29-1")
        rows.append(_record(i, a, b, g[i], off[i]))
    cols = [np.array(col, np.int64) for col in zip(*rows, strict=True)]
    imap = InputMap(*cols)
    err = error_bound(qnet, imap)
    for i in range(n):
        if err[i] >= MAX_ERROR:
            raise InMapError(f"input {i}: the raw range {rows[i][0]}..{rows[i][1]} is too wide "
                             f"for a 30-bit map (error bound {err[i]:.3g} LSB)")
    prove(imap)
    return imap


def error_bound(qnet: QuantNet, imap: InputMap) -> np.ndarray:
    """Per input, e (see the module's docstring) in LSB of the input format, exact."""
    g, off = _gain(qnet)
    out = np.empty(imap.n)
    for i in range(imap.n):
        lo, hi, o, m, c, s = (int(v[i]) for v in (imap.lo, imap.hi, imap.o, imap.m, imap.c,
                                                  imap.s))
        d = max(o - lo, hi - o)
        K = (o - off[i]) * g[i]
        bound = d * abs(g[i]) + 32769
        K = max(-bound, min(K, bound))
        e = d * abs(Fraction(m, 2**s) - g[i]) + abs(Fraction(c, 2**s) - (K + Fraction(1, 2)))
        out[i] = float(e)
    return out


@dataclass
class MapBound:
    input: int
    what: str
    lo: int
    hi: int

    @property
    def ok(self) -> bool:
        return SMALL_MIN <= self.lo and self.hi <= SMALL_MAX


def prove(imap: InputMap) -> list[MapBound]:
    """Interval bounds of every intermediate of edgebp.ebp.InMap.apply, per input, for any
    input value; InMapError names the first outside [-2**30, 2**30)."""
    rows = []
    for i in range(imap.n):
        lo, hi, o, m, c, s = (int(v[i]) for v in (imap.lo, imap.hi, imap.o, imap.m, imap.c,
                                                  imap.s))
        dx = (lo - o, hi - o)  # x clamped to [lo, hi] first
        p = sorted((dx[0] * m, dx[1] * m))
        t = (p[0] + c, p[1] + c)
        rows += [MapBound(i, "x clamped", lo, hi), MapBound(i, "x - o", *dx),
                 MapBound(i, "(x - o) * m", *p), MapBound(i, "+ c", *t),
                 MapBound(i, ">> s", t[0] >> s, t[1] >> s)]
        if not 0 <= s <= 30:
            raise InMapError(f"input {i}: shift {s} outside 0..30")
    for b in rows:
        if not b.ok:
            raise InMapError(f"input {b.input}: {b.what} reaches [{b.lo}, {b.hi}], outside "
                             "[-2**30, 2**30)")
    return rows


def table(imap: InputMap, qnet: QuantNet) -> str:
    """What derive() chose and its error bound, one row per input."""
    err = error_bound(qnet, imap)
    rows = ["input  raw range               o           m           c   s  error bound (LSB)"]
    for i in range(imap.n):
        rows.append(f"{i:>5}  {int(imap.lo[i]):>10}..{int(imap.hi[i]):<10} "
                    f"{int(imap.o[i]):>10}  {int(imap.m[i]):>10}  {int(imap.c[i]):>10}  "
                    f"{int(imap.s[i]):>2}  {err[i]:.3g}")
    return "\n".join(rows)
