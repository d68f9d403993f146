"""A fleet of simulated boards against centralised training: digits 8x8, 64-32-10.

    python -m edgebp.host.bench.fleet [--clients 8] [--rounds 10] [--local-epochs 3]
                                      [--board-kind micropython|inprocess] [--seed 1]

The net, the data and the training are examples/digits.py's (tanh/softmax, batch 16,
stochastic rounding, lr and momentum below; examples/data/digits_train.csv split across the
clients, digits_test.csv held out). For each split (iid; noniid: 80% of each client from two
classes) the fleet runs through Flower's simulation engine, every client driving its own
simulated board (the firmware in a unix MicroPython by default); centralised training is the
same net trained on all the training samples for the same epochs (the integer twin,
bit-identical to a board).
Printed per round: held-out accuracy of the global net and of centralised training, the
bytes each board's link carried (host to board and back: the net loaded, the samples, the
weights read back), the wall time of the round (this machine, every board sharing its cores).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from edgebp.host.fleet.central import central
from edgebp.host.fleet.config import Settings
from edgebp.host.fleet.run import simulate
from edgebp.host.fleet.server import Row
from edgebp.host.fleet.workload import Workload, read_numbers
from edgebp.host.nets.quantize import quantize
from edgebp.host.nets.spec import init_float_weights, make_spec

DATA = Path(__file__).resolve().parents[2] / "examples" / "data"
KINDS = {"micropython": "sim://micropython", "inprocess": "sim"}


def digits(seed: int = 1, lr: float = 0.1, momentum: float = 0.9) -> Workload:
    """examples/digits.py's 64-32-10 tanh/softmax net on the committed digits split."""
    X, y = read_numbers(DATA / "digits_train.csv")
    Xt, yt = read_numbers(DATA / "digits_test.csv")
    spec = make_spec(sizes=[64, 32, 10], activations=["tanh", "softmax"], loss="softmax_ce",
                     input_range={"min": 0, "max": 16},
                     optimizer={"lr": lr, "momentum": momentum, "batch": 16,
                                "rounding": "stochastic", "seed": seed},
                     batch_max=16, init_seed=seed)
    W, B = init_float_weights(spec)
    qnet = quantize(spec, W, B, X, y[:, 0])
    return Workload(qnet, spec.hyper(), qnet.quantize_inputs(X),
                    qnet.quantize_targets(y[:, 0]), qnet.quantize_inputs(Xt),
                    qnet.quantize_targets(yt[:, 0]), labels=y[:, 0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgebp.host.bench.fleet",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--local-epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--board-kind", choices=list(KINDS), default="micropython")
    ap.add_argument("--partition", action="append", choices=("iid", "noniid"))
    args = ap.parse_args(argv)
    wl = digits(args.seed, args.lr, args.momentum)
    base = central(wl, args.rounds, args.local_epochs)
    n = len(wl.Xq)
    print(f"digits 64-32-10 tanh/softmax, lr {args.lr}, momentum {args.momentum}, batch 16, "
          f"stochastic rounding, seed {args.seed}; {n} training samples over {args.clients} "
          f"{args.board_kind} boards, {0 if wl.Xt is None else len(wl.Xt)} held out; "
          f"{args.rounds} rounds of "
          f"{args.local_epochs} local epochs; centralised: one net, {args.local_epochs} "
          "epochs of all the samples per round")
    results = {}
    for kind in args.partition or ["iid", "noniid"]:
        settings = Settings(rounds=args.rounds, local_epochs=args.local_epochs,
                            clients=args.clients, partition=kind, seed=args.seed,
                            boards=[KINDS[args.board_kind]] * args.clients)
        t0 = time.monotonic()
        rows: list[Row] = []
        simulate(wl, settings, rows.append)
        results[kind] = (rows, time.monotonic() - t0)
    kinds = list(results)
    print()
    head = "| round | centralised |" + "".join(f" {k} accuracy | {k} bytes/board out+in | "
                                              f"{k} s |" for k in kinds)
    print(head)
    print("|" + " --- |" * (2 + 3 * len(kinds)))
    for r in range(args.rounds + 1):
        cells = [f"{r}", f"{100 * base[r][1]:.2f}%"]
        for k in kinds:
            row = results[k][0][r]
            traffic = (f"{row.bytes_out:,.0f} + {row.bytes_in:,.0f}" if row.reported else "")
            cells += [f"{100 * row.accuracy:.2f}%", traffic,
                      f"{row.seconds:.1f}" if r else ""]
        print("| " + " | ".join(cells) + " |")
    for k in kinds:
        rows, total = results[k]
        final = rows[-1]
        print(f"{k}: final gap to centralised {100 * (base[-1][1] - final.accuracy):+.2f} pp; "
              f"{total:.1f} s in all (Flower and Ray start-up included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
