"""Which training samples each client of a fleet holds: IID or non-IID splits, seeded.

Both are integer-only and independent of numpy's generators (whose streams may change between
versions): the shuffles are reference.epoch_order, the core's xorshift30 Fisher-Yates.

iid      the samples shuffled with the seed, then cut into `clients` runs of near-equal
         length (the first len % clients runs one longer).
noniid   the samples sorted by class (ties in shuffled order), cut into `clients * per`
         shards of near-equal length, and the shards dealt to the clients in a seeded order,
         `per` each: with per=2 each client holds mostly two classes (a shard may straddle
         the boundary of two). McMahan et al.'s pathological non-IID split.
"""

from __future__ import annotations

import numpy as np

from edgebp.host.nets.reference import epoch_order

KINDS = ("iid", "noniid")
# epoch numbers of epoch_order reserved for partitioning, far from those training uses
_SHUFFLE, _DEAL = 1_000_001, 1_000_002


class PartitionError(ValueError):
    """A split that cannot be made, in one line."""


def split(labels, clients: int, kind: str = "iid", seed: int = 1, per: int = 2
          ) -> list[np.ndarray]:
    """Sample indices of each client (sorted), a partition of range(len(labels))."""
    y = np.asarray(labels).reshape(len(labels), -1)[:, 0]
    n = len(y)
    if kind not in KINDS:
        raise PartitionError(f"partition {kind!r}: expected one of {', '.join(KINDS)}")
    if clients < 1:
        raise PartitionError(f"{clients} clients: a fleet needs at least one")
    if kind == "iid":
        if n < clients:
            raise PartitionError(f"{n} samples cannot be split across {clients} clients")
        runs = np.array_split(epoch_order(n, seed, _SHUFFLE), clients)
        return [np.sort(r) for r in runs]
    if per < 1:
        raise PartitionError(f"{per} shards per client: at least one")
    shards = clients * per
    if n < shards:
        raise PartitionError(f"{n} samples cannot make {shards} shards ({clients} clients x "
                             f"{per})")
    shuffled = epoch_order(n, seed, _SHUFFLE)
    by_class = shuffled[np.argsort(y[shuffled], kind="stable")]
    pieces = np.array_split(by_class, shards)
    deal = epoch_order(shards, seed, _DEAL)
    return [np.sort(np.concatenate([pieces[s] for s in deal[c * per:(c + 1) * per]]))
            for c in range(clients)]


def describe(labels, parts: list[np.ndarray]) -> list[str]:
    """One line per client: how many samples and of which classes (the most common first)."""
    y = np.asarray(labels).reshape(len(labels), -1)[:, 0]
    lines = []
    for c, idx in enumerate(parts):
        values, counts = np.unique(y[idx].astype(np.int64), return_counts=True)
        order = np.argsort(-counts, kind="stable")
        top = ", ".join(f"{values[i]}: {counts[i]}" for i in order[:4])
        more = f", +{len(values) - 4} classes" if len(values) > 4 else ""
        lines.append(f"client {c}: {len(idx)} samples ({top}{more})")
    return lines
