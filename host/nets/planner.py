"""Memory planner: the bytes a net's training state takes on a board's MicroPython heap.

MicroPython's garbage collector hands out memory in blocks of 4 machine words (16 bytes on a
32-bit MCU, 32 on the unix port on x64), and `gc.mem_alloc()` counts whole blocks. So what a
net costs is the sum, over every object the board keeps for it, of its allocations rounded
up to blocks:

  array('h'/'i', n)  a 4-word header block, then the items in blocks of their own (none if
                     n == 0): W, B (int16), GW, GB (int32 gradient sums), VW, VB (int32
                     momentum), Z, A, D (int16 pre-activations, activations, deltas), rng
  list of n          a 4-word header, then its item array: 4 words to start with, doubled as
                     items are appended (a list comprehension grows the same way), or exactly
                     max(n, 4) words for `[x] * n`
  Net instance       a 4-word header, then its attribute table: 2 words per slot, slots
                     growing through MicroPython's hash-table sizes (py/map.c) until every
                     attribute has one

The Net's attribute count is read off the engine itself (a Net built here under CPython),
so the plan follows edgebp/net.py as it changes. Layer tables (sizes, acts, shifts) are the
lists the .ebp loader builds. Besides the net, the board holds one sample (x, t) per loaded
net, and the server's frame buffers, allocated when it starts (they are already out of the
free RAM that HELLO reports).

    p = plan([64, 32, 10], momentum=True)     # 32-bit MCU
    print(p.table())
    check(qnet, session.info)                  # PlanError with the numbers if it does not fit
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from edgebp import ebp, fixed, wire
from edgebp.net import Net

# py/map.c hash_allocation_sizes: a table grows to the next of these when it is full
MAP_SIZES = (0, 2, 4, 6, 8, 10, 12, 17, 23, 29, 37, 47, 59, 73, 97, 127, 167, 223, 293, 389,
             521, 691, 919, 1223, 1627, 2161, 3229, 4831, 7243, 10861, 16273, 24407, 36607,
             54907)
LIST_MIN_ALLOC = 4  # py/objlist.c
WORDS_PER_BLOCK = 4  # MICROPY_BYTES_PER_GC_BLOCK = 4 * word on every port's default build
# Kept below the free RAM for what loading itself needs (the loader, its header copy, the
# frames in flight) and for the heap's fragmentation: a tensor needs contiguous blocks.
DEFAULT_RESERVE = 2048
# firmware/server.py reports this many of the heap's largest free blocks, down to this size
HOLES_REPORTED = 8
HOLE_LEAST = 256


class PlanError(ValueError):
    """The net does not fit the board: the message carries the numbers."""


@functools.cache
def net_attributes() -> int:
    """How many attributes a Net instance carries (each takes a slot of its table)."""
    net = Net([1, 1], [fixed.IDENTITY], [8, 8], [8], [8], fixed.MSE)
    return len(vars(net))


@dataclass
class Heap:
    """Block accounting of one MicroPython heap: word size in bytes; `allocs` records the
    size of every allocation counted."""

    word: int = 4
    allocs: list[int] = field(default_factory=list)

    @property
    def block(self) -> int:
        return WORDS_PER_BLOCK * self.word

    def alloc(self, nbytes: int) -> int:
        # one gc allocation; a zero-byte request allocates nothing
        n = -(-nbytes // self.block) * self.block
        if n:
            self.allocs.append(n)
        return n

    def obj(self, words: int = WORDS_PER_BLOCK) -> int:
        return self.alloc(words * self.word)

    def array(self, n: int, itemsize: int) -> int:
        return self.obj() + self.alloc(n * itemsize)

    def list(self, n: int, grown: bool = True) -> int:
        # grown: built by appends or a comprehension (4 slots, doubled when full)
        alloc = LIST_MIN_ALLOC
        if grown:
            while alloc < n:
                alloc *= 2
        else:
            alloc = max(n, LIST_MIN_ALLOC)
        return self.obj() + self.alloc(alloc * self.word)

    def instance(self, attributes: int) -> int:
        slots = next((s for s in MAP_SIZES if s >= attributes), None)
        if slots is None:
            slots = (attributes + attributes // 2) | 1
        return self.obj() + self.alloc(2 * slots * self.word)


@dataclass
class Plan:
    sizes: list[int]
    momentum: bool
    word: int
    parts: dict[str, int] = field(default_factory=dict)  # what the net holds, by kind
    sample: int = 0  # the server's x and t for one sample of this net
    server: int = 0  # the server's frame buffers (in use before any net is loaded)
    transient: int = 0  # the loader while it parses the net
    allocs: list[int] = field(default_factory=list)  # the net's allocations, in bytes
    free: int | None = None  # the board's free RAM, if known
    holes: list[int] = field(default_factory=list)  # its largest free blocks, if known

    @property
    def net(self) -> int:
        """Bytes the Net and everything it holds take: what gc.mem_alloc() grows by."""
        return sum(self.parts.values())

    @property
    def need(self) -> int:
        """Bytes a load needs free on the board (the net, its sample, the loader)."""
        return self.net + self.sample + self.transient

    @property
    def params(self) -> int:
        return sum(self.sizes[l + 1] * (self.sizes[l] + 1) for l in range(len(self.sizes) - 1))

    @property
    def minimum(self) -> int:
        """The least any trainer could hold: the int16 weights and biases, nothing else."""
        return 2 * self.params

    @property
    def overhead(self) -> float:
        return self.net / self.minimum

    def fits(self, free: int, reserve: int = DEFAULT_RESERVE) -> bool:
        return self.need + reserve <= free

    def unplaced(self) -> int | None:
        """The first of the net's big allocations, in the order the engine makes them, that
        finds no free block left big enough, or None if all find one.

        The gc takes the first run of free blocks that fits, by address, and the board
        reports only sizes: so each allocation is taken from the largest block left, the
        worst case for the big ones that follow. Allocations of HOLE_LEAST bytes or less
        fit the many small blocks: only the total counts for them."""
        if not self.holes:
            return None
        room = list(self.holes)
        for n in self.allocs:
            if n <= HOLE_LEAST:
                continue
            i = max(range(len(room)), key=room.__getitem__)
            if room[i] < n:
                return n
            room[i] -= n
        return None

    def table(self) -> str:
        rows = [(name, n) for name, n in self.parts.items()]
        rows += [("net, total", self.net), ("sample buffers x, t", self.sample),
                 ("loader (while loading)", self.transient),
                 ("server frame buffers (fixed)", self.server)]
        least = "theoretical minimum (int16 W, B)"
        width = max(len(least), *(len(r[0]) for r in rows))
        arch = f"{8 * self.word}-bit heap, {WORDS_PER_BLOCK * self.word}-byte gc blocks"
        lines = [f"net {'-'.join(map(str, self.sizes))}"
                 f"{' with momentum' if self.momentum else ''}: {self.params} parameters, "
                 f"{arch}"]
        for name, n in rows:
            lines.append(f"  {name.ljust(width)}  {n:8d} B")
        lines.append(f"  {least.ljust(width)}  "
                     f"{self.minimum:8d} B   net / minimum = {self.overhead:.2f}x")
        if self.free is not None:
            verdict = "fits" if self.fits(self.free) else "does NOT fit"
            lines.append(f"  board free RAM {self.free} B, load needs {self.need} B + "
                         f"{DEFAULT_RESERVE} B reserve: {verdict}")
        if self.holes:
            big = self.unplaced()
            lines.append(f"  largest free blocks {', '.join(map(str, self.holes))} B; largest "
                         f"allocation {max(self.allocs)} B: "
                         + ("placed" if big is None else f"{big} B finds no block"))
        return "\n".join(lines)


def plan(sizes, *, momentum: bool = False, loss: int = fixed.SOFTMAX_CE, word: int = 4,
         max_payload: int = 512) -> Plan:
    """The heap a net of these layer sizes takes on a board with `word`-byte words.

    `loss` sets the target width of a sample, `max_payload` the server's frame buffers.
    """
    sizes = [int(n) for n in sizes]
    L = len(sizes) - 1
    if L < 1:
        raise ValueError("a net has at least one layer")
    h = Heap(word)  # the net's
    o = Heap(word)  # the server's
    outs = sizes[1:]
    weights = [sizes[l] * sizes[l + 1] for l in range(L)]

    def arrays(counts, itemsize):
        return sum(h.array(n, itemsize) for n in counts)

    parts = {
        "weights W, biases B (int16)": arrays(weights, 2) + arrays(outs, 2),
        "gradient sums GW, GB (int32)": arrays(weights, 4) + arrays(outs, 4),
    }
    if momentum:
        parts["momentum VW, VB (int32)"] = arrays(weights, 4) + arrays(outs, 4)
    parts["activations Z, A, D (int16)"] = (arrays(outs, 2) + arrays(sizes, 2)
                                            + arrays(outs, 2))
    parts["rng state (int32)"] = h.array(1, 4)
    # the Net, its attribute table and its lists: layer tables from the loader (sizes, acts,
    # shift_a/w/d), per-layer constants (shift_z, k_f, s_f, k_b, s_b, one), the tensor lists
    lists = 2 * h.list(L + 1) + 3 * h.list(L)  # sizes, shift_a; acts, shift_w, shift_d
    lists += 6 * h.list(L)  # shift_z, k_f, s_f, k_b, s_b, one
    lists += 4 * h.list(L)  # W, B, GW, GB
    lists += 2 * h.list(L) if momentum else h.list(L, grown=False)  # VW, VB or [None] * L
    lists += 2 * h.list(L) + h.list(L + 1)  # Z, D; A
    parts["Net object and lists"] = h.instance(net_attributes()) + lists

    n_t = 1 if loss == fixed.SOFTMAX_CE else sizes[-1]
    frame = wire.HEADER + max_payload + wire.TRAILER
    link = wire.HEADER + 2 + 60 + wire.TRAILER  # link-error answers (server.py _TEXT_MAX)
    server = (o.array(frame, 1) + o.array(255, 1) + o.array(frame, 1)
              + o.array(wire.encoded_max(frame), 1) + o.array(link, 1)
              + o.array(wire.encoded_max(link), 1))
    # the loader: its object and its header copy
    transient = o.instance(16) + o.array(ebp.head_len(ebp.MAX_LAYERS), 1)
    return Plan(sizes, momentum, word, parts, sample=o.array(sizes[0], 2) + o.array(n_t, 2),
                server=server, transient=transient, allocs=h.allocs)


def plan_for(qnet, info=None) -> Plan:
    """The plan of a QuantNet on the board that `info` (Session.info) describes."""
    word = getattr(info, "word", 0) or 4
    max_payload = getattr(info, "max_payload", 512)
    p = plan(qnet.sizes, momentum=qnet.momentum, loss=qnet.loss, word=word,
             max_payload=max_payload)
    free = getattr(info, "free_ram", 0)
    if free:
        # a load first drops the net the board holds: its memory counts as free
        if info.sizes:
            held = plan(info.sizes, momentum=bool(getattr(info, "momentum", False)),
                        loss=info.loss if info.loss is not None else fixed.SOFTMAX_CE,
                        word=word, max_payload=max_payload)
            free += held.net + held.sample
        else:
            # measured with no net on the board, so they are what a load will find
            p.holes = list(getattr(info, "holes", []) or [])
        p.free = free
    return p


def check(qnet, info, reserve: int = DEFAULT_RESERVE) -> Plan:
    """The plan, or PlanError if the board's free RAM (reported at HELLO) cannot hold it."""
    p = plan_for(qnet, info)
    if p.free is not None and not p.fits(p.free, reserve):
        parts = ", ".join(f"{name} {n}" for name, n in p.parts.items())
        raise PlanError(
            f"net {'-'.join(map(str, p.sizes))} needs {p.need} bytes of the board's RAM "
            f"({parts}; sample {p.sample}; loader {p.transient}) plus a {reserve}-byte reserve, "
            f"but {p.free} bytes are free: shrink the net"
            + (", drop momentum" if p.momentum else "") + " or free RAM on the board")
    big = p.unplaced()
    if big is not None:
        raise PlanError(
            f"net {'-'.join(map(str, p.sizes))} needs one block of {big} bytes, but the "
            f"board's largest free blocks are {', '.join(map(str, p.holes))} bytes "
            f"({p.free} free in all, fragmented): shrink the widest layer"
            + (", drop momentum" if p.momentum else "") + " or free RAM on the board")
    return p
