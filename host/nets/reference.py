"""The float64 reference: the same nets, losses and optimiser as the core, in plain numpy.

This is the oracle the integer core is checked against, so it is written to be read, not to
be fast. Samples are columns: a layer's activations are an (n, N) matrix for a batch of N.

    z^l = W^l a^{l-1} + b^l,   a^l = f^l(z^l)
    delta^L   = f'(z^L) o grad_a C     (cross-entropy outputs: p - t, the product simplified)
    delta^l-1 = f'(z^l-1) o (W^l)^T delta^l
    dC/dW^l = delta^l (a^l-1)^T,  dC/db^l = delta^l        (averaged over the batch)

Losses per sample: mse = 1/2 sum_j (a_j - t_j)^2; softmax_ce = -sum_j t_j log p_j with t the
one-hot of the class; bce = -sum_j [t_j log p_j + (1 - t_j) log(1 - p_j)] on a sigmoid output.

The optimiser has the core's semantics (edgebp.kernels.update): per parameter
    v = mu v + lr g + lr lambda w;   w -= v
with g the mean gradient of a mini-batch. The reference also has Adam (`Adam`, float only),
and second-order methods (Levenberg-Marquardt, Hessian diagonals) in
edgebp.host.nets.second_order.

Activations are the core's (edgebp.fixed.ACT_NAMES, same codes), swish x sigmoid(x) (SWISH)
and mish x tanh(softplus(x)) (MISH) among them. Training walks the samples in `epoch_order`, in
batches of `hyper.batch`; the last batch of an epoch may be partial and its step uses the
mean over the samples it has, as the core's Net.update() does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgebp import fixed
from edgebp.fixed import seed30, xorshift30

SWISH = fixed.SWISH
MISH = fixed.MISH
ACT_NAMES = fixed.ACT_NAMES
ACT_CODES = {name: i for i, name in enumerate(ACT_NAMES)}
LOSS_CODES = {name: i for i, name in enumerate(fixed.LOSS_NAMES)}


def _code(value: int | str, codes: dict[str, int], what: str) -> int:
    if isinstance(value, str):
        if value not in codes:
            raise ValueError(f"unknown {what} {value!r}, expected one of {sorted(codes)}")
        return codes[value]
    if value not in codes.values():
        raise ValueError(f"unknown {what} code {value!r}")
    return int(value)


# -- activations: forward and derivatives side by side --


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z|


def _mish_parts(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # (tanh(softplus z), sigmoid z): softplus' = sigmoid
    return np.tanh(np.logaddexp(0.0, z)), _sigmoid(z)


def act_forward(kind: int, z: np.ndarray, alpha: float) -> np.ndarray:
    if kind == fixed.IDENTITY:
        return z.copy()
    if kind == fixed.RELU:
        return np.where(z > 0, z, 0.0)
    if kind == fixed.LEAKY:
        return np.where(z > 0, z, alpha * z)
    if kind == fixed.SIGMOID:
        return _sigmoid(z)
    if kind == fixed.TANH:
        return np.tanh(z)
    if kind == SWISH:
        return z * _sigmoid(z)
    if kind == MISH:
        return z * _mish_parts(z)[0]
    e = np.exp(z - z.max(axis=0))  # softmax over the units of each column
    return e / e.sum(axis=0)


def act_derivative(kind: int, z: np.ndarray, a: np.ndarray, alpha: float) -> np.ndarray:
    # f'(z); at z = 0 the one-sided choice of the core (z > 0 counts as positive)
    if kind == fixed.IDENTITY:
        return np.ones_like(z)
    if kind == fixed.RELU:
        return np.where(z > 0, 1.0, 0.0)
    if kind == fixed.LEAKY:
        return np.where(z > 0, 1.0, alpha)
    if kind == fixed.SIGMOID:
        return a * (1.0 - a)
    if kind == fixed.TANH:
        return 1.0 - a * a
    if kind == SWISH:
        # (z s)' = s + z s (1 - s), s = sigmoid z
        s = _sigmoid(z)
        return s * (1.0 + z * (1.0 - s))
    if kind == MISH:
        # (z t)' = t + z t', t = tanh(softplus z), t' = (1 - t^2) s
        t, s = _mish_parts(z)
        return t + z * (1.0 - t * t) * s
    raise ValueError("softmax is only differentiated through cross-entropy")


def act_second_derivative(kind: int, z: np.ndarray, a: np.ndarray, alpha: float) -> np.ndarray:
    """f''(z). Zero for the piecewise-linear units (their kink at 0 has no second derivative
    that a Hessian of a finite sum could use: it is taken as 0 on both sides)."""
    if kind in (fixed.IDENTITY, fixed.RELU, fixed.LEAKY):
        return np.zeros_like(z)
    if kind == fixed.SIGMOID:
        return a * (1.0 - a) * (1.0 - 2.0 * a)  # s' = s (1 - s), s'' = s' (1 - 2 s)
    if kind == fixed.TANH:
        return -2.0 * a * (1.0 - a * a)  # t' = 1 - t^2, t'' = -2 t t'
    if kind == SWISH:
        # d/dz [s + z s (1 - s)] = 2 s (1 - s) + z s (1 - s)(1 - 2 s)
        s = _sigmoid(z)
        return s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))
    if kind == MISH:
        # d/dz [t + z (1 - t^2) s] = 2 (1 - t^2) s + z (1 - t^2) s ((1 - s) - 2 t s),
        # using d/dz [(1 - t^2) s] = -2 t t' s + (1 - t^2) s (1 - s)
        t, s = _mish_parts(z)
        u = (1.0 - t * t) * s
        return u * (2.0 + z * ((1.0 - s) - 2.0 * t * s))
    raise ValueError("softmax is only differentiated through cross-entropy")


# -- sample order shared by float and fixed-point training --


def epoch_state(seed: int, epoch: int) -> int:
    """The xorshift30 state epoch_order's shuffle of epoch `epoch` starts from (a board that
    shuffles its own dataset file is sent it: edgebp/dataset.py)."""
    s = seed30(seed + 0x9E3779B9 * (epoch + 1))
    for _ in range(8):
        s = xorshift30(s)
    return s


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch `epoch` (0-based) visits n samples.

    A Fisher-Yates shuffle driven by the core's xorshift30 (edgebp.fixed), started from
    seed30(seed + 0x9E3779B9 * (epoch + 1)) and stepped 8 times so that neighbouring seeds
    diverge; swap i (from n-1 down to 1) takes j = state % (i + 1) after one step. Integer
    only and below 2**30 throughout, so a board can reproduce it; independent of numpy's
    generators, whose streams may change between versions. (The modulo bias is < n / 2**30.)
    """
    s = epoch_state(seed, epoch)
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        s = xorshift30(s)
        j = s % (i + 1)
        order[i], order[j] = order[j], order[i]
    return np.array(order, dtype=np.int64)


