"""What a net's training state really takes on a MicroPython heap, measured on a runtime.

The planner (edgebp.host.nets.planner) counts the bytes by the allocator's rules; `measure`
loads the net under a real MicroPython (a board's runtime of host/boards/mprun.py) and
reads gc.mem_alloc(), so the tests can hold the two against each other: at the peak of the
load as well as once it is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgebp.host.boards import mprun

# Loaded the way the board's server loads it (the .ebp loader, then the sample buffers while
# the loader is still held) after one warm-up load, so imports, interned names and the
# kernel module are already on the heap.
#
# PEAK: with the gc off, everything the load allocates, garbage included: what the heap's
# high-water mark rises by (nothing the load makes is freed before it ends). LIVE: at the
# end of the load, before the loader is let go, what a collection leaves: the least the peak
# can be. NET: the net alone, once the loader and the sample buffers are gone.
#
# The unix port and the boards collect on gc.collect(); the WebAssembly port's gc.collect()
# does nothing (its heap grows instead) and it reclaims garbage only when control is back in
# JavaScript: there PEAK is read as everywhere (no collection runs during a load anyway) and
# NET in a JS timer callback, once with the net kept and once without, and the difference
# taken; LIVE is not measured.
_MEASURE = """
import gc, sys
from edgebp import imports, kern

# as the firmware imports them on a board of fixed heap (edgebp/imports.py): the kernels
# first (chosen once: where viper is missing, each failed import of it leaves a few blocks
# behind the first time or two, which are no part of the net; the native module is the
# largest single block, which the heap has before anything else is imported), then each
# module packed beside a ballast (the net file's source below is compiled in pieces of its
# own; the WebAssembly port, whose collection frees nothing, imports them plainly)
if sys.platform != "webassembly":
    imports.packed([None, "edgebp.fixed", "edgebp.luts", "edgebp.net", "edgebp.ebp"])
K = kern.select()

from edgebp import ebp
from edgebp.fixed import SOFTMAX_CE
from edgebp.net import zeros
from netdata import DATA, KEEP

def scrub(d):
    # overwrite stack slots that may still point at the loader's garbage
    a = b = c = e = f = g = h = i = j = k = 0
    if d:
        scrub(d - 1)

LD = NET = X = T = None  # made before the measuring: a new global would grow the dict

def load():
    # firmware/server.py: LOAD_BEGIN .. LOAD_COMMIT, then install() with the loader held
    global LD, NET, X, T
    LD = ebp.Loader(len(DATA), K)
    LD.feed(DATA, 0, len(DATA))
    NET = LD.finish()
    n_t = 1 if NET.loss_kind == SOFTMAX_CE else NET.sizes[NET.L]
    X = zeros("h", NET.sizes[0])
    T = zeros("h", n_t)

load()
LD = NET = X = T = None

def run():
    global LD, X, T
    scrub(32)
    gc.collect()
    a0 = gc.mem_alloc()
    gc.disable()
    load()
    a1 = gc.mem_alloc()
    gc.enable()
    scrub(32)
    gc.collect()
    a2 = gc.mem_alloc()
    LD = X = T = None
    scrub(32)
    gc.collect()
    a3 = gc.mem_alloc()
    print("PEAK", a1 - a0)
    print("LIVE", a2 - a0)
    print("NET", a3 - a0)

print("WORD", 8 if sys.maxsize > 0x7FFFFFFF else 4)
print("KERNELS", kern.name(K))

if sys.platform == "webassembly":
    import js
    a0 = gc.mem_alloc()
    load()
    print("PEAK", gc.mem_alloc() - a0)
    LD = X = T = None
    if not KEEP:
        NET = None
    scrub(32)

    def report(*args):
        print("HEAP", gc.mem_alloc())

    js.setTimeout(report, 0)
else:
    run()
"""


@dataclass
class HeapUse:
    """Bytes of a MicroPython heap a net's load takes (gc.mem_alloc() differences)."""

    net: int  # the net alone, once loaded
    peak: int  # the load at its peak: everything allocated, garbage included
    live: int | None  # what is live at the end of the load, loader held (None: not measured)
    word: int  # bytes per word of the runtime's heap
    kernels: str  # the kernel set the net runs: "native", "viper" or "python"


