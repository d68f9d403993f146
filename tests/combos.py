"""Seeded small nets covering every activation x loss x optimiser combination the core accepts,
plus nets at the edge of the proven range. Shared by the bit-exactness, allocation and
validation tests."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from edgebp import fixed
from edgebp.host.nets.qnet import Hyper, QuantNet, adam_q, sdlm_q

HIDDEN = ["identity", "relu", "leaky_relu", "sigmoid", "tanh", "swish", "mish"]
OUTPUTS = [  # (loss, output activation)
    ("mse", "identity"),
    ("mse", "relu"),
    ("mse", "sigmoid"),
    ("mse", "tanh"),
    ("softmax_ce", "softmax"),
    ("bce", "sigmoid"),
]
OPTIMISERS = {
    "sgd": Hyper(lr=0.25, batch=1),
    "sgd-stochastic": Hyper(lr=0.25, batch=1, rounding="stochastic", seed=7),
    "momentum": Hyper(lr=0.125, momentum=0.9, batch=1, rounding="stochastic", seed=3),
    "decay": Hyper(lr=0.25, weight_decay=0.01, batch=1),
    "minibatch": Hyper(lr=0.5, momentum=0.5, weight_decay=0.001, batch=3,
                       rounding="stochastic", seed=11),
    # Adam (edgebp/adam.py): sums of 3 samples in a sum of up to 4 (a count that is not a
    # power of two, and a last update of 1), decoupled weight decay, stochastic rounding
    "adam": Hyper(lr=0.01, weight_decay=0.01, batch=3, rounding="stochastic", seed=5),
    # SDLM (edgebp/sdlm.py): curvature from the first sample of each sum of 2, mu 0.1
    "sdlm": Hyper(lr=0.02, batch=2, rounding="nearest"),
}
A = {name: i for i, name in enumerate(fixed.ACT_NAMES)}
LOSS = {name: i for i, name in enumerate(fixed.LOSS_NAMES)}
SQUASH = {"sigmoid", "tanh", "softmax"}


@dataclass
class Case:
    name: str
    qnet: QuantNet
    hyper: Hyper
    Xq: np.ndarray  # int16 (N, n_in)
    Tq: np.ndarray  # int16 (N, n_t)


def _targets(rng, loss: str, out: str, n: int, n_out: int, sa_out: int) -> np.ndarray:
    if loss == "softmax_ce":
        return rng.integers(0, n_out, (n, 1)).astype(np.int16)
    if loss == "bce":
        return (rng.integers(0, 2, (n, n_out)) * 16384).astype(np.int16)
    lo = 0.0 if out in ("relu", "sigmoid") else -1.0
    t = rng.uniform(lo, 1.0, (n, n_out))
    return np.floor(t * 2.0**sa_out + 0.5).astype(np.int16)


def make_case(hidden: str, loss: str, out: str, opt: str, seed: int = 0, sizes=(3, 4, 3),
              n: int = 9, edge: bool = False) -> Case:
    rng = np.random.default_rng(seed)
    L = len(sizes) - 1
    acts = [A[hidden]] * (L - 1) + [A[out]]
    names = [hidden] * (L - 1) + [out]
    shift_a = [14] + [14 if a in SQUASH else 12 for a in names]
    shift_w = [12] * L
    shift_d = [14] * L
    if loss == "mse":
        shift_d[-1] = shift_a[-1]
    W, B = [], []
    for l in range(L):
        shape = (sizes[l + 1], sizes[l])
        if edge:
            W.append((rng.choice([-1, 1], shape) * 32767).astype(np.int16))
            B.append((rng.choice([-1, 1], sizes[l + 1]) * 32767).astype(np.int16))
        else:
            lim = int(4096 * 1.5 / np.sqrt(sizes[l]))
            W.append(rng.integers(-lim, lim + 1, shape).astype(np.int16))
            B.append(rng.integers(-lim // 4, lim // 4 + 1, sizes[l + 1]).astype(np.int16))
    hyper = OPTIMISERS[opt]
    batch_max = max(hyper.batch, 4)
    q = QuantNet(list(sizes), acts, shift_a, shift_w, shift_d, LOSS[loss], W, B,
                 batch_max=batch_max, momentum=hyper.momentum > 0,
                 adam=adam_q() if opt.startswith("adam") else None,
                 sdlm=sdlm_q(0.1, 0.05, [18] * (L - 1) + [14], [14] * L) if opt == "sdlm" else None)
    if edge:
        Xq = (rng.choice([-1, 1], (n, sizes[0])) * 32767).astype(np.int16)
    else:
        Xq = rng.integers(-16384, 16385, (n, sizes[0])).astype(np.int16)
    Tq = _targets(rng, loss, out, n, sizes[-1], shift_a[-1])
    if edge and loss == "mse":
        Tq = (rng.choice([-1, 1], Tq.shape) * 32767).astype(np.int16)
    name = f"{hidden}-{out}-{loss}-{opt}" + ("-edge" if edge else "")
    return Case(name, q, hyper, Xq, Tq)


def all_cases() -> list[Case]:
    cases = []
    for i, (hidden, (loss, out), opt) in enumerate(
            itertools.product(HIDDEN, OUTPUTS, OPTIMISERS)):
        c = make_case(hidden, loss, out, opt, seed=i)
        if out == "softmax" and i % 4:
            # a softmax output reading wider logits: z in Q(12 - logit_k)
            c.qnet.logit_k = i % 4
            c.name += f"-k{i % 4}"
        cases.append(c)
    return cases


def edge_cases() -> list[Case]:
    """Max-magnitude weights, biases, inputs and targets, wide fan-in and a huge step size."""
    out = []
    for i, (hidden, (loss, o)) in enumerate(itertools.product(HIDDEN, OUTPUTS)):
        c = make_case(hidden, loss, o, "minibatch", seed=100 + i, sizes=(40, 24, 3), n=6,
                      edge=True)
        k = (i // len(OUTPUTS)) % 4
        if o == "softmax" and k:
            c.qnet.logit_k = k  # logits differences beyond 65535 >> k clamp
            c.name += f"-k{k}"
        out.append(c)
    for i, (loss, o) in enumerate(OUTPUTS):
        # Adam at the edge: moments of the largest gradients, steps that saturate, and the
        # betas at their limits
        c = make_case("relu", loss, o, "adam", seed=200 + i, sizes=(40, 24, 3), n=6, edge=True)
        c.name += "-adam-edge"
        c.qnet.adam = (32, 1) if i % 2 else (32768, 32768)
        # lr 64 takes the multiplier's saturation below a shift of 0 (layer_am)
        c.hyper = Hyper(lr=64.0 if i % 2 else 8.0, batch=4 if i % 2 else 1,
                        rounding="nearest")
        out.append(c)
    for i, (loss, o) in enumerate(OUTPUTS):
        # SDLM at the edge: curvature formats that saturate every unit (Q24) or round most
        # to 0 (Q0), mu at one LSB of h (steps that saturate) or at its largest
        c = make_case("tanh" if i % 2 else "swish", loss, o, "sdlm", seed=300 + i,
                      sizes=(40, 24, 3), n=6, edge=True)
        c.name += "-sdlm-edge"
        c.qnet.sdlm = (sdlm_q(2.0**-14, 1.0, [24, 14], [14, 14]) if i % 2
                       else sdlm_q(255.0, 2.0**-14, [0, 14], [0, 0]))
        c.hyper = Hyper(lr=2.0 if i % 2 else 0.5, batch=4 if i % 2 else 1,
                        rounding="stochastic", seed=9)
        out.append(c)
    for i, (loss, o) in enumerate(OUTPUTS):
        # weight formats that follow the weights (edgebp/dynfmt.py), with momentum: weights
        # at the int16 limit, halved at each update down to the window's floor; or at
        # 1/16 of it in a format 3 below the window's top, doubled back up (relu: its z and
        # the output layer's input follow, from Q11, up to Q14 at the top; the hidden
        # delta follows the output layer's weights)
        c = make_case("relu" if i % 2 else "tanh", loss, o, "minibatch", seed=400 + i,
                      sizes=(40, 24, 3), n=12, edge=True)
        c.name += "-dyn-edge"
        q = c.qnet
        if i % 2:
            q.shift_w = [9] * q.L
            q.W = [(w // 16).astype(np.int16) for w in q.W]
            q.B = [(b // 16).astype(np.int16) for b in q.B]
            q.shift_a[1] = 11
            q.dyn = ((6,) * q.L, (12,) * q.L)
        else:
            q.dyn = ((10,) * q.L, (12,) * q.L)
        if o == "softmax":
            q.logit_k = 1  # the logit range dynamic formats take by default
            c.name += "-k1"
        out.append(c)
    return out