def minibatches(n: int, batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Index arrays of one epoch's mini-batches: consecutive runs of epoch_order, the last
    one partial when batch does not divide n."""
    if batch < 1:
        raise ValueError(f"batch size must be at least 1, not {batch}")
    order = epoch_order(n, seed, epoch)
    return [order[i : i + batch] for i in range(0, n, batch)]


# -- Adam (float reference only) --


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba 2015) with bias correction, as the reference trainer's optimiser.

    Per parameter, at step t = 1, 2, ... with g the mean gradient of the mini-batch plus
    weight_decay * w (L2 decay added to the gradient, as in the paper's Algorithm 1, not
    AdamW's decoupled form):
        m = beta1 m + (1 - beta1) g;   v = beta2 v + (1 - beta2) g^2
        w -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
    """

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    batch: int = 1

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"Adam: lr must be positive, not {self.lr}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"Adam: {name} must be in [0, 1), not {getattr(self, name)}")
        if not self.eps >= 0 or not self.weight_decay >= 0:
            raise ValueError("Adam: eps and weight_decay must not be negative")
        if self.batch < 1:
            raise ValueError(f"batch size must be at least 1, not {self.batch}")


# -- the net --


class FloatNet:
    """A fully connected net in float64 with the core's layer kinds and losses.

    sizes: widths [n_0, ..., n_L]; acts: one activation per layer (code or name); loss: code
    or name; Ws[l]: (n_{l+1}, n_l), Bs[l]: (n_{l+1},); alpha: the leaky-ReLU slope (the core's
    alpha_q / 4096).
    """

    def __init__(self, sizes, acts, loss, Ws, Bs, alpha: float = 41 / 4096):
        self.sizes = [int(n) for n in sizes]
        self.L = len(self.sizes) - 1
        self.acts = [_code(a, ACT_CODES, "activation") for a in acts]
        self.loss_kind = _code(loss, LOSS_CODES, "loss")
        self.alpha = float(alpha)
        if len(self.acts) != self.L or len(Ws) != self.L or len(Bs) != self.L:
            raise ValueError("sizes, acts, Ws and Bs disagree in the number of layers")
        self.W = [np.array(w, dtype=np.float64) for w in Ws]
        self.B = [np.array(b, dtype=np.float64).reshape(-1) for b in Bs]
        for l in range(self.L):
            shape = (self.sizes[l + 1], self.sizes[l])
            if self.W[l].shape != shape or self.B[l].shape != shape[:1]:
                raise ValueError(f"layer {l + 1}: W must be {shape}, B ({shape[0]},)")
        _check_kinds(self.acts, self.loss_kind)
        self.VW = [np.zeros_like(w) for w in self.W]
        self.VB = [np.zeros_like(b) for b in self.B]
        self._adam_reset()
        self.z: list[np.ndarray] = []
        self.a: list[np.ndarray] = []
        self.error: list[np.ndarray] = []
        self.delta: list[np.ndarray] = []

    # -- forward and backward --

    def forward(self, X) -> np.ndarray:
        """Outputs for a batch X of shape (N, n_0) (or one sample (n_0,)), as (N, n_L).
        Caches z^l and a^l for backward."""
        a = _columns(X, self.sizes[0])
        self.a = [a]
        self.z = []
        for l in range(self.L):
            z = self.W[l] @ a + self.B[l][:, None]
            a = act_forward(self.acts[l], z, self.alpha)
            self.z.append(z)
            self.a.append(a)
        return a.T

    def derivatives(self) -> list[np.ndarray | None]:
        """f'(z^l) of each layer for the last forward batch (None for a softmax output)."""
        return [None if act == fixed.SOFTMAX else
                act_derivative(act, self.z[l], self.a[l + 1], self.alpha)
                for l, act in enumerate(self.acts)]

    def output_delta(self, T, fprime=None) -> np.ndarray:
        """delta^L = dC/dz^L per sample, (n_L, N), for targets T of the last forward batch."""
        return self._output(T, fprime)[1]

    def _output(self, T, fprime=None) -> tuple[np.ndarray, np.ndarray]:
        # (error, delta) of the output layer: for mse the error is grad_a C = a - t and
        # delta = f'(z) o error; for the cross-entropies f'(z) grad_a C simplifies to p - t
        a = self.a[-1]
        t = self.targets(T, a.shape[1])
        if self.loss_kind == fixed.MSE:
            f1 = fprime[-1] if fprime is not None else self.derivatives()[-1]
            return a - t, f1 * (a - t)
        return a - t, a - t

    def backward(self, T, fprime=None) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Mean gradients (dW, dB) per layer over the batch of the last forward call.

        Caches, per layer and sample, delta[l] and error[l], the back-propagated error before
        f' is applied ((W^l+1)^T delta^l+1, or the output's error above). fprime, if given,
        replaces derivatives(): a caller may pick the side of a ReLU kink."""
        if fprime is None:
            fprime = self.derivatives()
        N = self.a[0].shape[1]
        error, delta = self._output(T, fprime)
        self.error = [np.empty(0)] * self.L
        self.delta = [np.empty(0)] * self.L
        dW: list[np.ndarray] = [np.empty(0)] * self.L
        dB: list[np.ndarray] = [np.empty(0)] * self.L
        for l in range(self.L - 1, -1, -1):
            self.error[l], self.delta[l] = error, delta
            dW[l] = delta @ self.a[l].T / N
            dB[l] = delta.sum(axis=1) / N
            if l > 0:
                error = self.W[l].T @ delta
                delta = fprime[l - 1] * error
        return dW, dB

    def gradients(self, X, T) -> tuple[list[np.ndarray], list[np.ndarray]]:
        self.forward(X)
        return self.backward(T)

    def losses(self, X, T) -> np.ndarray:
        """Loss of each sample, (N,)."""
        self.forward(X)
        z, a = self.z[-1], self.a[-1]
        t = self.targets(T, a.shape[1])
        if self.loss_kind == fixed.MSE:
            return 0.5 * ((a - t) ** 2).sum(axis=0)
        if self.loss_kind == fixed.SOFTMAX_CE:
            # -log p_c = logsumexp(z) - z_c, computed without forming p
            m = z.max(axis=0)
            lse = m + np.log(np.exp(z - m).sum(axis=0))
            return (t * (lse - z)).sum(axis=0)
        # -t log(sigmoid z) - (1-t) log(1 - sigmoid z) = softplus(z) - t z
        return (np.logaddexp(0.0, z) - t * z).sum(axis=0)

    def loss(self, X, T) -> float:
        """Mean loss over the batch."""
        return float(self.losses(X, T).mean())

    def predict(self, X) -> np.ndarray:
        """Class of each sample: the argmax of the outputs, or output >= 1/2 for one output
        (the core's rule for a single MSE output in its own scale, and for BCE)."""
        y = self.forward(X)
        if y.shape[1] == 1:
            return (y[:, 0] >= 0.5).astype(np.int64)
        return y.argmax(axis=1)

    def targets(self, T, N: int) -> np.ndarray:
        """Targets as (n_L, N): class indices become one-hot columns for softmax_ce."""
        n = self.sizes[-1]
        T = np.asarray(T)
        if self.loss_kind == fixed.SOFTMAX_CE and not (T.ndim == 2 and T.shape == (N, n) and n > 1):
            classes = T.reshape(N).astype(np.int64)
            if classes.min() < 0 or classes.max() >= n:
                raise ValueError(f"class index outside 0..{n - 1}")
            return np.eye(n)[:, classes]
        return np.asarray(T, np.float64).reshape(N, n).T

    # -- the optimiser --

    def step(self, dW, dB, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        """One SGD step from mean gradients: v = mu v + lr g + lr lambda w; w -= v."""
        for l in range(self.L):
            for w, v, g in ((self.W[l], self.VW[l], dW[l]), (self.B[l], self.VB[l], dB[l])):
                v *= momentum
                v += lr * g + lr * weight_decay * w
                w -= v

    def _adam_reset(self) -> None:
        # Adam's moments and step count (VW, VB above are SGD's velocities)
        self.MW = [np.zeros_like(w) for w in self.W]
        self.MB = [np.zeros_like(b) for b in self.B]
        self.SW = [np.zeros_like(w) for w in self.W]
        self.SB = [np.zeros_like(b) for b in self.B]
        self.adam_t = 0

    def adam_step(self, dW, dB, opt: Adam) -> None:
        """One Adam step from mean gradients (see `Adam`)."""
        self.adam_t += 1
        c1 = 1.0 - opt.beta1**self.adam_t
        c2 = 1.0 - opt.beta2**self.adam_t
        for l in range(self.L):
            for w, m, v, g in ((self.W[l], self.MW[l], self.SW[l], dW[l]),
                               (self.B[l], self.MB[l], self.SB[l], dB[l])):
                g = g + opt.weight_decay * w
                m *= opt.beta1
                m += (1.0 - opt.beta1) * g
                v *= opt.beta2
                v += (1.0 - opt.beta2) * g * g
                w -= opt.lr * (m / c1) / (np.sqrt(v / c2) + opt.eps)

    def train(self, X, T, hyper, epochs: int, order_seed: int = 1,
              first_epoch: int = 0) -> list[float]:
        """Mini-batch training with `hyper` for `epochs` epochs, numbered from first_epoch
        (to continue a run), in the order of minibatches(N, hyper.batch, order_seed, epoch):
        SGD for a qnet.Hyper (lr, momentum, weight_decay, batch), Adam for an `Adam` (its
        moments carry over between calls).
        Returns the mean training loss of each epoch (measured during the epoch, before each
        batch's step, as the core accumulates it)."""
        X = np.asarray(X, np.float64).reshape(-1, self.sizes[0])
        T = np.asarray(T)
        N = len(X)
        history = []
        for epoch in range(first_epoch, first_epoch + epochs):
            total = 0.0
            for idx in minibatches(N, hyper.batch, order_seed, epoch):
                total += float(self.losses(X[idx], T[idx]).sum())
                dW, dB = self.backward(T[idx])  # the forward of losses() is cached
                if isinstance(hyper, Adam):
                    self.adam_step(dW, dB, hyper)
                else:
                    self.step(dW, dB, hyper.lr, hyper.momentum, hyper.weight_decay)
            history.append(total / N)
        return history

    def copy(self) -> FloatNet:
        net = FloatNet(self.sizes, self.acts, self.loss_kind, self.W, self.B, self.alpha)
        net.VW = [v.copy() for v in self.VW]
        net.VB = [v.copy() for v in self.VB]
        for name in ("MW", "MB", "SW", "SB"):
            setattr(net, name, [v.copy() for v in getattr(self, name)])
        net.adam_t = self.adam_t
        return net


def _columns(X, n: int) -> np.ndarray:
    X = np.asarray(X, np.float64)
    if X.ndim == 1:
        X = X.reshape(1, -1)
    if X.shape[1] != n:
        raise ValueError(f"inputs have {X.shape[1]} features, the net takes {n}")
    return X.T


def _check_kinds(acts: list[int], loss: int) -> None:
    # the same pairings the core accepts (edgebp.net.Net)
    for l, act in enumerate(acts[:-1]):
        if act == fixed.SOFTMAX:
            raise ValueError(f"layer {l + 1}: softmax is for the output layer only")
    out = acts[-1]
    if loss == fixed.SOFTMAX_CE and out != fixed.SOFTMAX:
        raise ValueError("softmax cross-entropy needs a softmax output layer")
    if loss == fixed.BCE and out != fixed.SIGMOID:
        raise ValueError("binary cross-entropy needs a sigmoid output layer")
    if loss == fixed.MSE and out == fixed.SOFTMAX:
        raise ValueError("a softmax output is trained with cross-entropy")


def from_qnet(qnet) -> FloatNet:
    """The float net at a QuantNet's dequantised weights."""
    Ws, Bs = qnet.float_weights()
    return FloatNet(qnet.sizes, qnet.acts, qnet.loss, Ws, Bs, alpha=qnet.alpha_q / 4096)
