"""Fixed-point Adam against float64 Adam: digits 8x8, 64-32-10, relu and tanh hidden, softmax-CE.

    python -m edgebp.host.bench.adam [--splits 10] [--epochs 30] [--lr 0.01] [--batch 16]
                                     [--beta1 0.9] [--beta2 0.999] [--rounding stochastic]

For each of --splits random stratified train/test splits of sklearn's load_digits (1797
images, 25% held out) and each hidden activation, one net is initialised (the spec's
init_float_weights, seeded by the split) and quantised (edgebp.host.nets.quantize, the
training inputs calibrating the formats). From the same quantised initial weights, the
float64 reference (edgebp.host.nets.reference: FloatNet with its `Adam`, eps 1e-8, at the
dequantised weights) and fixed-point Adam (edgebp/adam.py, on the numpy twin, bit-identical to
a board) train with the same lr, betas, batch, epochs and the same sample order
(reference.minibatches: each epoch's shuffle, consecutive runs of `batch`, a partial last
one). Printed per split: held-out accuracy of each and the gap (float minus fixed, in
percentage points); then the means. No weight decay: the reference's is L2 on the gradient,
the core's decoupled, so the two would not train the same thing.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from edgebp.host.bench.kernels import _table
from edgebp.host.nets.qnet import Hyper, QuantNet, adam_q
from edgebp.host.nets.quantize import quantize
from edgebp.host.nets.reference import Adam, epoch_order, from_qnet
from edgebp.host.nets.spec import init_float_weights, make_spec
from edgebp.host.nets.twin import TwinNet

HIDDEN = ("relu", "tanh")
COLUMNS = ["split", "hidden", "float Adam", "fixed Adam", "gap (pp)"]


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X.astype(np.float64), y.astype(np.int64)


def split(y: np.ndarray, seed: int, test: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Stratified: `test` of each class held out, drawn with numpy's generator `seed`."""
    rng = np.random.default_rng(seed)
    tr, te = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(test * len(idx)))
        te.append(idx[:k])
        tr.append(idx[k:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(te))


def make_net(hidden: str, X: np.ndarray, y: np.ndarray, seed: int, lr: float, batch: int,
             betas: tuple[float, float]) -> QuantNet:
    spec = make_spec(sizes=[64, 32, 10], activations=[hidden, "softmax"], loss="softmax_ce",
                     input_range={"min": 0, "max": 16}, batch_max=batch, init_seed=seed,
                     optimizer={"lr": lr, "batch": batch})
    Ws, Bs = init_float_weights(spec, seed)
    q = quantize(spec, Ws, Bs, X, y, hyper=Hyper(lr=lr, batch=batch))
    q.adam = adam_q(*betas)
    return q


def train_pair(q: QuantNet, X: np.ndarray, y: np.ndarray, Xt: np.ndarray, yt: np.ndarray,
               lr: float, batch: int, epochs: int, betas: tuple[float, float],
               rounding: str, seed: int) -> tuple[float, float]:
    """Held-out accuracy (%) of float64 Adam and of fixed-point Adam after `epochs`."""
    # float64 from the dequantised initial weights, on the inputs the core sees, unquantised
    ref = from_qnet(q)
    Xn = (X - q.in_offset) * q.in_scale
    Xtn = (Xt - q.in_offset) * q.in_scale
    ref.train(Xn, y, Adam(lr=lr, beta1=betas[0], beta2=betas[1], batch=batch), epochs,
              order_seed=seed)
    acc_float = 100 * float(np.mean(ref.predict(Xtn) == yt))
    # fixed point on the twin, in the same order; the partial last batch applied as the
    # reference applies it
    hyper = Hyper(lr=lr, batch=batch, rounding=rounding, seed=seed)
    tw = TwinNet.from_qnet(q, hyper)
    Xq, Tq = q.quantize_inputs(X), q.quantize_targets(y)
    for epoch in range(epochs):
        tw.train_epoch(Xq, Tq, epoch_order(len(Xq), seed, epoch))
        tw.update()
    ev = tw.evaluate(q.quantize_inputs(Xt), q.quantize_targets(yt))
    return acc_float, 100 * float(np.mean(ev.correct))


def run(splits: int = 10, epochs: int = 30, lr: float = 0.01, batch: int = 16,
        beta1: float = 0.9, beta2: float = 0.999, rounding: str = "stochastic",
        out=print) -> str:
    if splits < 1 or epochs < 1 or batch < 1:
        raise ValueError("splits, epochs and batch must be at least 1")
    X, y = digits()
    betas = (beta1, beta2)
    rows = []
    means: dict[str, list[tuple[float, float]]] = {h: [] for h in HIDDEN}
    t0 = time.process_time()
    for s in range(splits):
        tr, te = split(y, s)
        for hidden in HIDDEN:
            q = make_net(hidden, X[tr], y[tr], s, lr, batch, betas)
            f, x = train_pair(q, X[tr], y[tr], X[te], y[te], lr, batch, epochs, betas,
                              rounding, s + 1)
            means[hidden].append((f, x))
            rows.append([str(s), hidden, f"{f:.2f}%", f"{x:.2f}%", f"{f - x:+.2f}"])
    for hidden in HIDDEN:
        a = np.array(means[hidden])
        rows.append(["mean", hidden, f"{a[:, 0].mean():.2f}%", f"{a[:, 1].mean():.2f}%",
                     f"{a[:, 0].mean() - a[:, 1].mean():+.2f}"])
    seconds = time.process_time() - t0
    c1, c2 = adam_q(*betas)
    text = "\n".join([
        f"Adam on digits 8x8, 64-32-10 /softmax-CE: float64 reference vs fixed point on the "
        f"twin ({splits} splits, 25% held out; lr {lr:g}, betas {beta1:g}/{beta2:g} "
        f"(Q15 1-beta {c1}/{c2}), batch {batch}, {epochs} epochs, fixed rounding {rounding})",
        _table(COLUMNS, rows),
        f"CPU {seconds:.1f} s",
    ])
    out(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgebp.host.bench.adam",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.999)
    ap.add_argument("--rounding", choices=["nearest", "stochastic"], default="stochastic")
    args = ap.parse_args(argv)
    run(args.splits, args.epochs, args.lr, args.batch, args.beta1, args.beta2, args.rounding)
    return 0


if __name__ == "__main__":
    sys.exit(main())
