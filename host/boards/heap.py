"""What a net's training state really takes on a MicroPython heap, measured on a runtime.

The planner (edgebp.host.nets.planner) counts the bytes by the allocator's rules; `measure`
builds the net under a real MicroPython and reads gc.mem_alloc(), so the tests can hold the
two against each other.
"""

from __future__ import annotations

from edgebp.host.boards import mprun

# Built the way the board builds it (the .ebp loader) after one warm-up build, so imports,
# interned names and the kernel module are already on the heap. The unix port collects on
# gc.collect(); the WebAssembly port's gc.collect() does nothing (its heap grows instead) and
# it reclaims garbage only when control is back in JavaScript: there the heap is read in a JS
# timer callback, once with the net kept and once without, and the difference taken.
_MEASURE = """
import gc, sys
from edgebp import ebp, kern
from netdata import DATA, KEEP

# chosen once: where viper is missing, each failed import of it leaves a few blocks behind
# the first time or two, which are no part of the net
K = kern.select()

def build():
    ld = ebp.Loader(len(DATA), K)
    ld.feed(DATA, 0, len(DATA))
    return ld.finish()

def scrub(d):
    # overwrite stack slots that may still point at the loader's garbage
    a = b = c = e = f = g = h = i = j = k = 0
    if d:
        scrub(d - 1)

NET = build()
NET = None

def run():
    gc.collect()
    a0 = gc.mem_alloc()
    net = build()
    scrub(32)
    gc.collect()
    a1 = gc.mem_alloc()
    print("NET", a1 - a0)
    return net

print("WORD", 8 if sys.maxsize > 0x7FFFFFFF else 4)

if sys.platform == "webassembly":
    import js
    NET = build() if KEEP else None
    scrub(32)

    def report(*args):
        print("HEAP", gc.mem_alloc())

    js.setTimeout(report, 0)
else:
    NET = run()
"""


def measure(runtime: str, data: bytes, timeout: float = 60) -> tuple[int, int]:
    """(bytes, word): what gc.mem_alloc() grows by when the board builds the net of .ebp
    `data`, under a MicroPython runtime of edgebp.host.boards.mprun ("wasm" or "unix"), and
    the bytes per word of that runtime's heap."""

    def run(keep: bool) -> dict[str, int]:
        files = mprun.core_files(False)
        files["netdata.py"] = f"DATA = {bytes(data)!r}\nKEEP = {keep}\n"
        r = mprun.run(runtime, _MEASURE, files, timeout=timeout)
        if not r.ok:
            raise RuntimeError(f"measuring on {runtime} failed:\n{r.stdout}{r.stderr}")
        return {k: int(v) for k, v in (line.split() for line in r.stdout.split("\n")
                                       if line.startswith(("NET", "HEAP", "WORD")))}

    kept = run(True)
    if runtime == "wasm":
        return kept["HEAP"] - run(False)["HEAP"], kept["WORD"]
    return kept["NET"], kept["WORD"]
