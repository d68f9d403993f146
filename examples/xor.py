"""XOR, a 2-4-1 tanh/sigmoid net with binary cross-entropy: the float64 reference and the
fixed-point core trained the same way on the four points, and their accuracy on them.

Same start (the float net begins at the dequantised initial weights), same hyper-parameters,
same sample order; one row per seed (the seed picks the initial weights and the order).
Fixed point runs on the integer twin, or with --core on the pure-Python core.

    python examples/xor.py [--seeds 5] [--epochs 500] [--dynamic]
                           [--core | --sim [micropython] | --port PORT]

--sim trains the fixed-point net on a simulated board instead (micropython: the unix port
behind a pseudo-terminal), --port on a real one with edgebp deployed; the board measures the
held-out accuracy.
"""

import argparse
import time

import numpy as np

from edgebp.host.boards.trainer import add_board_options, board_of, compare
from edgebp.host.nets.quantize import formats_table, quantize
from edgebp.host.nets.spec import init_float_weights, make_spec
from edgebp.host.nets.train import table

X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
T = np.array([[0], [1], [1], [0]], dtype=float)


def spec_for(seed, dynamic=False):
    return make_spec(sizes=[2, 4, 1], activations=["tanh", "sigmoid"], loss="bce",
                     input_range={"min": 0, "max": 1}, optimizer={"lr": 0.5, "seed": seed},
                     init_seed=seed, **({"weight_formats": "dynamic"} if dynamic else {}))


def where(args):
    return board_of(args) or ("core" if args.core else "twin")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=500)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--dynamic", action="store_true",
                   help="weight formats that follow the weights (edgebp/dynfmt.py)")
    p.add_argument("--core", action="store_true", help="train with the pure-Python core")
    add_board_options(p)
    args = p.parse_args()

    seeds = list(range(args.seeds))
    results = []
    start = time.perf_counter()
    for seed in seeds:
        spec = spec_for(seed, args.dynamic)
        W, B = init_float_weights(spec)
        qnet = quantize(spec, W, B, X, T)
        if seed == seeds[0]:
            print(formats_table(qnet), end="\n\n")
        results.append(compare(qnet, spec.hyper(), X, T, X, T, args.epochs, seed,
                               "core" if args.core else "twin", board_of(args)))
    print(f"xor 2-4-1 tanh/sigmoid, bce, lr 0.5, batch 1, nearest rounding, {args.epochs} "
          f"epochs, accuracy on the 4 training points, fixed point on the "
          f"{where(args)}")
    print(table(results, seeds))
    print(f"wall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
