# Importing modules on a board whose filesystem reader leaves garbage between them.
#
# An import leaves its lasting objects between the file reader's transient buffers (on a
# littlefs board, every 12 KB or so), and the gc takes the lowest free blocks that fit; so
# modules imported one after another on a fresh heap end up strewn over it, and once the
# garbage is collected the free heap is cut into holes smaller than a net's tensors or the
# native kernels (22 KB on armv7m). packed() imports each module with most of the free heap
# held by one block (a ballast) released afterwards: each module packs against the ones
# before it, and the ballast leaves one hole. Measured on the emulated Cortex-M3 (192 KiB
# heap), for the training server: the largest free block after the imports is 121 KB of
# 138 KB free, against 9 KB when imported plainly.
#
# Import the kernels first (None in `names`: kern.select(); the native module is the largest
# single piece), then the rest leaves first, so that each import finds its own imports done.
# Call it at the start of a program, before anything else is on the heap.

import gc
import sys

# Heap left free beside the ballast for one import (measured on the emulated Cortex-M3: the
# native kernels need 24-32 KB, the other modules less)
ROOM = 32 * 1024


def _scrub(d):
    # overwrite the stack below this frame: a stale word there (the gc is conservative)
    # would keep a released ballast alive
    a = b = c = e = f = g = h = i = j = k = 0  # noqa: F841
    if d:
        _scrub(d - 1)


def _ballast(room):
    # one block of all the free heap but `room` bytes, at the lowest addresses that hold it
    gc.collect()
    if not hasattr(gc, "mem_free"):  # CPython: no heap of its own to pack
        return None
    n = gc.mem_free() - room
    if n <= 0:
        return None
    try:
        return bytearray(n)
    except MemoryError:
        return None


def _import(name):
    if name is None:
        from edgebp import kern

        kern.select()
    else:
        __import__(name)


def packed(names, room=ROOM):
    """Import `names` in order (None: the kernels, kern.select()), each beside a ballast.
    Returns False once an import does not fit beside its ballast or fails: the rest are left
    to the caller's plain imports, which say what is wrong, if anything is."""
    for name in names:
        if name is not None and name in sys.modules:
            continue
        ballast = _ballast(room)
        try:
            _import(name)
        except (MemoryError, ImportError):
            return False
        finally:
            ballast = None  # noqa: F841
            _scrub(16)
            gc.collect()
    return True
