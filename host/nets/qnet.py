"""Host-side description of a quantised net: the formats, int16 weights and hyper-parameters.

`QuantNet` is what the quantiser produces and what every host tool consumes: it builds the
core `edgebp.net.Net` under CPython, emits the source that builds the same net under
MicroPython, and dequantises weights and gradients for the float reference.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgebp import fixed
from edgebp.net import Net

ACT_CODES = {name: i for i, name in enumerate(fixed.ACT_NAMES)}
LOSS_CODES = {name: i for i, name in enumerate(fixed.LOSS_NAMES)}


def mantissa_exponent(value: float, bits: int = 8) -> tuple[int, int]:
    """value ~= m * 2**-e with m in [2**(bits-1), 2**bits - 1], rounded to nearest."""
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"expected a positive finite number, got {value!r}")
    e = bits - 1 - math.floor(math.log2(value))
    m = int(math.floor(value * 2.0**e + 0.5))
    if m >= 1 << bits:
        m = (m + 1) >> 1
        e -= 1
    return m, e


def adam_q(beta1: float = 0.9, beta2: float = 0.999) -> tuple[int, int]:
    """Adam's betas as the core takes them: (1 - beta1, 1 - beta2) in Q15, rounded to
    nearest; beta1 in [0, 0.999], beta2 in [0, 1)."""
    for name, b in (("beta1", beta1), ("beta2", beta2)):
        if not (isinstance(b, (int, float)) and math.isfinite(b) and 0 <= b < 1):
            raise ValueError(f"Adam {name} must lie in [0, 1), not {b!r}")
    c1 = int(math.floor((1 - beta1) * 32768 + 0.5))
    c2 = max(1, int(math.floor((1 - beta2) * 32768 + 0.5)))
    if c1 < 32:
        raise ValueError(f"Adam beta1 {beta1} above 0.999 (1 - beta1 must be at least 32/32768)")
    return c1, c2


def sdlm_q(mu: float, gamma: float, fc, fh) -> tuple[int, int, int, tuple[int, ...],
                                                     tuple[int, ...]]:
    """SDLM's settings as the core takes them: mu (> 0) as an 8-bit mantissa and exponent,
    gamma in (0, 1] in Q14, the formats as given (sdlm_formats)."""
    if not (isinstance(mu, (int, float)) and math.isfinite(mu) and mu > 0):
        raise ValueError(f"SDLM mu must be a positive number, not {mu!r}")
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and 0 < gamma <= 1):
        raise ValueError(f"SDLM gamma must lie in (0, 1], not {gamma!r}")
    mu_m, mu_e = mantissa_exponent(mu)
    if not 0 <= mu_e <= 30:
        raise ValueError(f"SDLM mu {mu} outside 2**-30..255")
    g = max(1, int(math.floor(gamma * 16384 + 0.5)))
    return mu_m, mu_e, g, tuple(int(v) for v in fc), tuple(int(v) for v in fh)


def sdlm_formats(c_max, h_max, headroom: float = 4.0) -> tuple[list[int], list[int]]:
    """SDLM's curvature formats (edgebp/sdlm.py) per layer from the largest curvature of a
    unit (c_max) and of a weight or bias (h_max) seen per layer: the finest Q that holds
    `headroom` times each, C in Q0..Q24 (the output layer's is Q14), h in Q0..Q14."""
    def q(v: float, hi: int) -> int:
        v = float(v) * headroom
        if not v > 0 or not math.isfinite(v):
            return hi
        return max(0, min(hi, math.floor(math.log2(32767 / v))))
    fc = [q(v, 24) for v in c_max]
    fc[-1] = 14
    return fc, [q(v, 14) for v in h_max]


@dataclass
class Hyper:
    """Training settings in float form; `fixed()` gives what the core takes."""

    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch: int = 1
    rounding: str = "nearest"  # or "stochastic"
    seed: int = 1

    def fixed(self) -> dict[str, int]:
        lr_m, lr_e = mantissa_exponent(self.lr)
        mu = int(math.floor(self.momentum * 256 + 0.5))
        if not 0 <= mu <= 255:
            raise ValueError(f"momentum {self.momentum} outside [0, 0.996]")
        c_m, c_e = (0, 0)
        if self.weight_decay > 0:
            c_m, c_e = mantissa_exponent(self.lr * self.weight_decay)
        if self.rounding not in ("nearest", "stochastic"):
            raise ValueError(f"rounding must be nearest or stochastic, not {self.rounding!r}")
        mode = fixed.STOCHASTIC if self.rounding == "stochastic" else fixed.NEAREST
        return dict(lr_m=lr_m, lr_e=lr_e, mu=mu, c_m=c_m, c_e=c_e, batch=self.batch,
                    mode=mode, seed=self.seed)


@dataclass
class QuantNet:
    sizes: list[int]
    acts: list[int]
    shift_a: list[int]
    shift_w: list[int]
    shift_d: list[int]
    loss: int
    W: list[np.ndarray]  # int16, shape (n_out, n_in)
    B: list[np.ndarray]  # int16, shape (n_out,)
    batch_max: int = 1
    momentum: bool = False
    alpha_q: int = 41
    # input normalisation folded in: x_q = round((x - in_offset) * in_scale * 2**shift_a[0])
    in_offset: np.ndarray | None = None
    in_scale: np.ndarray | None = None
    classes: list[str] = field(default_factory=list)
    # target normalisation (mse, identity output; spec normalise_targets): the net learns
    # t' = (t - out_offset) * out_scale, and its outputs y' mean y = y' / out_scale +
    # out_offset in the targets' units. One scale for all outputs, so the loss the core
    # reports is the loss in the targets' units times out_scale**2.
    out_offset: np.ndarray | None = None  # (n_out,)
    out_scale: float | None = None
    # integer inputs (spec integer_inputs): the map the board applies to raw integer inputs,
    # an edgebp.host.nets.inmap.InputMap, written into the net file's input-map section
    in_map: Any = None
    # Adam in place of SGD (edgebp/adam.py): (c1, c2) = 1 - beta1 and 1 - beta2 in Q15
    # (adam_q), or None
    adam: tuple[int, int] | None = None
    # stochastic diagonal Levenberg-Marquardt in place of SGD (edgebp/sdlm.py): (mu_m, mu_e,
    # gamma, fc, fh) = mu as mantissa and exponent, gamma in Q14, the curvature formats of
    # units and parameters per layer (sdlm_q), or None
    sdlm: tuple[int, int, int, tuple[int, ...], tuple[int, ...]] | None = None
    # weight formats that follow the weights (edgebp/dynfmt.py): per layer the lowest and
    # the highest format shift_w may take, (lo, hi), or None for fixed formats (the hidden
    # activation and delta formats follow them: shift_w, shift_a, shift_d are those of now)
    dyn: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    # a softmax output's logits in Q(12 - logit_k), range +-8 * 2**logit_k (0..3)
    logit_k: int = 0

    @property
    def L(self) -> int:
        return len(self.sizes) - 1

    def shift_z(self, l: int) -> int:
        """The format of layer l's z (edgebp.net.Net.shift_z)."""
        act = self.acts[l]
        if act == fixed.SOFTMAX:
            return fixed.Z_SHIFT_SQUASH - self.logit_k
        if act in (fixed.SIGMOID, fixed.TANH, fixed.SWISH, fixed.MISH):
            return fixed.Z_SHIFT_SQUASH
        return self.shift_a[l + 1]

    # -- core on CPython --

    def build(self, hyper: Hyper | None = None, kernels=None) -> Net:
        net = Net(list(self.sizes), list(self.acts), list(self.shift_a), list(self.shift_w),
                  list(self.shift_d), self.loss, self.batch_max, self.momentum, self.alpha_q,
                  kernels, self.logit_k)
        for l in range(self.L):
            net.W[l][:] = array("h", np.asarray(self.W[l], dtype="<i2").tobytes())
            net.B[l][:] = array("h", np.asarray(self.B[l], dtype="<i2").tobytes())
        if self.adam is not None:
            from edgebp import adam

            adam.attach(net, *self.adam)
        if self.sdlm is not None:
            from edgebp import sdlm

            sdlm.attach(net, *self.sdlm)
        if self.dyn is not None:
            from edgebp import dynfmt

            dynfmt.attach(net, *self.dyn)
        if hyper is not None:
            apply_hyper(net, hyper)
        return net

    def device_source(self, hyper: Hyper | None = None, kernels: str | None = None) -> str:
        """MicroPython/CPython source defining `make()`, which builds this net with the core."""
        def blob(a: np.ndarray) -> str:
            return repr(np.asarray(a, dtype="<i2").tobytes())
        lines = [
            "from array import array",
            "from edgebp.net import Net",
            "def make():",
        ]
        if kernels:
            lines.append(f"    import {kernels} as kern")
        else:
            lines.append("    kern = None")
        lines.append(
            f"    net = Net({list(self.sizes)}, {list(self.acts)}, {list(self.shift_a)}, "
            f"{list(self.shift_w)}, {list(self.shift_d)}, {self.loss}, {self.batch_max}, "
            f"{self.momentum}, {self.alpha_q}, kern, {self.logit_k})"
        )
        for l in range(self.L):
            lines.append(f"    net.W[{l}][:] = array('h', {blob(self.W[l])})")
            lines.append(f"    net.B[{l}][:] = array('h', {blob(self.B[l])})")
        if self.adam is not None:
            lines += ["    from edgebp import adam",
                      f"    adam.attach(net, {self.adam[0]}, {self.adam[1]})"]
        if self.sdlm is not None:
            mu_m, mu_e, gamma, fc, fh = self.sdlm
            lines += ["    from edgebp import sdlm",
                      f"    sdlm.attach(net, {mu_m}, {mu_e}, {gamma}, {list(fc)}, {list(fh)})"]
        if self.dyn is not None:
            lines += ["    from edgebp import dynfmt",
                      f"    dynfmt.attach(net, {list(self.dyn[0])}, {list(self.dyn[1])})"]
        if hyper is not None:
            h = hyper.fixed()
            lines += [
                f"    net.set_lr({h['lr_m']}, {h['lr_e']})",
                f"    net.set_batch({h['batch']})",
                f"    net.set_momentum({h['mu']})",
                f"    net.set_decay({h['c_m']}, {h['c_e']})",
                f"    net.set_rounding({h['mode']}, {h['seed']})",
            ]
        lines.append("    return net")
        return "\n".join(lines) + "\n"

    # -- dequantisation --

    def float_weights(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        Ws = [np.asarray(w, np.float64) * 2.0 ** -self.shift_w[l] for l, w in enumerate(self.W)]
        Bs = [np.asarray(b, np.float64) * 2.0 ** -self.shift_w[l] for l, b in enumerate(self.B)]
        return Ws, Bs

    def quantize_inputs(self, X: np.ndarray) -> np.ndarray:
        """Inputs as the core takes them (int16, the input format). A net with integer inputs
        (an input map) takes them through its map, as a board program's edgebp.learner does,
        so that training through the server and on the board learn the same; the float
        quantisation is float_quantize_inputs."""
        if self.in_map is None:
            return self.float_quantize_inputs(X)
        Xf = np.asarray(X, np.float64)
        if Xf.size and not np.all(Xf == np.floor(Xf)):
            raise ValueError("this net takes raw integer inputs (its input map), and these "
                             "are not all integers")
        return self.in_map.apply(Xf.astype(np.int64))

    def float_quantize_inputs(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, np.float64)
        if self.in_offset is not None:
            X = X - self.in_offset
        if self.in_scale is not None:
            X = X * self.in_scale
        q = np.floor(X * 2.0 ** self.shift_a[0] + 0.5)
        return np.clip(q, -32767, 32767).astype(np.int16)

    def quantize_targets(self, T: np.ndarray) -> np.ndarray:
        """Targets as the core takes them: class index for softmax-CE, else in the output's
        format (Q14 for BCE; MSE after the target normalisation), shape (N, n_target)."""
        T = np.asarray(T)
        if self.loss == fixed.SOFTMAX_CE:
            return T.astype(np.int16).reshape(-1, 1)
        sa = 14 if self.loss == fixed.BCE else self.shift_a[-1]
        q = np.floor(self.net_targets(T).reshape(len(T), -1) * 2.0**sa + 0.5)
        return np.clip(q, -32767, 32767).astype(np.int16)

    @property
    def scales_targets(self) -> bool:
        return self.out_scale is not None

    def net_targets(self, T) -> np.ndarray:
        """Targets in the user's units -> the targets the net learns (the float reference's
        and, quantised, the core's); unchanged without a target normalisation."""
        if not self.scales_targets or self.loss != fixed.MSE:
            return np.asarray(T) if self.loss == fixed.SOFTMAX_CE else np.asarray(T, np.float64)
        T = np.asarray(T, np.float64).reshape(len(T), -1)
        return (T - np.asarray(self.out_offset)) * self.out_scale

    def user_outputs(self, Y) -> np.ndarray:
        """The net's float outputs (N, n_out) -> the targets' units."""
        Y = np.asarray(Y, np.float64)
        if not self.scales_targets:
            return Y
        return Y / self.out_scale + np.asarray(self.out_offset)

    def output_values(self, A_q) -> np.ndarray:
        """The core's int16 outputs (N, n_out) in the targets' units (MSE; sigmoid and
        softmax outputs as probabilities)."""
        return self.user_outputs(np.asarray(A_q, np.float64) * 2.0 ** -self.shift_a[-1])

    def grad_scale(self, l: int) -> float:
        """Float value of one unit of the gradient sums GW[l], GB[l] (before the batch mean)."""
        kg = fixed.ceil_log2(self.batch_max)
        return 2.0 ** (kg - self.shift_d[l] - self.shift_a[l])

    def with_weights(self, net: Net) -> QuantNet:
        """A copy carrying the core net's current weights."""
        Ws = [np.frombuffer(bytes(net.W[l]), "<i2").reshape(self.sizes[l + 1], self.sizes[l])
              .copy() for l in range(self.L)]
        Bs = [np.frombuffer(bytes(net.B[l]), "<i2").copy() for l in range(self.L)]
        # formats that follow the weights are where the net's are now
        return QuantNet(**{**self.__dict__, "W": Ws, "B": Bs, "shift_w": list(net.shift_w),
                           "shift_a": list(net.shift_a), "shift_d": list(net.shift_d)})


def apply_hyper(net: Net, hyper: Hyper) -> None:
    h = hyper.fixed()
    net.set_lr(h["lr_m"], h["lr_e"])
    net.set_batch(h["batch"])
    net.set_momentum(h["mu"])
    net.set_decay(h["c_m"], h["c_e"])
    net.set_rounding(h["mode"], h["seed"])
