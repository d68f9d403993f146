"""Training from data kept on the board against streaming it, on an emulated board with
`-icount shift=0` (time.ticks_us() counts 1000 instructions: deterministic).

    python -m edgebp.host.bench.ondata [--board cortex-m3] [--samples N]

On a fresh flash: edgebp deployed (the native kernels where the board loads them), a digits
64-32-10 relu/softmax net (examples/data/digits_train.csv, init --hidden 32 --batch 16), the
samples pushed with `edgebp data push`. Then, in the board's own time (instructions):
- the board's share of streaming: a Server fed the TRAIN frames a Session sends (3 samples a
  frame) from RAM: COBS decoding, the CRC-32 check, parsing, the step, the ACK;
- from its flash: a Server answering one DATASET request for the whole epoch;
- the split of the latter: reading a sample (dataset.Data.read) and the step (Net.learn),
  timed in loops of their own, and the once-a-session check of the whole file.
The link's bound: a 115200-baud UART carries 11,520 bytes/s, each sample costs its share of
a TRAIN frame on the wire. Last, wall-clock samples/s through the board's pty with the real
Session (not deterministic: the host and qemu's speed), and how many digits samples the
board's 2 MiB littlefs holds once edgebp is deployed.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgebp import wire
from edgebp.host.bench.kernels import _table
from edgebp.host.boards import ondata, qemu
from edgebp.host.boards.board import Board
from edgebp.host.boards.session import Session
from edgebp.host.nets import ebpfile
from edgebp.host.nets.qnet import Hyper
from edgebp.host.nets.reference import epoch_order, epoch_state

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "examples" / "data" / "digits_train.csv"
PER_FRAME = 3  # samples per TRAIN frame: what Session sends in its default 512-byte frames
BAUD_BYTES = 11520  # a 115200-baud UART, 10 bits a byte

_SETUP = """
import gc, time
from edgebp.firmware.main import _import_packed
_import_packed()  # the server's modules packed low in the heap, as start() does
from edgebp import dataset, ebp, kern, wire
from edgebp.firmware.server import Server
from edgebp.net import zeros
kern.select()
f = open('bench_net.ebp', 'rb')
try:
    NET = f.read()
finally:
    f.close()
f = None

class Stream:
    # frames from RAM, answers counted and dropped: a UART without its wire time
    def __init__(self, data):
        self.data = data
        self.mv = memoryview(data)
        self.pos = 0
        self.out = 0
    def readinto(self, buf, n):
        k = len(self.data) - self.pos
        if k > n:
            k = n
        buf[0:k] = self.mv[self.pos:self.pos + k]
        self.pos += k
        return k
    def write(self, buf, n):
        self.out += n
        return n

def serve(frames):
    # ticks of serving the frames to a server holding the net
    st = Stream(frames)
    s = Server(st, None, 1024, 4, 'bench', kern.select())
    s.install(ebp.load(NET, s.kernels))
    gc.collect()
    t0 = time.ticks_us()
    while st.pos < len(frames):
        s.step()
    t = time.ticks_diff(time.ticks_us(), t0)
    net = s.net
    w = list(net.W[0])[:8]
    s.close()
    return t, w
