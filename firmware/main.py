# Entry point on a board: `from edgebp.firmware.main import start; start()` at the REPL (the
# host does this through the raw REPL, as mpremote does). The board answers edgebp frames
# until the host says BYE, then the REPL is back.

# Written once the stream is binary, so the host knows the server runs. The zero ends it as
# a frame: a host already decoding frames drops it as one bad frame and loses nothing else.
READY = b"\r\nedgebp ready\r\n\x00"


def start(board=None, kernels=None, **options):
    """Serve on the board's REPL stream, or a UART: start(uart=True[, uart_id=1, tx=4, rx=5]).
    `options` override the board profile (firmware/boards.py)."""
    from edgebp.firmware import boards, server

    p = boards.profile(board, **options)
    led = boards.status_led(p)
    rx, tx, restore = boards.open_stream(p)
    try:
        s = server.Server(rx, tx, p.max_payload, p.credits, p.name, kernels, probe=p.probe)
        tx.write(READY)
        led(1)
        s.serve()
    finally:
        led(0)
        restore()
