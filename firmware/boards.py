# Board profiles: which byte stream the server talks on and how big its buffers are.
#
# "repl" (the default everywhere): the REPL's own stream, sys.stdin.buffer / sys.stdout.buffer.
# That is USB-CDC on rp2, pyboard (stm32) and native-USB esp32-s2/s3/c3, and the USB-UART
# bridge on classic esp32 boards. Ctrl-C is switched off while frames flow, since 0x03 is data
# there, and switched back on when the server returns, so the REPL and mpremote work again.
# "uart": a machine.UART (uart_id, baudrate, tx/rx pins) with a receive buffer that holds
# `credits` frames, because a UART has no flow control: what the board cannot buffer is lost.
#
# max_payload bounds one frame (a TRAIN frame must hold one sample: 2 * (n_in + n_t) + 2
# bytes); credits is how many frames the host may send ahead of the board's answers.
# led: the pin of a status LED, lit while the server runs (None: the board has none that
# every variant shares; pass led=... to start() for yours).
# probe: the heap has a fixed size, so HELLO may report its largest free blocks (found by
# trial allocations) to the host's memory planner; esp32 grows its heap from the system's
# when an allocation fails, so probing there would only grow it.

import sys


class Profile:
    def __init__(self, name, max_payload, credits, uart_id=None, baudrate=115200, tx=None,
                 rx=None, rxbuf=None, probe=False, led=None):
        self.name = name
        self.stream = "repl"
        self.max_payload = max_payload
        self.credits = credits
        self.uart_id = uart_id
        self.baudrate = baudrate
        self.tx = tx  # pin numbers; None where the UART's pins are fixed (stm32)
        self.rx = rx
        self.rxbuf = rxbuf  # the port's name of the receive-buffer size argument
        self.probe = probe
        self.led = led


PROFILES = {
    # "LED" is the Pico's (and Pico W's) on-board LED
    "rp2": Profile("rp2", 2048, 4, 0, 115200, 0, 1, "rxbuf", probe=True, led="LED"),
    "esp32": Profile("esp32", 2048, 4, 1, 115200, 17, 16, "rxbuf"),
    # the pyboard's first LED (red)
    "stm32": Profile("stm32", 2048, 4, 1, 115200, None, None, "read_buf_len", probe=True,
                     led="LED_RED"),
    "unix": Profile("unix", 4096, 8, probe=True),
    # MicroPython's qemu port (emulated Cortex-M3 and rv32 boards): a fixed heap, a UART
    "qemu": Profile("qemu", 512, 2, probe=True),
    "generic": Profile("generic", 512, 2),
}

# sys.platform -> profile
PLATFORMS = {"rp2": "rp2", "esp32": "esp32", "pyboard": "stm32", "linux": "unix",
             "darwin": "unix", "win32": "unix", "qemu": "qemu"}


def detect():
    return PLATFORMS.get(sys.platform, "generic")


def profile(name=None, **overrides):
    """A copy of profile `name` (default: this board's) with `overrides` applied;
    uart=True selects the UART."""
    name = name or detect()
    if name not in PROFILES:
        raise ValueError("unknown board %r (known: %s)" % (name, ", ".join(sorted(PROFILES))))
    base = PROFILES[name]
    p = Profile(name, base.max_payload, base.credits, base.uart_id, base.baudrate, base.tx,
                base.rx, base.rxbuf, base.probe, base.led)
    if overrides.pop("uart", False):
        p.stream = "uart"
    for key in overrides:
        if not hasattr(p, key):
            raise ValueError("unknown profile setting %r" % key)
        setattr(p, key, overrides[key])
    return p


def _nothing():
    pass


def status_led(p):
    """set(on) for the profile's LED, or a no-op where there is none (or no such pin)."""
    if p.led is None:
        return _nothing_with
    try:
        import machine

        pin = machine.Pin(p.led, machine.Pin.OUT)
    except (ImportError, AttributeError, ValueError, TypeError):
        return _nothing_with
    return pin.value


def _nothing_with(on):
    pass


def open_stream(p):
    """(rx, tx, restore) for profile p: the server reads rx, writes tx; restore() undoes."""
    if p.stream == "uart":
        import machine

        from edgebp import wire

        if p.uart_id is None:
            raise ValueError("board %s has no UART settings: give uart_id=.. (and tx=, rx=)"
                             % p.name)
        kw = {"baudrate": p.baudrate, "timeout": 1000}
        if p.tx is not None:
            kw["tx"] = machine.Pin(p.tx)
            kw["rx"] = machine.Pin(p.rx)
        if p.rxbuf:
            kw[p.rxbuf] = p.credits * wire.encoded_max(p.max_payload + 4)
        port = machine.UART(p.uart_id, **kw)
        return port, port, _nothing
    try:
        import micropython

        micropython.kbd_intr(-1)

        def restore():
            micropython.kbd_intr(3)

    except (ImportError, AttributeError):
        restore = _nothing
    return sys.stdin.buffer, sys.stdout.buffer, restore