def measure_load(runtime: str, data: bytes, timeout: float = 60) -> HeapUse:
    """What loading the net of .ebp `data` takes under a MicroPython runtime of
    edgebp.host.boards.mprun ("wasm", "unix", or an emulated board)."""

    def run(keep: bool) -> dict[str, Any]:
        files = mprun.core_files(False)
        files["netdata.py"] = f"DATA = {bytes(data)!r}\nKEEP = {keep}\n"
        r = mprun.run(runtime, _MEASURE, files, timeout=timeout)
        if not r.ok:
            raise RuntimeError(f"measuring on {runtime} failed:\n{r.stdout}{r.stderr}")
        words = dict(line.split()[:2] for line in r.stdout.split("\n")
                     if line.startswith(("NET ", "HEAP ", "WORD ", "PEAK ", "LIVE ",
                                         "KERNELS ")))
        return {k: v if k == "KERNELS" else int(v) for k, v in words.items()}

    kept = run(True)
    if runtime == "wasm":
        return HeapUse(kept["HEAP"] - run(False)["HEAP"], kept["PEAK"], None, kept["WORD"],
                       kept["KERNELS"])
    return HeapUse(kept["NET"], kept["PEAK"], kept["LIVE"], kept["WORD"], kept["KERNELS"])


def measure(runtime: str, data: bytes, timeout: float = 60) -> tuple[int, int]:
    """(bytes, word): what gc.mem_alloc() grows by when the board builds the net of .ebp
    `data` (measure_load().net), and the bytes per word of that runtime's heap."""
    use = measure_load(runtime, data, timeout)
    return use.net, use.word


_IMPORT = """
import gc, sys
import micropython
from edgebp.firmware import main
main._import_packed()
from edgebp.firmware import server
from edgebp import kern
K = kern.select()


gc.collect()
micropython.qstr_info()
a = gc.mem_alloc()
import {module}
gc.collect()
b = gc.mem_alloc()
micropython.qstr_info()
print("IMPORT", b - a)
print("WORD", 8 if sys.maxsize > 0x7FFFFFFF else 4)
"""


def _qstr_tables(line: str) -> int:
    # "qstr pool: n_pool=5, n_qstr=504, n_str_data_bytes=4142, n_total_bytes=8638"
    fields = dict(f.strip().split("=") for f in line.split(":", 1)[1].split(","))
    return int(fields["n_total_bytes"]) - int(fields["n_str_data_bytes"])


def measure_import(runtime: str, module: str, timeout: float = 60) -> tuple[int, int]:
    """(bytes, word): what importing `module` (e.g. "edgebp.adam") keeps on the heap of a
    MicroPython runtime in the firmware's own state (its modules imported as a board of
    fixed heap imports them, the kernels selected), and the bytes per word of that
    runtime's heap. A new qstr pool that the import happens to start is not counted: the
    pools' tables are shared by every string interned before and after, and which import
    starts the next one depends on all of them (a pool holds twice the entries of the one
    before: 20, 40, ... 320, 640; on the emulated boards the firmware's state has 504 of the
    first 620 taken, and edgebp.adam and edgebp.sdlm add about 30). The module's own strings
    are counted. (The WebAssembly port's gc.collect() frees nothing: there the compiler's
    garbage is counted too.)"""
    r = mprun.run(runtime, _IMPORT.format(module=module), mprun.core_files(True),
                  timeout=timeout)
    if not r.ok:
        raise RuntimeError(f"measuring on {runtime} failed:\n{r.stdout}{r.stderr}")
    lines = r.stdout.split("\n")
    words = dict(line.split()[:2] for line in lines if line.startswith(("IMPORT ", "WORD ")))
    tables = [_qstr_tables(line) for line in lines if line.startswith("qstr pool:")]
    grown = tables[-1] - tables[0] if len(tables) == 2 else 0
    return int(words["IMPORT"]) - grown, int(words["WORD"])
