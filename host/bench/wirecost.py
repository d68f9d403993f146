"""Instructions the frame check costs the board, per frame: CRC-16 (protocol 1) against CRC-32
in two 16-bit halves (protocol 2), on an emulated board with `-icount shift=0`.

    python -m edgebp.host.bench.wirecost [--board cortex-m3] [--board rv32]

For frames of several payload sizes it prints the instructions per frame of: the check alone
(wire.crc16 over the frame, as protocol 1's decoder ran it, against wire.crc32_put and the
four-byte compare), the whole wire.Decoder.feed of the frame (COBS decoding and the CRC-32
check), and wire.seal + wire.encode of an answer that size. For scale: one training step of
the 64-32-10 net takes about 20 million instructions in pure Python and 0.6 million with the
viper kernels (host/bench/mcu.py), and one of its samples is a 130-byte TRAIN payload.
"""

from __future__ import annotations

import argparse
import sys

from edgebp.host.bench.kernels import _table
from edgebp.host.boards import mprun, qemu

SIZES = [4, 32, 130, 512, 1024]

_SCRIPT = """
import time
from edgebp import wire
BUDGET = 2000

def ticks(f, n):
    t0 = time.ticks_us()
    f(n)
    return time.ticks_diff(time.ticks_us(), t0)

def empty(n):
    for i in range(n):
        pass

def per_call(f):
    n = 1
    while ticks(f, n) < BUDGET // 8 and n < 1 << 16:
        n *= 4
    n = max(n, n * BUDGET // max(ticks(f, n), 1))
    return (ticks(f, n) - ticks(empty, n)) / n

for size in {sizes}:
    m = 2 + size
    raw = bytearray(m + 4)
    for i in range(m):
        raw[i] = (i * 37 + 11) & 0xFF
    chk = bytearray(4)
    def old(n):
        for i in range(n):
            c = wire.crc16(raw, 0, m)
            c != raw[m] | (raw[m + 1] << 8)
    def new(n):
        for i in range(n):
            wire.crc32_put(raw, 0, m, chk, 0)
            chk[0] != raw[m] or chk[1] != raw[m + 1] or chk[2] != raw[m + 2] or chk[3] != raw[m + 3]
    wire.seal(raw, m)
    enc = bytearray(wire.encoded_max(m + 4))
    k = wire.encode(raw, m + 4, enc)
    dec = wire.Decoder(m + 8)
    def feed(n):
        for i in range(n):
            dec.feed(enc, 0, k)
    assert (dec.feed(enc, 0, k), dec.result) == (k, m)
    def send(n):
        for i in range(n):
            wire.encode(raw, wire.seal(raw, m), enc)
    print("W %d %.3f %.3f %.3f %.3f" % (size, per_call(old), per_call(new), per_call(feed),
                                        per_call(send)))
"""


def measure(kind: str, timeout: float = 900) -> list[list[float]]:
    files = {**mprun.core_files(False)}
    with qemu.QemuBoard(kind, icount=True) as board:
        code, out, timed_out = qemu.run_on(board, _SCRIPT.format(sizes=SIZES), files, timeout)
    if code != 0 or timed_out:
        why = "timed out" if timed_out else f"exit {code}"
        raise RuntimeError(f"benchmark on {kind} failed ({why}):\n{out[-3000:]}")
    return [[float(v) for v in line.split()[1:]] for line in out.splitlines()
            if line.startswith("W ")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--board", action="append", choices=qemu.KINDS,
                        help="emulated board (repeatable; default: cortex-m3)")
    args = parser.parse_args(argv)
    for kind in args.board or ["cortex-m3"]:
        reason = qemu.find(kind)
        if reason is not None:
            print(f"bench.wirecost: {kind}: {reason}", file=sys.stderr)
            return 2
        try:
            rows = measure(kind)
        except (RuntimeError, qemu.QemuError) as e:
            print(f"bench.wirecost: {e}", file=sys.stderr)
            return 1
        print(f"{kind} (qemu -icount shift=0; instructions per frame)")
        print(_table(["payload B", "CRC-16 check", "CRC-32 check", "ratio", "per byte +",
                      "Decoder.feed", "seal+encode"],
                     [[f"{int(s)}", f"{o * 1000:,.0f}", f"{n * 1000:,.0f}", f"{n / o:.2f}",
                       f"{(n - o) * 1000 / (s + 2):,.0f}", f"{f * 1000:,.0f}",
                       f"{e * 1000:,.0f}"] for s, o, n, f, e in rows]))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
