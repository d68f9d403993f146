"""Which training samples each client of a fleet holds: IID or non-IID splits, seeded.

Both are integer-only and independent of numpy's generators (whose streams may change between
versions): the shuffles are reference.epoch_order, the core's xorshift30 Fisher-Yates.

iid      the samples shuffled with the seed, then cut into `clients` runs of near-equal
         length (the first len % clients runs one longer).
noniid   each client mostly `per` classes: the classes are dealt to the clients in a seeded
         order (client c gets classes c*per .. c*per + per - 1 of it, wrapping round), each
         client's share of `dominant` per cent of its samples is drawn from its classes (one
         sample at a time, client after client and class after class, each class's samples
         in shuffled order, as long as they last: a class too small for all the clients
         that hold it is shared evenly), and the rest of every client is filled from the
         samples left, in shuffled order. The clients hold the
         same numbers of samples as with iid.
"""

from __future__ import annotations

import numpy as np

from edgebp.host.nets.reference import epoch_order

KINDS = ("iid", "noniid")
# epoch numbers of epoch_order reserved for partitioning, far from those training uses
_SHUFFLE, _DEAL = 1_000_001, 1_000_002


class PartitionError(ValueError):
    """A split that cannot be made, in one line."""


def split(labels, clients: int, kind: str = "iid", seed: int = 1, per: int = 2,
          dominant: int = 80) -> list[np.ndarray]:
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
        raise PartitionError(f"{per} classes per client: at least one")
    if not 0 <= dominant <= 100:
        raise PartitionError(f"dominant share {dominant}% outside 0..100")
    if n < clients:
        raise PartitionError(f"{n} samples cannot be split across {clients} clients")
    shuffled = epoch_order(n, seed, _SHUFFLE)
    sizes = [len(r) for r in np.array_split(np.arange(n), clients)]
    classes = np.unique(y)
    dealt = classes[epoch_order(len(classes), seed, _DEAL)]
    queues = {k: [int(i) for i in shuffled if y[i] == k] for k in classes.tolist()}
    taken = np.zeros(n, bool)
    mine = [[dealt[(c * per + j) % len(dealt)].item() for j in range(per)]
            for c in range(clients)]
    want = [sizes[c] * dominant // 100 for c in range(clients)]
    parts: list[list[int]] = [[] for _ in range(clients)]
    turn = [0] * clients
    # one sample at a time, client after client: a class short of samples for all that hold
    # it is shared between them evenly
    progress = True
    while progress:
        progress = False
        for c in range(clients):
            for _ in range(per):
                if len(parts[c]) >= want[c]:
                    break
                q = queues[mine[c][turn[c] % per]]
                turn[c] += 1
                if q:
                    i = q.pop(0)
                    parts[c].append(i)
                    taken[i] = True
                    progress = True
                    break
    pool = [int(i) for i in shuffled if not taken[i]]
    for c in range(clients):
        need = sizes[c] - len(parts[c])
        parts[c] += pool[:need]
        pool = pool[need:]
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


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
