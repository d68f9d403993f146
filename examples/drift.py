"""Learning on the board with no host: a net that keeps up with a drifting sensor.

    python examples/drift.py --board cortex-m3      # an emulated board ($EDGEBP_QEMU_BOARDS)
    python examples/drift.py --port /dev/ttyACM0    # a real board: deployed, then left alone

A machine's two sensor channels (12-bit ADC readings, examples/drift/sensor.py) tell whether
it is in state 0 or 1, by a rule that drifts. This builds a 2-8-2 tanh/softmax net that
takes the raw readings (its input map turns them into the net's format on the board, in
integers), fits it on the twin to a few early readings, and deploys edgebp, the net, the
sensor and the program examples/drift/main.py as the board's main.py. From then on the board
runs it at every power-on, with no host: it predicts, learns when a label arrives,
checkpoints, and logs how many held-out readings it and a frozen copy of the net get wrong.

On an emulated board the script then shows that: it powers the board on with nothing
attached, cuts the power between two of the program's checkpoints, powers it on again, lets
it finish, and reads the log back. On a real board it deploys and says how to read the log.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent / "drift"
sys.path.insert(0, str(HERE))

from sensor import Sensor  # noqa: E402

from edgebp.host.nets import ebpfile  # noqa: E402
from edgebp.host.nets.quantize import quantize  # noqa: E402
from edgebp.host.nets.spec import init_float_weights, make_spec  # noqa: E402
from edgebp.host.nets.train import train_fixed  # noqa: E402

FIT_READINGS = 20  # early readings the deployed net is fitted to
FIT_EPOCHS = 2
# the power cut: after the program's evaluation at this reading, which follows its first
# checkpoint (examples/drift/main.py: at 400 readings) and comes before the next (800)
CUT_AT = 500


def spec():
    return make_spec(sizes=[2, 8, 2], activations=["tanh", "softmax"], loss="softmax_ce",
                     input_range={"min": 0, "max": 4095}, integer_inputs=True,
                     optimizer={"lr": 0.05, "batch": 1, "seed": 1}, init_seed=3,
                     classes=["0", "1"])


def readings(n: int, seed: int, t: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n readings of the sensor's stream `seed`, labelled by the rule at time t."""
    s = Sensor(seed)
    x = [0, 0]
    X, T = [], []
    for _ in range(n):
        T.append(s.read(x, t))
        X.append(list(x))
    return np.array(X, np.float64), np.array(T)


def net_file() -> bytes:
    """The deployed net: fitted on the twin to FIT_READINGS readings of the rule at t = 0."""
    sp = spec()
    W, B = init_float_weights(sp)
    X, T = readings(FIT_READINGS, seed=3)
    qnet = quantize(sp, W, B, X, T)
    hyper = sp.hyper()
    run = train_fixed(qnet, hyper, qnet.quantize_inputs(X), qnet.quantize_targets(T),
                      FIT_EPOCHS)
    return ebpfile.to_bytes(run.qnet, hyper)


def board_files() -> dict[str, bytes]:
    """What goes on the board beside edgebp: the net, the sensor and the program."""
    return {"drift.ebp": net_file(), "sensor.py": (HERE / "sensor.py").read_bytes(),
            "main.py": (HERE / "main.py").read_bytes()}


def install(port: str, log=print) -> None:
    """Deploy edgebp, then the drift program's files; clears what an earlier run left."""
    from edgebp.host.boards.board import Board, check_mpy, compile_mpy, deploy, plan_deploy

    with Board(port) as b:
        facts = b.facts()
        check_mpy(facts)
        deploy(b, plan_deploy(facts.arch), log=lambda line: None)
        for name in b.listdir("drift_ckpt"):
            b.remove(f"drift_ckpt/{name}")
        for stale in ("drift.log", "sensor.py", "main.py"):
            if b.sha256(stale) is not None:
                b.remove(stale)
        b.write("sensor.mpy", compile_mpy(HERE / "sensor.py", "sensor.py", facts.arch))
        files = board_files()
        b.write("drift.ebp", files["drift.ebp"])
        b.write("main.py", files["main.py"])  # last: the board runs it from the next boot
    log(f"deployed edgebp and the drift program to {port}")


def read_log(port: str) -> str:
    from edgebp.host.boards.board import Board

    with Board(port) as b:
        return b.exec("print(open('drift.log').read())").decode()


def _watch(port: str, until: str, timeout: float) -> list[str]:
    """Read what the board prints (it does not know anyone reads) until a line holds
    `until`; the lines read. TimeoutError if none does within `timeout` seconds."""
    import serial

    lines: list[str] = []
    pending = b""
    deadline = time.monotonic() + timeout
    with serial.serial_for_url(port, timeout=0.2) as link:
        while time.monotonic() < deadline:
            pending += link.read(4096)
            *done, pending = pending.split(b"\n")
            for line in done:
                text = line.decode("utf-8", "replace").strip()
                lines.append(text)
                if until in text:
                    return lines
    raise TimeoutError(f"the board printed no {until!r} within {timeout:g} s")


def power_cut_run(kind: str, log=print, timeout: float = 600) -> str:
    """On an emulated board: deploy, power on alone, cut the power between two checkpoints
    (once the program has evaluated itself at reading CUT_AT), power on again alone, let the
    program finish; the log it wrote."""
    from edgebp.host.boards.qemu import QemuBoard

    with QemuBoard(kind) as board:  # powered on, at its prompt
        install(board.port, log)
        board.kill()
        board.boot(prompt=False)  # no host: main.py runs by itself
        _watch(board.port, f"drift: {CUT_AT} ", timeout)
        board.kill()  # the power cut
        log(f"power cut at reading {CUT_AT}, on its own since the last power-on")
        board.boot(prompt=False)
        _watch(board.port, "drift: done", timeout)
        board.kill()
        board.boot()  # the program has finished: main.py ends at once, the REPL answers
        return read_log(board.port)


def parse(text: str) -> tuple[list[int], list[tuple[int, int, int, int]]]:
    """The log's boots (the reading each started at) and evaluations (t, learner's errors,
    frozen copy's errors, held-out readings)."""
    boots, rows = [], []
    for line in text.splitlines():
        w = line.split()
        if len(w) == 2 and w[0] == "boot":
            boots.append(int(w[1]))
        elif len(w) == 4:
            rows.append((int(w[0]), int(w[1]), int(w[2]), int(w[3])))
    return boots, rows


def table(text: str) -> str:
    """The log as a table, in the order the board wrote it."""
    out = ["held-out readings judged wrong by the rule of the moment:",
           f"{'reading':>8}  {'learning':>9}  {'frozen':>7}"]
    for line in text.splitlines():
        w = line.split()
        if len(w) == 2 and w[0] == "boot":
            out.append(f"{'':>8}  power on: from reading {w[1]}"
                       + (" (its checkpoint)" if w[1] != "0" else ""))
        elif len(w) == 4:
            out.append(f"{w[0]:>8}  {w[1]:>5}/{w[3]:<3}  {w[2]:>3}/{w[3]:<3}")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--board", choices=("cortex-m3", "rv32"),
                   help="an emulated board: deploy, run alone through a power cut, show the log")
    g.add_argument("--port", help="a real board: deploy the program; it runs at the next "
                   "power-on")
    args = p.parse_args()
    if args.port:
        install(args.port)
        print("power the board off and on: it learns alone. Later: mpremote connect PORT "
              "cat drift.log")
        return
    start = time.perf_counter()
    print(table(power_cut_run(args.board)))
    print(f"wall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
