"""The federated average of int16 weights, exact and independent of the order of the clients.

Client k reports its weights w_k (int16) and its sample count n_k > 0; with N = sum n_k the
global weight is the weighted mean rounded half up, as the core rounds (edgebp/fixed.py):

    w = floor((2 * sum_k n_k * w_k + N) / (2 * N))

computed in Python integers (numpy int64 when it cannot overflow), so no float and no order of
summation enters: the same replies give the same weights bit for bit, in whatever order they
arrive. A mean of int16 values in [-32767, 32767] stays in that range.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Q_MAX = 32767


class AverageError(ValueError):
    """A client's reply that cannot be averaged, in one line."""


def check(arrays: Sequence[np.ndarray], count: int, shapes: Sequence[tuple[int, ...]],
          who: str = "a client") -> list[np.ndarray]:
    """A client's reply as int16 arrays of the global net's shapes, or AverageError."""
    if not isinstance(count, (int, np.integer)) or count <= 0:
        raise AverageError(f"{who} reported {count!r} samples: a positive whole number needed")
    if len(arrays) != len(shapes):
        raise AverageError(f"{who} sent {len(arrays)} tensors, the net has {len(shapes)}")
    out = []
    for i, (a, shape) in enumerate(zip(arrays, shapes, strict=True)):
        a = np.asarray(a)
        if a.shape != tuple(shape):
            raise AverageError(f"{who}: tensor {i} has shape {a.shape}, expected {shape}")
        if a.dtype.kind not in "iu":
            raise AverageError(f"{who}: tensor {i} holds {a.dtype}, not integers")
        if a.size and (int(a.min()) < -Q_MAX or int(a.max()) > Q_MAX):
            raise AverageError(f"{who}: tensor {i} leaves the int16 range [-32767, 32767]")
        out.append(a.astype(np.int16))
    return out


def weighted_average(replies: Sequence[tuple[Sequence[np.ndarray], int]]) -> list[np.ndarray]:
    """The rounded weighted mean of (arrays, count) replies, tensor by tensor (int16)."""
    if not replies:
        raise AverageError("no replies to average")
    total = sum(int(n) for _, n in replies)
    # |sum n_k w_k| <= N * 32767: int64 holds it while N < 2**47
    dtype = np.int64 if total < 2**47 else object
    out = []
    for t in range(len(replies[0][0])):
        acc = np.zeros(np.shape(replies[0][0][t]), dtype)
        for arrays, n in replies:
            acc += np.asarray(arrays[t]).astype(dtype) * int(n)
        mean = (2 * acc + total) // (2 * total)
        out.append(np.asarray(mean, dtype=np.int64).astype(np.int16))
    return out
