# The REPL of a stock MicroPython board, for the simulated board of host/boards/sim.py: run by the
# unix MicroPython on a pseudo-terminal, with its working directory as the board's filesystem.
#
# It speaks what the host's tools speak to a board: the friendly prompt; the raw REPL (Ctrl-A;
# the code, Ctrl-D; "OK", the output, Ctrl-D, the error, Ctrl-D, ">"); Ctrl-D at an empty raw
# REPL is a soft reset (globals and imported modules gone, files kept); Ctrl-B back to the
# friendly prompt. Raw-paste mode is declined ("R\x00"), so mpremote uses the plain raw REPL.
# Nothing of edgebp is here: the host deploys it to this board's filesystem like to any other.
#
# Runs only under MicroPython (sys.print_exception).

import gc
import sys

RAW = b"raw REPL; CTRL-B to exit\r\n>"
BANNER = b"MicroPython (simulated board) on unix\r\nType \"help()\" for more information.\r\n"

rd = sys.stdin.buffer
out = sys.stdout.buffer
booted = set(sys.modules)  # what a soft reset keeps


def soft_reset():
    for name in list(sys.modules):
        if name not in booted:
            del sys.modules[name]
    gc.collect()
    return {"__name__": "__main__"}


def report(e):
    sys.print_exception(e, sys.stdout)  # type: ignore[attr-defined]


def raw_run(code, g):
    out.write(b"OK")
    try:
        exec(code, g)
    except BaseException as e:  # a board reports SystemExit and KeyboardInterrupt too
        out.write(b"\x04")
        report(e)
        out.write(b"\x04>")
        return
    out.write(b"\x04\x04>")


def line_run(line, g):
    try:
        line = line.decode()
        try:
            value = eval(line, g)
        except SyntaxError:
            exec(line, g)
        else:
            if value is not None:
                print(repr(value))
    except BaseException as e:
        report(e)


def read1():
    c = rd.read(1)
    if not c:
        raise SystemExit  # the terminal closed: the board is unplugged
    return c


def main():
    g = soft_reset()
    raw = False
    buf = b""
    out.write(BANNER + b">>> ")
    while True:
        c = read1()
        if raw:
            if c == b"\x01":
                buf = b""
                out.write(b"\r\n" + RAW)
            elif c == b"\x02":
                raw = False
                out.write(b"\r\n" + BANNER + b">>> ")
            elif c == b"\x03":
                buf = b""
            elif c == b"\x04":
                if buf:
                    raw_run(buf, g)
                else:
                    g = soft_reset()
                    out.write(b"OK\r\nMPY: soft reboot\r\n" + RAW)
                buf = b""
            elif c == b"\x05" and not buf:
                if rd.read(2) == b"A\x01":
                    out.write(b"R\x00")
            else:
                buf += c
            continue
        if c == b"\x01":
            raw = True
            buf = b""
            out.write(b"\r\n" + RAW)
        elif c == b"\x03":
            buf = b""
            out.write(b"\r\nKeyboardInterrupt\r\n>>> ")
        elif c == b"\x04" and not buf:
            g = soft_reset()
            out.write(b"\r\nMPY: soft reboot\r\n" + BANNER + b">>> ")
        elif c in (b"\r", b"\n"):
            out.write(b"\r\n")
            if buf.strip():
                line_run(buf, g)
            buf = b""
            out.write(b">>> ")
        elif c in (b"\x7f", b"\x08"):
            if buf:
                buf = buf[:-1]
                out.write(b"\x08 \x08")
        elif c >= b" ":
            buf += c
            out.write(c)


if __name__ == "__main__":
    main()
