"""Optimisers of the float64 reference, compared: SGD, SGD with momentum, Adam and full
Levenberg-Marquardt (edgebp.host.nets.second_order), on XOR, iris, digits 8x8 and y = sin x.

    python -m edgebp.host.bench.optim [--seeds 5] [--sweep-seeds 10] [--budget 1.0]

Float64, and every board method in fixed point: the "(fixed)" rows are the core (SGD and
momentum: edgebp/kernels.py; Adam: edgebp/adam.py; SDLM: edgebp/sdlm.py) on the numpy twin
(bit-identical to a board), from the same initial weights quantised (quantize, the training
inputs calibrating the formats), with the float method's lr and batch (SDLM: its own),
stochastic rounding, the same epochs and order; the training loss is the core's (per-sample
Q12 losses, averaged), the held-out figure from the core's outputs. The board has no LM.

SDLM (stochastic diagonal Levenberg-Marquardt, LeCun et al., "Efficient BackProp") steps
each weight by lr / (mu + h) times its gradient, h the running Gauss-Newton curvature
estimate from the first sample of each sum. Its formats come from the largest curvatures of
the initial float net over the training data (second_order.curvature_maxima,
qnet.sdlm_formats with headroom 4). mu 0.05 and gamma 0.05, inside LeCun's suggested
0.01..0.1 for both: mu bounds the step where the curvature is near zero (a flat direction
takes at most lr / mu = 20 lr), gamma = 0.05 averages the estimate over about the last 20
curvature samples, so one sample's noise does not set the step. The lr per problem is the
one of {0.01, 0.03, 0.1, 0.3} with the fewest samples to target (median of seeds 0 and 1,
both reaching it, within a third to a half of the budget): 0.3 on XOR and sin, 0.1 on iris,
0.03 on digits (0.1 diverges there).

Table 1, per problem and method, over --seeds initialisations (the spec's initial weights,
init_float_weights, seeds 0, 1, ...): the samples each method processed until the training
loss, measured on the whole training set after each epoch (LM: iteration), first met the
problem's target (median over the seeds that reached it, and how many did), and the held-out
figure at the end of the budget (mean over seeds). A sample processed is one forward and
backward pass of one sample for the first-order methods; LM's iteration processes every
sample once for its Jacobian (a forward pass and n_out backward passes) and once more per
trial step (a forward pass), and solves a P x P system per trial: its samples are far dearer,
which the CPU s column shows (the process's CPU time for all seeds, BLAS threads included,
which other load on the machine disturbs less than wall time; for scale, not a benchmark).

Table 2, the smallest hidden width that reliably (all of --sweep-seeds seeds) solves XOR
(every sample on the right side, mean BCE <= 0.05) and fits sin on [-3, 3] to a training
RMSE of 0.05, for LM, plain SGD (float64) and SDLM (fixed point, the twin), each within its
budget; per width, how many seeds
succeeded (widths above the first reliable one for both are not run).

--budget scales every epoch and iteration budget (the tests run it tiny).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgebp.host.bench.kernels import _table
from edgebp.host.nets import second_order as so
from edgebp.host.nets.qnet import Hyper, adam_q, sdlm_formats, sdlm_q
from edgebp.host.nets.quantize import quantize
from edgebp.host.nets.reference import Adam, FloatNet, epoch_order
from edgebp.host.nets.spec import init_float_weights, make_spec
from edgebp.host.nets.twin import TwinNet

DATA = Path(__file__).resolve().parents[2] / "examples" / "data"
METHODS = ("SGD", "SGD+momentum", "Adam", "LM")
FIXED = "Adam (fixed)"  # fixed-point Adam on the twin (train_fixed)
SDLM = "SDLM (fixed)"
# the board's methods in fixed point, on the twin (train_fixed)
FIXED_METHODS = ("SGD (fixed)", "SGD+momentum (fixed)", FIXED, SDLM)
SDLM_MU = 0.05
SDLM_GAMMA = 0.05
COLUMNS = ["problem", "net", "method", "settings", "budget", "samples to target",
           "reached", "held-out", "CPU s"]
SWEEP_COLUMNS = ["problem", "width", "LM solved", "SGD solved", "SDLM (fixed) solved"]


@dataclass
class Problem:
    name: str
    hidden: str
    out: str
    loss: str
    width: int
    X: np.ndarray
    T: np.ndarray
    Xt: np.ndarray
    Tt: np.ndarray
    target: float  # training loss to reach
    target_text: str
    sgd: Hyper
    momentum: Hyper
    adam: Adam
    sdlm: Hyper  # SDLM's lr and batch (mu and gamma: SDLM_MU, SDLM_GAMMA)
    epochs: int  # budget of the first-order methods
    iterations: int  # budget of LM

    @property
    def sizes(self) -> list[int]:
        return [self.X.shape[1], self.width, 1 if self.T.ndim == 2 else int(self.T.max()) + 1]

    def net(self, seed: int, width: int | None = None) -> FloatNet:
        spec = self.spec(width)
        Ws, Bs = init_float_weights(spec, seed)
        return FloatNet(spec.sizes, [self.hidden, self.out], self.loss, Ws, Bs)

    def spec(self, width: int | None = None):
        sizes = self.sizes if width is None else [self.sizes[0], width, self.sizes[2]]
        return make_spec(sizes=sizes, activations=[self.hidden, self.out], loss=self.loss,
                         input_range={"min": -1, "max": 1}, batch_max=self.adam.batch)

    def optimiser(self, method: str) -> Hyper | Adam:
        if method == "Adam":
            return self.adam
        return self.momentum if method == "SGD+momentum" else self.sgd

    def held_out(self, net: FloatNet) -> str:
        if self.loss == "mse":
            return f"RMSE {math.sqrt(np.mean((net.forward(self.Xt) - self.Tt) ** 2)):.4f}"
        T = self.Tt[:, 0] if self.Tt.ndim == 2 else self.Tt
        return f"{100 * np.mean(net.predict(self.Xt) == T):.2f}%"


def _standardise(X: np.ndarray, Xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m, s = X.mean(axis=0), X.std(axis=0)
    s[s == 0] = 1.0
    return (X - m) / s, (Xt - m) / s


def _csv(name: str) -> np.ndarray:
    return np.loadtxt(DATA / name, delimiter=",", skiprows=1)


def problems() -> list[Problem]:
    xor = np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]], np.float64)
    y_xor = np.array([[0], [1], [1], [0]], np.float64)
    iris, iris_t = _csv("iris_train.csv"), _csv("iris_test.csv")
    Xi, Xit = _standardise(iris[:, :4], iris_t[:, :4])
    digits, digits_t = _csv("digits_train.csv"), _csv("digits_test.csv")
    Xd, Xdt = digits[:, :64] / 8 - 1, digits_t[:, :64] / 8 - 1  # pixels 0..16 to [-1, 1]
    rng = np.random.default_rng(0)
    xs = np.sort(rng.uniform(-3, 3, 64))[:, None]
    xt = np.linspace(-3, 3, 201)[:, None]
    return [
        Problem("XOR", "tanh", "sigmoid", "bce", 4, xor, y_xor, xor, y_xor, 0.05,
                "mean BCE 0.05", Hyper(lr=0.5), Hyper(lr=0.05, momentum=0.9),
                Adam(lr=0.05), Hyper(lr=0.3), 2000, 100),
        Problem("iris", "tanh", "softmax", "softmax_ce", 8, Xi, iris[:, 4].astype(np.int64),
                Xit, iris_t[:, 4].astype(np.int64), 0.1, "mean CE 0.1",
                Hyper(lr=0.05, batch=8), Hyper(lr=0.05, momentum=0.9, batch=8),
                Adam(lr=0.01, batch=8), Hyper(lr=0.1, batch=8), 300, 50),
        Problem("digits", "tanh", "softmax", "softmax_ce", 8, Xd, digits[:, 64].astype(np.int64),
                Xdt, digits_t[:, 64].astype(np.int64), 0.1, "mean CE 0.1",
                Hyper(lr=0.05, batch=16), Hyper(lr=0.05, momentum=0.9, batch=16),
                Adam(lr=0.01, batch=16), Hyper(lr=0.03, batch=16), 60, 20),
        Problem("sin", "tanh", "identity", "mse", 8, xs / 3, np.sin(xs), xt / 3, np.sin(xt),
                0.5 * 0.05**2, "RMSE 0.05", Hyper(lr=0.1, batch=8),
                Hyper(lr=0.1, momentum=0.9, batch=8), Adam(lr=0.01, batch=8),
                Hyper(lr=0.3, batch=8), 3000, 200),
    ]


def _settings(p: Problem, method: str) -> str:
    if method == "LM":
        return "mu 1e-3, rejected x10, taken /10"
    if method == SDLM:
        return f"lr {p.sdlm.lr:g}, batch {p.sdlm.batch}, mu {SDLM_MU:g}, gamma {SDLM_GAMMA:g}"
    h = p.optimiser(method.removesuffix(" (fixed)"))
    text = f"lr {h.lr:g}, batch {h.batch}"
    return text + (", momentum 0.9" if method.startswith("SGD+momentum") else "")


def train_to_target(p: Problem, net: FloatNet, method: str, epochs: int, iterations: int
                    ) -> int | None:
    """Train net within the budget; the samples processed when the training loss first met
    the target, or None."""
    N = len(p.X)
    if method == "LM":
        run = so.levenberg_marquardt(net, p.X, p.T, iterations)
        for loss, seen in zip(run.loss, run.samples, strict=True):
            if loss <= p.target:
                return seen
        return None
    hyper = p.optimiser(method)
    reached = None
    for epoch in range(epochs):
        net.train(p.X, p.T, hyper, 1, order_seed=1, first_epoch=epoch)
        if reached is None and net.loss(p.X, p.T) <= p.target:
            reached = (epoch + 1) * N
    return reached


def fixed_twin(p: Problem, method: str, seed: int, width: int | None = None):
    """The twin of the seed's initial weights, quantised, for a board method (FIXED_METHODS):
    (twin, qnet, Xq, Tq)."""
    spec = p.spec(width)
    Ws, Bs = init_float_weights(spec, seed)
    calib_T = p.T if p.loss == "softmax_ce" else p.T.reshape(len(p.T), -1)
    base = method.removesuffix(" (fixed)")
    if base == "Adam":
        lr, batch, mom = p.adam.lr, p.adam.batch, 0.0
    elif base == "SDLM":
        lr, batch, mom = p.sdlm.lr, p.sdlm.batch, 0.0
    else:
        h = p.optimiser(base)
        assert isinstance(h, Hyper)
        lr, batch, mom = h.lr, h.batch, h.momentum
    q = quantize(spec, Ws, Bs, p.X, calib_T, hyper=Hyper(lr=lr, momentum=mom, batch=batch))
    if base == "Adam":
        q.adam = adam_q(p.adam.beta1, p.adam.beta2)
    elif base == "SDLM":
        float_net = FloatNet(spec.sizes, [p.hidden, p.out], p.loss, Ws, Bs)
        c_max, h_max = so.curvature_maxima(float_net, p.X, p.T)
        fc, fh = sdlm_formats(c_max, h_max, 4.0)
        q.sdlm = sdlm_q(SDLM_MU, SDLM_GAMMA, fc, fh)
    tw = TwinNet.from_qnet(q, Hyper(lr=lr, momentum=mom, batch=batch, rounding="stochastic",
                                    seed=seed + 1))
    return tw, q, q.quantize_inputs(p.X), q.quantize_targets(calib_T)


def train_fixed(p: Problem, method: str, seed: int, epochs: int) -> tuple[int | None, str]:
    """A board method in fixed point on the twin from the seed's initial weights, quantised:
    the samples processed when its training loss first met the target (or None), and the
    held-out figure at the end."""
    tw, q, Xq, Tq = fixed_twin(p, method, seed)
    N = len(Xq)
    reached = None
    for epoch in range(epochs):
        tw.train_epoch(Xq, Tq, epoch_order(N, 1, epoch))
        tw.update()  # the partial last batch, as the reference steps it
        if reached is None and tw.evaluate(Xq, Tq).loss.mean() / 4096 <= p.target:
            reached = (epoch + 1) * N
    Xtq = q.quantize_inputs(p.Xt)
    if p.loss == "mse":
        Y = q.output_values(tw.outputs(Xtq))
        return reached, f"RMSE {math.sqrt(np.mean((Y - p.Tt) ** 2)):.4f}"
    Tt = p.Tt[:, 0] if p.Tt.ndim == 2 else p.Tt
    hits = tw.evaluate(Xtq, q.quantize_targets(p.Tt if p.loss == "softmax_ce"
                                               else p.Tt.reshape(len(p.Tt), -1))).correct
    assert len(hits) == len(Tt)
    return reached, f"{100 * np.mean(hits):.2f}%"


def _fixed_met(p: Problem, tw: TwinNet, q, Xq, Tq) -> bool:
    # the float criterion (_met) on the core's figures: its mean loss, its outputs' classes
    if tw.evaluate(Xq, Tq).loss.mean() / 4096 > p.target:
        return False
    if p.loss == "mse":
        return True
    return bool(np.all(tw.evaluate(Xq, Tq).correct))


def _solves(p: Problem, method: str, width: int, seed: int, epochs: int, iterations: int
            ) -> bool:
    if method == SDLM:
        tw, q, Xq, Tq = fixed_twin(p, SDLM, seed, width)
        for epoch in range(epochs):
            tw.train_epoch(Xq, Tq, epoch_order(len(Xq), 1, epoch))
            tw.update()
            if _fixed_met(p, tw, q, Xq, Tq):
                return True
        return False
    net = p.net(seed, width)
    if method == "LM":
        run = so.levenberg_marquardt(net, p.X, p.T, iterations,
                                     callback=lambda it, n: _met(p, n))
        return bool(run.loss) and _met(p, net)
    for epoch in range(epochs):
        net.train(p.X, p.T, p.sgd, 1, order_seed=1, first_epoch=epoch)
        if _met(p, net):
            return True
    return False


def _met(p: Problem, net: FloatNet) -> bool:
    if net.loss(p.X, p.T) > p.target:
        return False
    if p.loss == "mse":
        return True
    return bool(np.all(net.predict(p.X) == p.T[:, 0]))


def _scaled(n: int, budget: float) -> int:
    return max(1, int(round(n * budget)))


def table(plist: list[Problem], seeds: int, budget: float) -> list[list[str]]:
    rows = []
    for p in plist:
        epochs, iterations = _scaled(p.epochs, budget), _scaled(p.iterations, budget)
        for method in (*METHODS, *FIXED_METHODS):
            hits, figures = [], []
            t0 = time.process_time()
            for seed in range(seeds):
                if method in FIXED_METHODS:
                    hit, figure = train_fixed(p, method, seed, epochs)
                else:
                    net = p.net(seed)
                    hit = train_to_target(p, net, method, epochs, iterations)
                    figure = p.held_out(net)
                if hit is not None:
                    hits.append(hit)
                figures.append(figure)
            seconds = time.process_time() - t0
            held = _mean_figure(figures)
            rows.append([p.name, "-".join(map(str, p.sizes)) + f" {p.hidden}/{p.out}", method,
                         _settings(p, method),
                         f"{iterations} it" if method == "LM" else f"{epochs} ep",
                         f"{int(np.median(hits)):,}" if hits else "-",
                         f"{len(hits)}/{seeds}", held, f"{seconds:.1f}"])
    return rows


def _mean_figure(figures: list[str]) -> str:
    if figures[0].startswith("RMSE"):
        return f"RMSE {np.mean([float(f.split()[1]) for f in figures]):.4f}"
    return f"{np.mean([float(f[:-1]) for f in figures]):.2f}%"


def sweep(plist: list[Problem], seeds: int, budget: float, max_width: int = 12
          ) -> list[list[str]]:
    rows = []
    for p in plist:
        if p.name not in ("XOR", "sin"):
            continue
        epochs, iterations = _scaled(p.epochs, budget), _scaled(p.iterations, budget)
        found: dict[str, int | None] = {"LM": None, "SGD": None, SDLM: None}
        for width in range(1, max_width + 1):
            row = [p.name, str(width)]
            for method in found:
                if found[method] is not None:
                    row.append("")
                    continue
                ok = sum(_solves(p, method, width, s, epochs, iterations) for s in range(seeds))
                row.append(f"{ok}/{seeds}")
                if ok == seeds:
                    found[method] = width
            rows.append(row)
            if all(v is not None for v in found.values()):
                break
        rows.append([p.name, "smallest", *(_found(v, max_width) for v in found.values())])
    return rows


def _found(w: int | None, max_width: int) -> str:
    return str(w) if w is not None else f"> {max_width}"


def run(seeds: int = 5, sweep_seeds: int = 10, budget: float = 1.0, only: list[str] | None = None,
        max_width: int = 12, out: Callable[[str], object] = print) -> str:
    plist = [p for p in problems() if only is None or p.name in only]
    if budget <= 0 or seeds < 1 or sweep_seeds < 1:
        raise ValueError("budget must be positive and seeds at least 1")
    text = "\n".join([
        f"Float64 reference optimisers and the board's in fixed point ({seeds} seeds; targets: "
        + "; ".join(
            f"{p.name} {p.target_text}" for p in plist) + ")",
        _table(COLUMNS, table(plist, seeds, budget)),
        "",
        f"Smallest hidden width solving XOR / fitting sin to RMSE 0.05 on all {sweep_seeds} "
        "seeds (LM and plain SGD in float64, SDLM in fixed point, the budgets above)",
        _table(SWEEP_COLUMNS, sweep(plist, sweep_seeds, budget, max_width)),
    ])
    out(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgebp.host.bench.optim",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5, help="initialisations per method (table 1)")
    ap.add_argument("--sweep-seeds", type=int, default=10, help="seeds per width (table 2)")
    ap.add_argument("--budget", type=float, default=1.0, help="scale of every budget")
    ap.add_argument("--problem", action="append", choices=[p.name for p in problems()],
                    help="only these problems (repeatable)")
    ap.add_argument("--max-width", type=int, default=12, help="widest hidden layer swept")
    args = ap.parse_args(argv)
    run(args.seeds, args.sweep_seeds, args.budget, args.problem, args.max_width)
    return 0


if __name__ == "__main__":
    sys.exit(main())
