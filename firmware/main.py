# Entry point on a board: `from edgebp.firmware.main import start; start()` at the REPL (the
# host does this through the raw REPL, as mpremote does). The board answers edgebp frames
# until the host says BYE, then the REPL is back.

# Written once the stream is binary, so the host knows the server runs. The zero ends it as
# a frame: a host already decoding frames drops it as one bad frame and loses nothing else.
READY = b"\r\nedgebp ready\r\n\x00"

# The firmware's modules in the order _import_packed() brings them in: the kernels first
# (None: kern.select(); the native module is the largest single piece), then the rest
# leaves first, so that each import finds its own imports done.
_MODULES = (None, "edgebp.fixed", "edgebp.luts", "edgebp.wire", "edgebp.net",
            "edgebp.ebp", "edgebp.ckpt", "edgebp.firmware.server")
# Heap left free beside the ballast for one import (measured on the emulated Cortex-M3: the
# native kernels need 24-32 KB, the other modules less)
_ROOM = 32 * 1024


def _scrub(d):
    # overwrite the stack below this frame: a stale word there (the gc is conservative)
    # would keep a released ballast alive
    a = b = c = e = f = g = h = i = j = k = 0  # noqa: F841
    if d:
        _scrub(d - 1)


def _ballast(room):
    # one block of all the free heap but `room` bytes, at the lowest addresses that hold it
    import gc

    gc.collect()
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


def _import_packed():
    # Import the server and the kernels one module at a time, each with most of the free
    # heap held by one block (a ballast) released afterwards. An import leaves its lasting
    # objects between the file reader's transient buffers (on a littlefs board, every 12 KB
    # or so), which would cut the heap into holes smaller than a net's tensors: the gc takes
    # the lowest free blocks that fit, so beside a ballast each module packs against the
    # ones before it, and the ballast leaves one hole. Measured on the emulated Cortex-M3
    # (192 KiB heap): the largest free block after the imports is 121 KB of 138 KB free,
    # against 9 KB when imported plainly. Once an import does not fit beside its ballast,
    # the rest are left to the plain import of the server, into the one hole the packed ones
    # left (the server's own compile, from a .py, is the largest transient need: it comes
    # before the kernels' then, as without packing).
    import gc
    import sys

    if "edgebp.firmware.server" in sys.modules:
        return
    for name in _MODULES:
        # The kernels come first, with no ballast: on the heap as the reset left it the
        # native module's one block (about 22 KB) goes to the bottom, while a ballast of all
        # but _ROOM must take one contiguous run and may leave the room in two pieces that
        # neither hold it (measured on the emulated Cortex-M3: that failed the first import,
        # which ended the packing, and the plain imports left a largest block of 56 KB)
        ballast = _ballast(_ROOM) if name is not None else None
        try:
            _import(name)
        except (MemoryError, ImportError):
            return  # the server's own import says what is wrong, if anything is
        finally:
            ballast = None  # noqa: F841
            _scrub(16)
            gc.collect()


def start(board=None, kernels=None, **options):
    """Serve on the board's REPL stream, or a UART: start(uart=True[, uart_id=1, tx=4, rx=5]).
    `options` override the board profile (firmware/boards.py)."""
    from edgebp.firmware import boards

    p = boards.profile(board, **options)
    if p.probe:  # a heap of fixed size: its holes bound the nets that fit
        _import_packed()
    from edgebp.firmware import server

    led = boards.status_led(p)
    rx, tx, restore = boards.open_stream(p)
    s = None
    try:
        s = server.Server(rx, tx, p.max_payload, p.credits, p.name, kernels, probe=p.probe)
        tx.write(READY)
        led(1)
        s.serve()
    finally:
        # on every way out (BYE, the end of the input, an error): the REPL's Ctrl-C back
        restore()
        led(0)
        if s is not None:
            s.close()
