"""Iris (scikit-learn's 150 flowers), a 4-16-3 net: the float64 reference and the fixed-point
core trained the same way, accuracy on a held-out 30% (stratified).

Same start (the float net begins at the dequantised initial weights), same hyper-parameters,
same sample order; one row per seed (the seed picks the split, the initial weights, the order
and the stochastic rounding). Fixed point runs on the integer twin, or with --core on the
pure-Python core (bit-identical, slower).

    python examples/iris.py [--act relu|tanh] [--rounding stochastic|nearest] [--seeds 5]
                            [--epochs 100] [--dynamic]
                            [--core | --sim [micropython] | --port PORT]

--sim trains the fixed-point net on a simulated board instead (micropython: the unix port
behind a pseudo-terminal), --port on a real one with edgebp deployed; the board measures the
held-out accuracy.
"""

import argparse
import sys
import time

try:
    from sklearn.datasets import load_iris
except ImportError:
    sys.exit(f'{sys.argv[0]}: needs scikit-learn: pip install "edgebp[examples]"')

from edgebp.host.boards.trainer import add_board_options, board_of, compare
from edgebp.host.nets.quantize import formats_table, quantize
from edgebp.host.nets.spec import init_float_weights, make_spec
from edgebp.host.nets.train import stratified_split, table


def spec_for(args, seed, X):
    return make_spec(
        sizes=[4, 16, 3], activations=[args.act, "softmax"], loss="softmax_ce",
        # the measured range of each feature (cm), as a user would declare it
        input_range={"min": X.min(axis=0).tolist(), "max": X.max(axis=0).tolist()},
        optimizer={"lr": 0.05, "momentum": 0.9, "batch": 8, "rounding": args.rounding,
                   "seed": seed},
        batch_max=8, init_seed=seed, **({"weight_formats": "dynamic"} if args.dynamic else {}))


def where(args):
    return board_of(args) or ("core" if args.core else "twin")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--act", choices=("relu", "tanh"), default="relu")
    p.add_argument("--rounding", choices=("stochastic", "nearest"), default="stochastic")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--dynamic", action="store_true",
                   help="weight formats that follow the weights (edgebp/dynfmt.py)")
    p.add_argument("--core", action="store_true", help="train with the pure-Python core")
    add_board_options(p)
    args = p.parse_args()

    X, y = load_iris(return_X_y=True)
    seeds = list(range(args.seeds))
    results = []
    start = time.perf_counter()
    for seed in seeds:
        train, test = stratified_split(y, 0.3, seed)
        spec = spec_for(args, seed, X)
        W, B = init_float_weights(spec)
        qnet = quantize(spec, W, B, X[train], y[train])
        if seed == seeds[0]:
            print(formats_table(qnet), end="\n\n")
        results.append(compare(qnet, spec.hyper(), X[train], y[train], X[test], y[test],
                               args.epochs, seed, "core" if args.core else "twin", board_of(args)))
    print(f"iris 4-16-3 {args.act}/softmax, lr 0.05, momentum 0.9, batch 8, {args.rounding} "
          f"rounding, {args.epochs} epochs, {len(train)} train / {len(test)} held out, "
          f"fixed point on the {where(args)}")
    print(table(results, seeds))
    print(f"wall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
