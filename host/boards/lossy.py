"""A serial-like wrapper that loses, damages and repeats bytes: the link tests' bad cable.

Each byte that passes (written, and read if `reads` is set) is dropped with probability
`drop`, replaced by a different value with probability `corrupt`, or sent twice with
probability `duplicate`. Each direction has its own generator seeded from `seed`. stall(t)
loses everything in both directions for t seconds of `clock`, as a cable pulled and put back.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Damage:
    dropped: int = 0
    corrupted: int = 0
    duplicated: int = 0
    passed: int = 0
    stalled: int = 0  # bytes lost in a stall


class LossySerial:
    def __init__(self, inner, drop: float = 0.0, corrupt: float = 0.0, duplicate: float = 0.0,
                 seed: int = 0, reads: bool = True,
                 clock: Callable[[], float] = time.monotonic):
        for name, p in (("drop", drop), ("corrupt", corrupt), ("duplicate", duplicate)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} rate {p} outside [0, 1)")
        self.inner = inner
        self.rates = (drop, corrupt, duplicate)
        self.reads = reads
        self._rng_out = random.Random(seed * 2 + 1)
        self._rng_in = random.Random(seed * 2 + 2)
        self.damage = Damage()
        self.clock = clock
        self.stall_until = float("-inf")

    def stall(self, seconds: float) -> None:
        self.stall_until = self.clock() + seconds

    def _mangle(self, data: bytes, rng: random.Random) -> bytes:
        if self.clock() < self.stall_until:
            self.damage.stalled += len(data)
            return b""
        drop, corrupt, duplicate = self.rates
        out = bytearray()
        d = self.damage
        for b in data:
            u = rng.random()
            if u < drop:
                d.dropped += 1
            elif u < drop + corrupt:
                out.append(b ^ rng.randrange(1, 256))
                d.corrupted += 1
            elif u < drop + corrupt + duplicate:
                out += bytes((b, b))
                d.duplicated += 1
            else:
                out.append(b)
                d.passed += 1
        return bytes(out)

    def write(self, data) -> int:
        self.inner.write(self._mangle(bytes(data), self._rng_out))
        return len(data)

    def read(self, size: int = 1) -> bytes:
        data = self.inner.read(size)
        return self._mangle(data, self._rng_in) if self.reads else data

    @property
    def in_waiting(self) -> int:
        return self.inner.in_waiting

    def __getattr__(self, name):
        # timeout, close, reset_input_buffer, ... go to the real port
        return getattr(self.inner, name)