gc.collect()
print(gc.mem_free(), 'ok', kern.select().__name__)
"""


def _quiet(*args) -> str:
    # the `edgebp` command, run as a user runs it (this layer does not import the CLI)
    done = subprocess.run([sys.executable, "-m", "edgebp.host.cli", *map(str, args)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"edgebp {' '.join(map(str, args))}: {done.stderr.strip()}")
    return done.stdout


def _literal(b: Board, code: str):
    out = b.exec(code).decode().strip().splitlines()
    return ast.literal_eval(out[-1])


def _send(b: Board, blob: bytes) -> None:
    # into FR on the board, in pieces a raw REPL takes
    b.exec(f"FR = None\nimport gc\ngc.collect()\nFR = bytearray({len(blob)})")
    for i in range(0, len(blob), 1024):
        b.exec(f"FR[{i}:{i + len(blob[i:i + 1024])}] = {blob[i:i + 1024]!r}")
    if _literal(b, "print(repr(len(FR)))") != len(blob):
        raise RuntimeError("the frames did not reach the board whole")


def measure(kind: str, samples: int | None, tmp: Path) -> dict:
    spec, net = tmp / "digits.json", tmp / "digits.ebp"
    _quiet("init", spec, "--data", DIGITS, "--hidden", 32, "--batch", 16)
    _quiet("quantize", spec, "-o", net, "--calib", DIGITS)
    qnet, file_hyper = ebpfile.read(net)
    hyper = file_hyper or Hyper()
    # the CSV's 64 pixel columns and its digit (a class index), as `data push` reads them
    rows = np.loadtxt(DIGITS, delimiter=",", skiprows=1)
    Xq = qnet.quantize_inputs(rows[:, :-1])
    Tq = qnet.quantize_targets(rows[:, -1].astype(np.int64))
    if samples:
        Xq, Tq = Xq[:samples], Tq[:samples]
    N = len(Xq)
    r: dict = {"N": N, "net": f"{'-'.join(map(str, qnet.sizes))} relu/softmax, batch "
               f"{hyper.batch}"}
    part = ebpfile.board_part(qnet, hyper)
    with qemu.QemuBoard(kind, icount=True) as board:
        deploy = _quiet("deploy", "--port", board.port)
        r["kernels"] = next((ln.split(None, 1)[1] for ln in deploy.splitlines()
                             if ln.startswith("kernels ")), "?")
        with Board(board.port) as b:
            bsize, free, _, _ = _literal(b, ondata._STAT % {"dir": ondata.DIR,
                                                          "path": "none"})
            r["flash_free"], r["block"] = free, bsize
            r["fit"] = ondata.fit_records(free, bsize, qnet.sizes[0], 1)
        csv = tmp / "digits_part.csv"
        head, *lines = DIGITS.read_text().splitlines(keepends=True)
        csv.write_text(head + "".join(lines[:N]))
        t0 = time.monotonic()
        _quiet("data", "push", csv, "--net", net, "--port", board.port, "--name", "digits")
        r["push_s"] = time.monotonic() - t0
        r["file_bytes"] = ondata.file_bytes(N, qnet.sizes[0], 1)

        # -- in the board's time --
        state = epoch_state(hyper.seed, 0)
        order = epoch_order(N, hyper.seed, 0)
        import struct

        seq = 0
        X = Xq.astype("<i2")
        T = Tq.astype("<i2").reshape(N, -1)
        M = r["M"] = min(N, 90)  # the frames of M samples in the board's RAM at once
        train = []
        for i in range(0, M, PER_FRAME):
            sel = order[i:i + PER_FRAME]
            flags = wire.F_UPDATE if i + PER_FRAME >= M else 0
            body = np.concatenate([X[sel], T[sel]], axis=1).tobytes()
            train.append(wire.frame(seq & 0xFF, wire.TRAIN, bytes([len(sel), flags]) + body))
            seq += 1
        opened = wire.frame(0, wire.DATASET, struct.pack(
            "<BIIIB", 0, state, 0, 0, 6) + b"digits")
        on = wire.frame(1, wire.DATASET, struct.pack(
            "<BIIIB", wire.F_UPDATE, state, 0, M, 6) + b"digits")
        stream_bytes = sum(map(len, train))
        r["wire_per_sample"] = stream_bytes / M
        with Board(board.port) as b:
            b.write("bench_net.ebp", part)
            # a soft reset: a heap as the board boots with, not the one the push left
            b.t.serial.timeout = 0.1
            b.t.enter_raw_repl(soft_reset=True)
            b.t.serial.timeout = None
            # the TRAIN frames in pieces a raw REPL takes
            out = b.exec(_SETUP).decode()
            if "ok" not in out:
                raise RuntimeError(f"setting up on the board: {out[-300:]}")
            r["kernels_loaded"] = out.split()[-1]
            _send(b, b"".join(train))
            t, w_stream = _literal(b, "print(repr(serve(FR)))")
            r["stream_board_us"] = t
            b.exec("FR = None\ngc.collect()")
            _send(b, opened + on)
            # the check of the whole file (once a session) and the epoch from the flash
            t_all, w_on = _literal(b, "print(repr(serve(FR)))")
            _send(b, opened)
            t_check, _ = _literal(b, "print(repr(serve(FR)))")
            r["check_us"] = t_check
            r["ondata_board_us"] = t_all - t_check
            r["same_weights"] = w_stream == w_on
            # the split: reading a sample, the step
            b.exec(f"""
net = ebp.load(NET)
d = dataset.Data('data/digits.ebd', 64, 1, 10)
d.order({state})
x = zeros('h', 64)
t = zeros('h', 1)
fh = open('data/digits.ebd', 'rb')
def reads():
    t0 = time.ticks_us()
    for k in range({N}):
        d.read(fh, k, x, t)
    return time.ticks_diff(time.ticks_us(), t0)
