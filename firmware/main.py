# Entry point on a board: `from edgebp.firmware.main import start; start()` at the REPL (the
# host does this through the raw REPL, as mpremote does). The board answers edgebp frames
# until the host says BYE, then the REPL is back.

# Written once the stream is binary, so the host knows the server runs. The zero ends it as
# a frame: a host already decoding frames drops it as one bad frame and loses nothing else.
READY = b"\r\nedgebp ready\r\n\x00"

# The firmware's modules in the order they are imported on a board of fixed heap
# (edgebp/imports.py): the kernels first, then the rest leaves first.
_MODULES = (None, "edgebp.fixed", "edgebp.luts", "edgebp.wire", "edgebp.net", "edgebp.ebp",
            "edgebp.ckpt", "edgebp.firmware.server")


def _import_packed():
    # Once an import does not fit beside its ballast, the rest are left to the plain import
    # of the server, into the one hole the packed ones left (the server's own compile, from
    # a .py, is the largest transient need: it comes before the kernels' then, as without
    # packing).
    import sys

    if "edgebp.firmware.server" in sys.modules:
        return
    from edgebp import imports

    imports.packed(_MODULES)


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
