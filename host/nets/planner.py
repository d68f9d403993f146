"""Memory planner: the bytes a net's training state takes on a board's MicroPython heap, and
what loading it takes at its peak.

MicroPython's garbage collector hands out memory in blocks of 4 machine words (16 bytes on a
32-bit MCU, 32 on the unix port on x64), and `gc.mem_alloc()` counts whole blocks. So what a
net costs is the sum, over every object the board keeps for it, of its allocations rounded
up to blocks:

  array('h'/'i', n)  a 4-word header block, then the items in blocks of their own (none if
                     n == 0): W, B (int16), GW, GB (int32 gradient sums), VW, VB (int32
                     momentum), Z, A, D (int16 pre-activations, activations, deltas), rng
  list of n          a 4-word header, then its item array: 4 words to start with, doubled as
                     items are appended
  Net instance       a 4-word header, then its attribute table: 2 words per slot, slots
                     growing through MicroPython's hash-table sizes (py/map.c) until every
                     attribute has one
  native tables      with the native kernels (Net._fuse): a tuple of the net's lists of
                     buffers and an array('i') of 5 + 9 L small tables
  Adam               with Adam (edgebp/adam.py, attached by the loader after Net()): its
                     instance, the lists MW, MB, VW, VB and their int32 arrays, first and
                     second moments of every parameter (8 bytes more per parameter than
                     SGD). The code of edgebp.adam, imported at the first Adam load (the
                     loader imports it while it parses the header) and kept by the board
                     after it, is no part of the net but of that load: ADAM_CODE, measured
                     (edgebp.host.boards.heap.measure_import), and with the native kernels
                     the block of adam_native.mpy (ADAM_NATIVE_CODE), counted unless the
                     board has them already (adam_imported)
  SDLM               with SDLM (edgebp/sdlm.py, attached likewise): its instance, the
                     lists C, HW, HB and their int16 arrays (C per unit, HW, HB per
                     parameter: 2 bytes more per parameter than SGD), its formats fc, fh
                     and its five per-layer lists of constants; the loader's own fc, fh
                     lists are garbage. Its code likewise: SDLM_CODE (and sdlm_native.mpy's
                     block, SDLM_NATIVE_CODE) unless sdlm_imported

The Net's attribute count is read off the engine itself (a Net built here under CPython),
so the plan follows edgebp/net.py as it changes. Layer tables (sizes, acts, shifts) are the
lists the .ebp loader builds.

A load takes more than the net at its peak (firmware/server.py: LOAD_BEGIN .. LOAD_COMMIT):
the loader (its object and header copy), the server's buffers for one sample (x, t), made
while the loader is still held, and the garbage the load leaves as it goes, which no
collection frees before the load ends: two blocks per array (edgebp.net.zeros() sizes each
from a range, whose object and iterator are garbage), a tuple in apply_hyper() and, with the
native kernels, the lists _fuse() builds its table from. The server's frame buffers are
allocated when it starts (they are already out of the free RAM that HELLO reports).

The board keeps the net it holds until the new one is committed (a load refused leaves it in
place), so a load's peak comes on top of that net, which HELLO's free RAM already leaves out.
Where the new net does not fit beside it, the host drops the board's net first (Session.load):
the plan then counts that net's memory as free and says so (`replaces`).

Every allocation of the load is recorded in the order the board makes it, so that it can be
placed in the heap's largest free blocks, as HELLO reports them (the gc takes contiguous
blocks: a fragmented heap may hold a net's total but not its biggest tensors).

    p = plan([64, 32, 10], momentum=True)     # 32-bit MCU, native kernels
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
LIST_EXTEND_SLACK = 4  # py/objlist.c list_extend(): the slots it adds beyond what it needs
WORDS_PER_BLOCK = 4  # MICROPY_BYTES_PER_GC_BLOCK = 4 * word on every port's default build
# Kept below the free RAM (beside what the plan counts) for what a session allocates around
# a load: answers, the odd error text.
DEFAULT_RESERVE = 2048
# firmware/server.py reports this many of the heap's largest free blocks, down to this size
HOLES_REPORTED = 8
HOLE_LEAST = 256
# attributes of an edgebp.ebp.Loader
LOADER_ATTRIBUTES = 16
# Bytes of the heap edgebp.adam's code takes once imported, by word size (measured on the
# emulated boards and the unix port: heap.measure_import, tests/test_planner.py), placed as
# allocations of up to ADAM_CODE_PIECE words, as its functions' code and constants are (in
# the firmware's state, without the qstr pool an import may happen to start: see
# measure_import)
ADAM_CODE = {4: 4480, 8: 5632}
ADAM_CODE_PIECE = 64
# ... and with the native kernels, Adam's native module (adam_native.mpy, which edgebp.adam
# imports for them): on a 32-bit board its code is one block of the heap (about its .mpy's
# 1,734 to 1,945 bytes: 2,144 measured on the emulated Cortex-M3, rounded up); the unix port
# keeps native code outside its heap, where the module object alone is left (measured 352
# bytes)
ADAM_NATIVE_CODE = {4: 2304, 8: 512}
# the same of edgebp.sdlm (its kernels' own module, edgebp.sdlm_viper, comes on top where
# viper runs), and of sdlm_native.mpy (3,392 bytes measured on the emulated rv32; on the unix
# port, as Adam's, the module object and its globals: 384 bytes measured)
SDLM_CODE = {4: 4736, 8: 6016}
SDLM_NATIVE_CODE = {4: 3584, 8: 640}
SDLM_GARBAGE = 4
# Net._fuse (native kernels): the tuple of buffer lists, and P's items per net and per layer
FUSED_LISTS = 10
FUSED_HEAD = 5
FUSED_PER_LAYER = 9
FUSED_TAIL = 1


class PlanError(ValueError):
    """The net does not fit the board: the message carries the numbers."""


@functools.cache
def net_attributes() -> int:
    """How many attributes a Net instance carries (each takes a slot of its table)."""
    net = Net([1, 1], [fixed.IDENTITY], [8, 8], [8], [8], fixed.MSE)
    return len(vars(net))


def adam_attributes() -> int:
    """How many attributes the Adam state of a net carries (edgebp.adam.Adam)."""
    from edgebp import adam

    net = Net([1, 1], [fixed.IDENTITY], [8, 8], [8], [8], fixed.MSE)
    return len(vars(adam.attach(net, 3277, 33)))


def sdlm_attributes() -> int:
    """How many attributes the SDLM state of a net carries (edgebp.sdlm.Sdlm)."""
    from edgebp import sdlm

    net = Net([1, 1], [fixed.IDENTITY], [8, 8], [8], [8], fixed.MSE)
    return len(vars(sdlm.attach(net, 205, 11, 819, [14], [8])))


@dataclass
class Heap:
    """Block accounting of one MicroPython heap: word size in bytes; `allocs` records the
    size of every allocation counted, in order (heaps may share one list), `total` the
    bytes this one counted."""

    word: int = 4
    allocs: list[int] = field(default_factory=list)
    total: int = 0

    @property
    def block(self) -> int:
        return WORDS_PER_BLOCK * self.word

    def alloc(self, nbytes: int) -> int:
        # one gc allocation; a zero-byte request allocates nothing
        n = -(-nbytes // self.block) * self.block
        if n:
            self.allocs.append(n)
            self.total += n
        return n

    def obj(self, words: int = WORDS_PER_BLOCK) -> int:
        return self.alloc(words * self.word)

    def array(self, n: int, itemsize: int) -> int:
        return self.obj() + self.alloc(n * itemsize)

    def list(self, n: int, grown: bool = True) -> int:
        # grown: built by appends (4 slots, doubled when full); else a literal of n items
        alloc = LIST_MIN_ALLOC
        if grown:
            while alloc < n:
                alloc *= 2
        else:
            alloc = n
        return self.obj() + self.alloc(alloc * self.word)

    def tuple(self, n: int) -> int:
        return self.alloc((2 + n) * self.word)  # type, length, the items

    def zeros(self, n: int, itemsize: int, garbage: Heap) -> int:
        # edgebp.net.zeros(): the array from a range, whose object and iterator are garbage
        garbage.obj()
        size = self.array(n, itemsize)
        garbage.obj()
        return size

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
    loader: int = 0  # the loader while it parses the net
    garbage: int = 0  # what the load leaves behind as it goes, freed by the next collection
    fused: bool = True  # the native kernels' tables are counted
    allocs: list[int] = field(default_factory=list)  # the load's allocations, in order
    free: int | None = None  # the board's free RAM, if known
    holes: list[int] = field(default_factory=list)  # its largest free blocks, if known
    holes_by_address: list[int] = field(default_factory=list)  # the same by address, if known
    beside: int = 0  # bytes of the board's net, held while this one loads (0: none)
    replaces: bool = False  # it does not fit beside the board's net, which is dropped first
    adam: bool = False  # Adam in place of SGD: its moments are counted
    code: int = 0  # edgebp.adam's or edgebp.sdlm's code, imported by this load (0: the
    # board has it)
    sdlm: bool = False  # SDLM in place of SGD: its curvatures are counted

    @property
    def net(self) -> int:
        """Bytes the Net and everything it holds take: what gc.mem_alloc() grows by."""
        return sum(self.parts.values())

    @property
    def transient(self) -> int:
        """Bytes the load holds only while it runs: the loader and its garbage."""
        return self.loader + self.garbage

    @property
    def need(self) -> int:
        """Bytes a load takes at its peak: the net, its sample, the loader and the
        garbage made on the way (gc.mem_alloc() grows by this much if nothing is
        collected)."""
        return self.net + self.sample + self.transient + self.code

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
        """The load fits `free` bytes (and the board's largest free blocks, if known)."""
        return self.need + reserve <= free and self.unplaced() is None

    def unplaced(self) -> int | None:
        """The first of the load's allocations, in the order the board makes them, that
        finds no free block left big enough, or None if all find one.

        The gc takes the lowest run of free blocks that fits (first fit), small
        allocations as well. Where the board tells its largest free blocks by address,
        that is what is simulated, each block filled from its low end; the smaller free
        blocks it does not report are taken to hold nothing. Where it tells only their
        sizes, the load must be placed whatever their order: first fit with the blocks
        largest first and smallest first, and each allocation in the largest block left."""
        if self.holes_by_address:
            return _first_fit(self.holes_by_address, self.allocs)
        if not self.holes:
            return None
        for big in (_first_fit(sorted(self.holes, reverse=True), self.allocs),
                    _first_fit(sorted(self.holes), self.allocs),
                    _worst_fit(self.holes, self.allocs)):
            if big is not None:
                return big
        return None

    def blocks_text(self) -> str:
        if self.holes_by_address:
            return ("largest free blocks, by address, "
                    + ", ".join(map(str, self.holes_by_address)))
        return "largest free blocks " + ", ".join(map(str, self.holes))

    def table(self) -> str:
        rows = [(name, n) for name, n in self.parts.items()]
        rows += [("net, total", self.net), ("sample buffers x, t", self.sample)]
        if self.code:
            rows += [("edgebp.sdlm code (first SDLM load)" if self.sdlm
                      else "edgebp.adam code (first Adam load)", self.code)]
        rows += [
                 ("loader (while loading)", self.loader),
                 ("garbage of the load (until collected)", self.garbage),
                 ("load at its peak", self.need),
                 ("server frame buffers (fixed)", self.server)]
        least = "theoretical minimum (int16 W, B)"
        width = max(len(least), *(len(r[0]) for r in rows))
        arch = (f"{8 * self.word}-bit heap, {WORDS_PER_BLOCK * self.word}-byte gc blocks, "
                f"{'native' if self.fused else 'viper or pure-Python'} kernels")
        lines = [f"net {'-'.join(map(str, self.sizes))}"
                 f"{' with momentum' if self.momentum else ''}"
                 f"{' with Adam' if self.adam else ''}"
                 f"{' with SDLM' if self.sdlm else ''}: {self.params} parameters, "
                 f"{arch}"]
        for name, n in rows:
            lines.append(f"  {name.ljust(width)}  {n:8d} B")
        lines.append(f"  {least.ljust(width)}  "
                     f"{self.minimum:8d} B   net / minimum = {self.overhead:.2f}x")
        if self.replaces:
            lines.append(f"  the board's net ({self.beside} B) leaves too little room: it is "
                         "dropped before this load, its RAM counted free")
        elif self.beside:
            lines.append(f"  the board's net ({self.beside} B) stays loaded until this one is "
                         "committed: the free RAM below is beside it")
        if self.free is not None:
            enough = self.need + DEFAULT_RESERVE <= self.free
            lines.append(f"  board free RAM {self.free} B, load needs {self.need} B + "
                         f"{DEFAULT_RESERVE} B reserve: {'enough' if enough else 'too little'}")
        if self.holes:
            big = self.unplaced()
            lines.append(f"  {self.blocks_text()} B; largest allocation {max(self.allocs)} B: "
                         + ("all placed" if big is None else f"a {big} B one finds no room"))
        if self.free is not None:
            lines.append(f"  verdict: {'fits' if self.fits(self.free) else 'does NOT fit'}")
        return "\n".join(lines)


def _first_fit(holes: list[int], allocs: list[int]) -> int | None:
    room = list(holes)
    for n in allocs:
        for i, r in enumerate(room):
            if r >= n:
                room[i] = r - n
                break
        else:
            return n
    return None


def _worst_fit(holes: list[int], allocs: list[int]) -> int | None:
    room = list(holes)
    for n in allocs:
        i = max(range(len(room)), key=room.__getitem__)
        if room[i] < n:
            return n
        room[i] -= n
    return None


def plan(sizes, *, momentum: bool = False, loss: int = fixed.SOFTMAX_CE, word: int = 4,
         max_payload: int = 512, fused: bool = True, adam: bool = False,
         adam_imported: bool = False, sdlm: bool = False, sdlm_imported: bool = False
         ) -> Plan:
    """The heap a net of these layer sizes takes on a board with `word`-byte words, and what
    loading it takes.

    `loss` sets the target width of a sample, `max_payload` the server's frame buffers;
    `fused`: the board runs the native kernels (whose tables the net then holds); `adam`:
    the net trains with Adam (its moments beside the net), and the load imports edgebp.adam
    unless `adam_imported` (a board that loaded an Adam net before keeps the module);
    `sdlm`, `sdlm_imported` the same for SDLM (its curvatures beside the net).
    """
    if adam and sdlm:
        raise ValueError("Adam and SDLM together: a net has one optimiser")
    sizes = [int(n) for n in sizes]
    L = len(sizes) - 1
    if L < 1:
        raise ValueError("a net has at least one layer")
    order: list[int] = []  # every allocation of the load, as the board makes them
    h = Heap(word, order)  # what the net keeps
    ld = Heap(word, order)  # the loader and the sample buffers
    g = Heap(word, order)  # garbage
    outs = sizes[1:]
    weights = [sizes[l] * sizes[l + 1] for l in range(L)]

    # LOAD_BEGIN: the loader, its header copy; then the layer tables it parses
    ld.instance(LOADER_ATTRIBUTES)
    ld.array(ebp.head_len(ebp.MAX_LAYERS, True, True, True), 1)
    code = Heap(word, order)  # edgebp.adam or edgebp.sdlm, imported while the header is parsed
    if (adam and not adam_imported) or (sdlm and not sdlm_imported):
        table = ADAM_CODE if adam else SDLM_CODE
        left = table.get(word, table[8] * word // 8)
        while left > 0:
            left -= code.alloc(min(left, ADAM_CODE_PIECE * word))
        if fused:
            native = ADAM_NATIVE_CODE if adam else SDLM_NATIVE_CODE
            code.alloc(native.get(word, native[8]))
    tables = 2 * h.list(L + 1) + 3 * h.list(L)  # sizes, shift_a; acts, shift_w, shift_d
    # Net(): its attribute table, the per-layer constants (shift_z, k_f, s_f, k_b, s_b, one)
    tables += h.instance(net_attributes()) + 6 * h.list(L)

    def tensors(counts, itemsize):
        return h.list(len(counts)) + sum(h.zeros(n, itemsize, g) for n in counts)

    parts = {"weights W, biases B (int16)": tensors(weights, 2) + tensors(outs, 2),
             "gradient sums GW, GB (int32)": tensors(weights, 4) + tensors(outs, 4)}
    if momentum:
        parts["momentum VW, VB (int32)"] = tensors(weights, 4) + tensors(outs, 4)
    else:
        tables += h.list(L)  # VW = VB, a list of None
    parts["activations Z, A, D (int16)"] = (tensors(outs, 2) + tensors(sizes, 2)
                                            + tensors(outs, 2))
    parts["rng state (int32)"] = h.zeros(1, 4, g)
    parts["Net object and lists"] = tables
    if fused:
        # Net._fuse: P, a literal extended by one literal per layer and the tail, copied to an
        # array
        n_p = FUSED_HEAD + FUSED_PER_LAYER * L + FUSED_TAIL
        g.obj()
        length = slots = FUSED_HEAD
        for n in [FUSED_PER_LAYER] * L + [FUSED_TAIL]:
            g.list(n, grown=False)
            length += n
            if length > slots:
                slots = length + LIST_EXTEND_SLACK  # the old item array is freed
        g.alloc(slots * word)  # P's items, as they end
        g.obj()  # the list's iterator
        parts["native kernels' tables"] = h.tuple(FUSED_LISTS) + h.array(n_p, 4)
    if adam:
        # edgebp.adam.attach, once Net() is built: the instance, then MW, MB, VW, VB
        # its attribute table grows as __init__ sets them: the smaller tables are garbage
        n = adam_attributes()
        for slots in MAP_SIZES[1:]:
            if slots >= n:
                break
            g.alloc(2 * slots * word)
        parts["Adam moments M, V (int32)"] = (h.instance(n)
                                              + 2 * (tensors(weights, 4) + tensors(outs, 4)))
    if sdlm:
        # the loader's fc, fh (built by appends), then edgebp.sdlm.attach: its copies of
        # them, the instance, C, HW, HB and the lists mu, kq, sq, s_w, s_b, one item per
        # layer appended. Besides the loader's lists, attach leaves SDLM_GARBAGE blocks
        # (measured: gc.mem_alloc() on the wasm port, the same for 1 to 8 layers)
        g.list(L)
        g.list(L)
        g.alloc(SDLM_GARBAGE * WORDS_PER_BLOCK * word)
        n = sdlm_attributes()
        lists = 2 * h.list(L, grown=False) + 5 * h.list(L)  # list(fc), list(fh) copy
        parts["SDLM curvatures C, HW, HB (int16)"] = (h.instance(n) + tensors(outs, 2)
                                                     + tensors(weights, 2) + tensors(outs, 2)
                                                     + lists)
    g.tuple(8)  # apply_hyper(): the settings it would restore on an error
    # LOAD_COMMIT: the server's buffers for one sample, the loader still held
    n_t = 1 if loss == fixed.SOFTMAX_CE else sizes[-1]
    loader = ld.total
    sample = ld.zeros(sizes[0], 2, g) + ld.zeros(n_t, 2, g)
    o = Heap(word)  # the server's, allocated when it starts
    frame = wire.HEADER + max_payload + wire.TRAILER
    link = wire.HEADER + 2 + 60 + wire.TRAILER  # link-error answers (server.py _TEXT_MAX)
    server = (o.array(frame, 1) + o.array(255, 1) + o.array(wire.TRAILER, 1) + o.array(frame, 1)
              + o.array(wire.encoded_max(frame), 1) + o.array(link, 1)
              + o.array(wire.encoded_max(link), 1))
    return Plan(sizes, momentum, word, parts, sample=sample, server=server, loader=loader,
                garbage=g.total, fused=fused, allocs=order, adam=adam, code=code.total,
                sdlm=sdlm)


def plan_for(qnet, info=None) -> Plan:
    """The plan of a QuantNet on the board that `info` (Session.info) describes."""
    word = getattr(info, "word", 0) or 4
    max_payload = getattr(info, "max_payload", 512)
    kernels = getattr(info, "kernels", "")
    fused = kernels == "native" if kernels else True  # a board that does not say: the most
    p = plan(qnet.sizes, momentum=qnet.momentum, loss=qnet.loss, word=word,
             max_payload=max_payload, fused=fused,
             adam=getattr(qnet, "adam", None) is not None,
             sdlm=getattr(qnet, "sdlm", None) is not None)
    free = getattr(info, "free_ram", 0)
    if free:
        # measured with the board's net in place, where it stays while this one loads: what
        # a load will find
        p.free = free
        p.holes = list(getattr(info, "holes", []) or [])
        p.holes_by_address = list(getattr(info, "holes_by_address", []) or [])
        if getattr(info, "sizes", None):
            held = plan(info.sizes, momentum=bool(getattr(info, "momentum", False)),
                        loss=info.loss if info.loss is not None else fixed.SOFTMAX_CE,
                        word=word, max_payload=max_payload, fused=fused,
                        adam=bool(getattr(info, "adam", False)),
                        sdlm=bool(getattr(info, "sdlm", False)))
            p.beside = held.net + held.sample
            if not p.fits(free):
                # the host drops the board's net first: its memory counts as free, and
                # where the holes it leaves fall is not known
                p.replaces = True
                p.free = free + p.beside
                p.holes = []
                p.holes_by_address = []
    return p


def check(qnet, info, reserve: int = DEFAULT_RESERVE) -> Plan:
    """The plan, or PlanError if the board's free RAM (reported at HELLO) cannot hold the
    load at its peak, or its largest free blocks cannot hold the load's allocations."""
    p = plan_for(qnet, info)
    name = "-".join(map(str, p.sizes))
    advice = ("shrink the net" + (", drop momentum" if p.momentum else "")
              + (", train with SGD in place of Adam" if p.adam else "")
              + (", train with SGD in place of SDLM" if p.sdlm else "")
              + " or free RAM on the board")
    if p.free is not None and p.need + reserve > p.free:
        parts = ", ".join(f"{part} {n}" for part, n in p.parts.items())
        raise PlanError(
            f"net {name} needs {p.need} bytes of the board's RAM at the peak of its load "
            f"({parts}; sample {p.sample}; loader {p.loader}; garbage {p.garbage}) plus a "
            f"{reserve}-byte reserve, but {p.free} bytes are free: {advice}")
    big = p.unplaced()
    if big is not None:
        raise PlanError(
            f"net {name} needs {p.need} bytes at the peak of its load, in blocks of up to "
            f"{max(p.allocs)} bytes, but the board's {p.blocks_text()} bytes ({p.free} "
            f"free in all, fragmented) leave no room for one of {big} bytes: {advice}")
    return p
