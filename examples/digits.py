"""Handwritten digits (scikit-learn's 8x8 set, 1,797 samples), a 64-32-10 net: the float64
reference and the fixed-point core trained the same way, accuracy on a held-out 20%.

Same start (the float net begins at the dequantised initial weights), same hyper-parameters,
same sample order; one row per seed (the seed picks the split, the initial weights, the order
and the stochastic rounding). Fixed point runs on the integer twin, or with --core on the
pure-Python core (bit-identical, about 45 times slower here).

    python examples/digits.py [--act tanh|relu] [--rounding stochastic|nearest] [--seeds 5]
                              [--epochs 30] [--lr 0.05] [--momentum 0.9] [--dynamic]
                              [--core | --sim [micropython] | --port PORT]

--sim trains the fixed-point net on a simulated board instead (micropython: the unix port
behind a pseudo-terminal), --port on a real one with edgebp deployed; the board measures the
held-out accuracy.
"""

import argparse
import sys
import time

try:
    from sklearn.datasets import load_digits
except ImportError:
    sys.exit(f'{sys.argv[0]}: needs scikit-learn: pip install "edgebp[examples]"')

from edgebp.host.boards.trainer import add_board_options, board_of, compare
from edgebp.host.nets.quantize import formats_table, quantize
from edgebp.host.nets.spec import init_float_weights, make_spec
from edgebp.host.nets.train import stratified_split, table


def spec_for(args, seed):
    return make_spec(
        sizes=[64, 32, 10], activations=[args.act, "softmax"], loss="softmax_ce",
        input_range={"min": 0, "max": 16},  # pixel intensities 0..16
        optimizer={"lr": args.lr, "momentum": args.momentum, "batch": 16, "rounding": args.rounding,
                   "seed": seed},
        batch_max=16, init_seed=seed, **({"weight_formats": "dynamic"} if args.dynamic else {}))


def where(args):
    return board_of(args) or ("core" if args.core else "twin")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--act", choices=("tanh", "relu"), default="tanh")
    p.add_argument("--rounding", choices=("stochastic", "nearest"), default="stochastic")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--dynamic", action="store_true",
                   help="weight formats that follow the weights (edgebp/dynfmt.py)")
    p.add_argument("--core", action="store_true", help="train with the pure-Python core")
    add_board_options(p)
    args = p.parse_args()

    X, y = load_digits(return_X_y=True)
    seeds = list(range(args.seeds))
    results = []
    start = time.perf_counter()
    for seed in seeds:
        train, test = stratified_split(y, 0.2, seed)
        spec = spec_for(args, seed)
        W, B = init_float_weights(spec)
        qnet = quantize(spec, W, B, X[train], y[train])
        if seed == seeds[0]:
            print(formats_table(qnet), end="\n\n")
        results.append(compare(qnet, spec.hyper(), X[train], y[train], X[test], y[test],
                               args.epochs, seed, "core" if args.core else "twin", board_of(args)))
    print(f"digits 64-32-10 {args.act}/softmax, lr {args.lr}, momentum {args.momentum}, batch 16, "
          f"{args.rounding} rounding, {args.epochs} epochs, {len(train)} train / "
          f"{len(test)} held out, fixed point on the {where(args)}")
    print(table(results, seeds))
    print(f"wall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