def both():
    t0 = time.ticks_us()
    for k in range({N}):
        d.read(fh, k, x, t)
        net.learn(x, t)
    return time.ticks_diff(time.ticks_us(), t0)
def order():
    t0 = time.ticks_us()
    d.order({state})
    return time.ticks_diff(time.ticks_us(), t0)
""")
            r["read_us"] = _literal(b, "print(repr(reads()))")
            r["both_us"] = _literal(b, "print(repr(both()))")
            r["order_us"] = _literal(b, "print(repr(order()))")
            b.exec("fh.close()\nfh = None\nFR = None\nnet = None\nd = None")
            b.exec("import os\nos.remove('bench_net.ebp')")

        # -- wall clock, through the pty --
        with Session(board.port, start=True) as s:
            s.load(qnet, hyper)
            t0 = time.monotonic()
            s.train(Xq, Tq, order, update=True)
            r["stream_wall"] = N / (time.monotonic() - t0)
            t0 = time.monotonic()
            s.dataset("digits")
            r["check_wall_s"] = time.monotonic() - t0
            t0 = time.monotonic()
            s.train_on_board("digits", epoch_state(hyper.seed, 1), N)
            r["ondata_wall"] = N / (time.monotonic() - t0)
            s.bye()
    return r


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--board", choices=qemu.KINDS, default="cortex-m3")
    parser.add_argument("--samples", type=int, default=None,
                        help="the first N digits samples (default: all of digits_train.csv)")
    args = parser.parse_args(argv)
    reason = qemu.find(args.board)
    if reason is not None:
        print(f"bench.ondata: {args.board}: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        try:
            r = measure(args.board, args.samples, Path(tmp))
        except (RuntimeError, qemu.QemuError, OSError) as e:
            print(f"bench.ondata: {e}", file=sys.stderr)
            return 1
    N = r["N"]

    M = r["M"]

    def rate(us: float, n: int = N) -> str:
        return f"{n / (us / 1e6):,.0f}"

    step = r["both_us"] - r["read_us"]
    link = BAUD_BYTES / r["wire_per_sample"]
    stream = min(M / (r["stream_board_us"] / 1e6), link)
    print(f"{args.board} (qemu -icount shift=0: 1 us of ticks_us = 1000 instructions), "
          f"net {r['net']}, {N} digits samples, kernels {r['kernels']}")
    print(_table(
        ["path", "instructions/sample", "samples/s (board time)", "samples/s wall (pty)"],
        [["streamed: the board's share (TRAIN frames from RAM)",
          f"{r['stream_board_us'] * 1000 / M:,.0f}", rate(r["stream_board_us"], M),
          f"{r['stream_wall']:,.0f}"],
         [f"streamed: a 115200-baud UART ({r['wire_per_sample']:.1f} B a sample)",
          "", f"{link:,.0f}", ""],
         ["from the board's flash (one DATASET request)",
          f"{r['ondata_board_us'] * 1000 / M:,.0f}", rate(r["ondata_board_us"], M),
          f"{r['ondata_wall']:,.0f}"],
         ["  of which: reading a sample (Data.read)", f"{r['read_us'] * 1000 / N:,.0f}",
          "", ""],
         ["  of which: the step (Net.learn)", f"{step * 1000 / N:,.0f}", rate(step), ""],
         ["  the epoch's shuffle (Data.order), per sample",
          f"{r['order_us'] * 1000 / N:,.0f}", "", ""]]))
    ratio = M / (r["ondata_board_us"] / 1e6) / stream
    print(f"from the flash / streamed over a 115200-baud UART: {ratio:.1f}x (board time); "
          f"over the pty, wall clock: {r['ondata_wall'] / r['stream_wall']:.1f}x")
    print(f"(board time of the first {M} samples of the epoch's order; the split and the "
          f"shuffle over all {N})")
    print(f"once a session the board checks the whole file (CRCs, ranges): "
          f"{r['check_us'] * 1000:,.0f} instructions ({r['check_us'] * 1000 / N:,.0f} a "
          f"sample); wall {r['check_wall_s']:.2f} s")
    print(f"weights after those {M} samples, streamed and from the flash: "
          f"{'the same' if r['same_weights'] else 'DIFFERENT'}")
    print(f"flash: {r['flash_free']:,} bytes free after deploy ({r['block']}-byte blocks): "
          f"{r['fit']:,} digits samples fit ({r['file_bytes']:,} bytes for {N}); push took "
          f"{r['push_s']:.1f} s")
    return 0 if r["same_weights"] else 1


if __name__ == "__main__":
    sys.exit(main())
