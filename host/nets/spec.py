"""The net spec: what a user declares about a net before it has weights.

A spec is a JSON object (`edgebp init` writes one, `edgebp quantize` reads it):

    {
      "sizes": [64, 32, 10],                    layer widths, input first (1..8 layers)
      "activations": ["relu", "softmax"],       one per layer: identity, relu, leaky_relu,
                                                sigmoid, tanh, softmax (output only), swish,
                                                mish (hidden only on the board; the float64
                                                reference also has them as outputs)
      "loss": "softmax_ce",                     mse, softmax_ce (softmax out), bce (sigmoid out)
      "input_range": {"min": 0, "max": 16},     one number or one per input feature
      "integer_inputs": true,                   optional: the inputs are a board program's
                                                raw integers, input_range their range
                                                (integers); the net file then carries the
                                                input map that normalises them on the board
                                                (host/nets/inmap.py, edgebp/learner.py)
      "target_range": {"min": -1, "max": 1},    optional, mse only: one number or one per output
      "normalise_targets": true,                optional, mse with an identity output: the
                                                target range is mapped to [-1, 1] inside the
                                                net, as the input range is, and the outputs
                                                back to the targets' units (edgebp init
                                                --task regression sets it)
      "optimizer": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0001, "batch": 8,
                    "rounding": "stochastic", "seed": 1},
                                                "name": "sgd" (default) or "adam": Adam in
                                                fixed point (edgebp/adam.py), with "beta1",
                                                "beta2" (defaults 0.9, 0.999) and no
                                                momentum; lr defaults to 0.1 for SGD, 0.01
                                                for Adam. "optimizer": "adam" alone is
                                                Adam with its defaults. "sdlm": stochastic
                                                diagonal Levenberg-Marquardt
                                                (edgebp/sdlm.py), with "mu" and "gamma"
                                                (defaults 0.1, 0.05), lr 0.05 and no
                                                momentum; the quantiser chooses its
                                                curvature formats from the calibration data
      "batch_max": 8,                           samples per gradient sum the net is built for
      "init_seed": 0,                           seed of the float initial weights
      "leaky_alpha": 0.01,                      optional slope of leaky_relu below zero
      "weight_growth": 4,                       optional: how far weights may grow past the
                                                largest initial one before they saturate (the
                                                weight formats leave that much room, at the
                                                cost of log2(growth) bits of resolution)
      "weight_formats": "fixed",                optional: "dynamic" lets each layer's weight
                                                format follow its weights during training,
                                                and the hidden activations' and deltas'
                                                formats follow them (edgebp/dynfmt.py; SGD
                                                only), with no weight_growth to choose
      "logit_range": 16,                        optional, softmax outputs: the logits z
                                                span +-logit_range (8, 16, 32 or 64); a wider
                                                range costs resolution of z. Default 16 with
                                                dynamic weight formats (the logits grow with
                                                the weights), else 8
      "classes": ["0", "1", ...]                optional output names
    }

Every problem is reported as a `SpecError` whose message starts with the field's path
(`optimizer.lr: ...`, `input_range.min[3]: ...`), so a user can find it in the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgebp import fixed
from edgebp.host.nets.qnet import LOSS_CODES, Hyper, adam_q, mantissa_exponent, sdlm_q
from edgebp.host.nets.reference import ACT_CODES, ACT_NAMES
from edgebp.net import MAX_BATCH, MAX_LAYERS, MAX_WIDTH

_TOP_KEYS = ("sizes", "activations", "loss", "input_range", "integer_inputs", "target_range",
             "normalise_targets",
             "optimizer", "batch_max", "init_seed", "leaky_alpha", "weight_growth",
             "weight_formats", "logit_range", "classes")
_OPT_KEYS = ("name", "lr", "momentum", "weight_decay", "batch", "rounding", "seed", "beta1",
             "beta2", "mu", "gamma")
OPTIMIZERS = ("sgd", "adam", "sdlm")
LOGIT_RANGES = (8, 16, 32, 64)  # 8 * 2**k, k = 0..fixed.LOGIT_K_MAX
# the learning rate of each optimiser where the spec gives none (Adam's steps are about lr
# each, whatever the gradient's scale; SDLM's are lr / (mu + h) times the gradient, at most
# lr / mu: of 0.01 to 0.2, 0.05 gave edgebp train the lowest loss on iris and about the
# lowest on XOR)
DEFAULT_LR = {"sgd": 0.1, "adam": 0.01, "sdlm": 0.05}


class SpecError(ValueError):
    """A spec field is missing or wrong; `field` is its path, e.g. `optimizer.lr`."""

    def __init__(self, field_path: str, problem: str) -> None:
        super().__init__(f"{field_path}: {problem}")
        self.field = field_path


@dataclass
class Spec:
    """A validated spec. Ranges are per feature (lists of length sizes[0] / sizes[-1])."""

    sizes: list[int]
    activations: list[str]
    loss: str
    input_min: list[float]
    input_max: list[float]
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch: int = 1
    rounding: str = "nearest"
    seed: int = 1
    batch_max: int = 1
    init_seed: int = 0
    leaky_alpha: float = 0.01
    weight_growth: float = 4.0
    weight_formats: str = "fixed"
    logit_range: int | None = None  # None: the default (see logit_k)
    target_min: list[float] | None = None
    target_max: list[float] | None = None
    normalise_targets: bool = False
    classes: list[str] = field(default_factory=list)
    integer_inputs: bool = False
    optimizer: str = "sgd"  # or "adam", "sdlm"
    beta1: float = 0.9
    beta2: float = 0.999
    mu: float = 0.1  # SDLM's damping
    gamma: float = 0.05  # SDLM's weight of each new sample in its running curvature

    @property
    def adam(self) -> tuple[int, int] | None:
        """QuantNet.adam for this spec: (1 - beta1, 1 - beta2) in Q15, None for SGD."""
        return adam_q(self.beta1, self.beta2) if self.optimizer == "adam" else None

    @property
    def sdlm(self) -> tuple[int, int, int, tuple, tuple] | None:
        """mu and gamma as QuantNet.sdlm holds them, with no formats yet (the quantiser
        chooses them from its calibration samples), None for another optimiser."""
        return sdlm_q(self.mu, self.gamma, (), ()) if self.optimizer == "sdlm" else None

    @property
    def L(self) -> int:
        return len(self.sizes) - 1

    @property
    def acts(self) -> list[int]:
        return [ACT_CODES[a] for a in self.activations]

    @property
    def loss_code(self) -> int:
        return LOSS_CODES[self.loss]

    @property
    def logit_k(self) -> int:
        """A softmax output's logit_k (edgebp.net.Net): z in Q(12 - logit_k)."""
        if self.acts[-1] != fixed.SOFTMAX:
            return 0
        r = self.logit_range
        if r is None:
            r = 16 if self.weight_formats == "dynamic" else 8
        return LOGIT_RANGES.index(r)

    @property
    def alpha_q(self) -> int:
        return int(math.floor(self.leaky_alpha * (1 << fixed.ALPHA_SHIFT) + 0.5))

    def hyper(self) -> Hyper:
        return Hyper(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                     batch=self.batch, rounding=self.rounding, seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "sizes": list(self.sizes),
            "activations": list(self.activations),
            "loss": self.loss,
            "input_range": {"min": _compact(self.input_min), "max": _compact(self.input_max)},
        }
        if self.integer_inputs:
            d["integer_inputs"] = True
        if self.target_min is not None and self.target_max is not None:
            d["target_range"] = {"min": _compact(self.target_min),
                                 "max": _compact(self.target_max)}
        if self.normalise_targets:
            d["normalise_targets"] = True
        if self.optimizer == "adam":
            d["optimizer"] = {"name": "adam", "lr": self.lr, "beta1": self.beta1,
                              "beta2": self.beta2, "weight_decay": self.weight_decay,
                              "batch": self.batch, "rounding": self.rounding,
                              "seed": self.seed}
        elif self.optimizer == "sdlm":
            d["optimizer"] = {"name": "sdlm", "lr": self.lr, "mu": self.mu,
                              "gamma": self.gamma, "weight_decay": self.weight_decay,
                              "batch": self.batch, "rounding": self.rounding,
                              "seed": self.seed}
        else:
            d["optimizer"] = {"lr": self.lr, "momentum": self.momentum,
                              "weight_decay": self.weight_decay, "batch": self.batch,
                              "rounding": self.rounding, "seed": self.seed}
        d["batch_max"] = self.batch_max
        d["init_seed"] = self.init_seed
        d["leaky_alpha"] = self.leaky_alpha
        if self.weight_growth != Spec.weight_growth:
            d["weight_growth"] = self.weight_growth
        if self.weight_formats != Spec.weight_formats:
            d["weight_formats"] = self.weight_formats
        if self.logit_range is not None:
            d["logit_range"] = self.logit_range
        if self.classes:
            d["classes"] = list(self.classes)
        return d


def _compact(values: list[float]) -> float | list[float]:
    return values[0] if len(set(values)) == 1 else list(values)


# -- reading and validation --


def _int(v: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(where, f"expected an integer, got {v!r}")
    if not lo <= v <= hi:
        raise SpecError(where, f"{v} outside {lo}..{hi}")
    return v


def _num(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SpecError(where, f"expected a finite number, got {v!r}")
    return float(v)


def _name(v: Any, where: str, names: tuple[str, ...]) -> str:
    if v not in names:
        raise SpecError(where, f"{v!r} is not one of {', '.join(names)}")
    return v


def _obj(v: Any, where: str, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise SpecError(where, f"expected an object, got {v!r}")
    for k in v:
        if k not in keys:
            raise SpecError(f"{where}.{k}" if where else k,
                            f"unknown field (known: {', '.join(keys)})")
    return v


def _range(v: Any, where: str, n: int) -> tuple[list[float], list[float]]:
    v = _obj(v, where, ("min", "max"))
    out = []
    for end in ("min", "max"):
        if end not in v:
            raise SpecError(f"{where}.{end}", "missing")
        x = v[end]
        if isinstance(x, list):
            if len(x) != n:
                raise SpecError(f"{where}.{end}", f"has {len(x)} values, expected 1 or {n}")
            out.append([_num(e, f"{where}.{end}[{i}]") for i, e in enumerate(x)])
        else:
            out.append([_num(x, f"{where}.{end}")] * n)
    lo, hi = out
    for i in range(n):
        if not lo[i] < hi[i]:
            at = f"[{i}]" if n > 1 else ""
            raise SpecError(f"{where}.max{at}", f"{hi[i]} is not above min {lo[i]}")
    return lo, hi


def parse_spec(d: Any) -> Spec:
    """A `Spec` from a decoded JSON object, or `SpecError` naming the first bad field."""
    d = _obj(d, "", _TOP_KEYS)
    for key in ("sizes", "activations", "loss", "input_range"):
        if key not in d:
            raise SpecError(key, "missing")

    sizes = d["sizes"]
    if not isinstance(sizes, list) or not 2 <= len(sizes) <= MAX_LAYERS + 1:
        raise SpecError("sizes", f"expected a list of 2 to {MAX_LAYERS + 1} widths, got {sizes!r}")
    sizes = [_int(n, f"sizes[{i}]", 1, MAX_WIDTH) for i, n in enumerate(sizes)]
    L = len(sizes) - 1

    acts = d["activations"]
    if not isinstance(acts, list) or len(acts) != L:
        raise SpecError("activations", f"expected a list of {L} names (one per layer), "
                        f"got {acts!r}")
    acts = [_name(a, f"activations[{i}]", ACT_NAMES) for i, a in enumerate(acts)]
    for i, a in enumerate(acts[:-1]):
        if a == "softmax":
            raise SpecError(f"activations[{i}]", "softmax is for the output layer only")

    loss = _name(d["loss"], "loss", fixed.LOSS_NAMES)
    out = acts[-1]
    if loss == "softmax_ce" and out != "softmax":
        raise SpecError("loss", f"softmax_ce needs a softmax output layer, not {out}")
    if loss == "bce" and out != "sigmoid":
        raise SpecError("loss", f"bce needs a sigmoid output layer, not {out}")
    if loss == "mse" and out == "softmax":
        raise SpecError("loss", "a softmax output is trained with softmax_ce, not mse")

    in_lo, in_hi = _range(d["input_range"], "input_range", sizes[0])
    integer = d.get("integer_inputs", False)
    if not isinstance(integer, bool):
        raise SpecError("integer_inputs", f"expected true or false, got {integer!r}")
    if integer:
        for what, vals in (("min", in_lo), ("max", in_hi)):
            for i, v in enumerate(vals):
                at = f"[{i}]" if len(vals) > 1 else ""
                if v != math.floor(v) or not -(2**29) <= v < 2**29:
                    raise SpecError(f"input_range.{what}{at}", f"{v} is not an integer in "
                                    "-2**29..2**29-1 (integer_inputs)")
    t_lo = t_hi = None
    if "target_range" in d:
        if loss != "mse":
            raise SpecError("target_range", f"only used with mse (the {loss} targets are fixed)")
        t_lo, t_hi = _range(d["target_range"], "target_range", sizes[-1])
    normalise = d.get("normalise_targets", False)
    if not isinstance(normalise, bool):
        raise SpecError("normalise_targets", f"expected true or false, got {normalise!r}")
    if normalise:
        if loss != "mse" or out != "identity":
            # the outputs are mapped back by an affine map: exact only for a linear output
            raise SpecError("normalise_targets", f"needs an mse net with an identity output "
                            f"layer, not {loss} with {out}")
        if t_lo is None:
            raise SpecError("normalise_targets", "needs target_range: the range it maps "
                            "to [-1, 1]")

    opt = d.get("optimizer", {})
    if isinstance(opt, str):
        opt = {"name": opt}
    opt = _obj(opt, "optimizer", _OPT_KEYS)
    name = _name(opt.get("name", "sgd"), "optimizer.name", OPTIMIZERS)
    lr = _num(opt.get("lr", DEFAULT_LR[name]), "optimizer.lr")
    if lr <= 0:
        raise SpecError("optimizer.lr", f"must be positive, got {lr}")
    momentum = _num(opt.get("momentum", 0.0), "optimizer.momentum")
    if not 0 <= math.floor(momentum * 256 + 0.5) <= 255:
        raise SpecError("optimizer.momentum", f"{momentum} outside [0, 0.996] (Q8)")
    betas = []
    for key, default in (("beta1", Spec.beta1), ("beta2", Spec.beta2)):
        if key in opt and name != "adam":
            raise SpecError(f"optimizer.{key}", f"only used with Adam (\"name\": \"adam\"), "
                            f"not {name}")
        b = _num(opt.get(key, default), f"optimizer.{key}")
        try:
            adam_q(**{key: b})
        except ValueError as e:
            raise SpecError(f"optimizer.{key}", str(e)) from None
        betas.append(b)
    if name == "adam" and momentum > 0:
        raise SpecError("optimizer.momentum", f"{momentum:g} with Adam: Adam takes the place of "
                        "momentum (its first moment is one); leave momentum out")
    damping = []
    for key, default in (("mu", Spec.mu), ("gamma", Spec.gamma)):
        if key in opt and name != "sdlm":
            raise SpecError(f"optimizer.{key}", f"only used with SDLM (\"name\": \"sdlm\"), "
                            f"not {name}")
        v = _num(opt.get(key, default), f"optimizer.{key}")
        try:
            sdlm_q(**{"mu": Spec.mu, "gamma": Spec.gamma, key: v}, fc=(), fh=())
        except ValueError as e:
            raise SpecError(f"optimizer.{key}", str(e)) from None
        damping.append(v)
    if name == "sdlm" and momentum > 0:
        raise SpecError("optimizer.momentum", f"{momentum:g} with SDLM: SDLM takes the place "
                        "of momentum; leave momentum out")
    wd = _num(opt.get("weight_decay", 0.0), "optimizer.weight_decay")
    if wd < 0:
        raise SpecError("optimizer.weight_decay", f"must not be negative, got {wd}")
    if wd > 0 and mantissa_exponent(lr * wd)[1] < fixed.FV:
        # the core applies lr * decay as a fraction of a weight per step
        raise SpecError("optimizer.weight_decay", f"lr * weight_decay = {lr * wd} must be "
                        "below 255/256")
    batch = _int(opt.get("batch", 1), "optimizer.batch", 1, MAX_BATCH)
    rounding = _name(opt.get("rounding", "nearest"), "optimizer.rounding",
                     ("nearest", "stochastic"))
    seed = _int(opt.get("seed", 1), "optimizer.seed", -(2**63), 2**63 - 1)

    batch_max = _int(d.get("batch_max", batch), "batch_max", 1, MAX_BATCH)
    if batch > batch_max:
        raise SpecError("optimizer.batch", f"{batch} exceeds batch_max {batch_max}")
    init_seed = _int(d.get("init_seed", 0), "init_seed", 0, 2**63 - 1)
    alpha = _num(d.get("leaky_alpha", 0.01), "leaky_alpha")
    if not 0 <= alpha <= 1:
        raise SpecError("leaky_alpha", f"{alpha} outside [0, 1]")
    growth = _num(d.get("weight_growth", Spec.weight_growth), "weight_growth")
    if not 1 <= growth <= 1024:
        raise SpecError("weight_growth", f"{growth} outside [1, 1024]")
    formats = d.get("weight_formats", Spec.weight_formats)
    if formats not in ("fixed", "dynamic"):
        raise SpecError("weight_formats", f"{formats!r}: expected \"fixed\" or \"dynamic\"")
    if formats == "dynamic":
        if "weight_growth" in d:
            raise SpecError("weight_growth", "is for fixed weight formats: dynamic ones "
                            "follow the weights")
        if name in ("adam", "sdlm"):
            raise SpecError("weight_formats", f"dynamic formats are for SGD, not {name}")
    logits = d.get("logit_range")
    if logits is not None:
        if acts[-1] != "softmax":
            raise SpecError("logit_range", "is for a softmax output")
        if logits not in LOGIT_RANGES or isinstance(logits, bool):
            raise SpecError("logit_range", f"{logits!r}: expected one of "
                            f"{', '.join(map(str, LOGIT_RANGES))}")
        logits = int(logits)

    classes = d.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise SpecError("classes", f"expected a list of names, got {classes!r}")
    if classes and len(classes) != sizes[-1] and not (loss == "bce" and sizes[-1] == 1
                                                      and len(classes) == 2):
        raise SpecError("classes", f"{len(classes)} names for {sizes[-1]} outputs")

    return Spec(sizes=sizes, activations=acts, loss=loss, input_min=in_lo, input_max=in_hi,
                lr=lr, momentum=momentum, weight_decay=wd, batch=batch, rounding=rounding,
                seed=seed, batch_max=batch_max, init_seed=init_seed, leaky_alpha=alpha,
                weight_growth=growth, weight_formats=formats, logit_range=logits,
                target_min=t_lo, target_max=t_hi,
                normalise_targets=normalise, classes=classes, integer_inputs=integer,
                optimizer=name, beta1=betas[0], beta2=betas[1], mu=damping[0],
                gamma=damping[1])


def make_spec(**fields: Any) -> Spec:
    """A validated spec from keyword fields in the JSON layout (for use from Python)."""
    return parse_spec(fields)


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SpecError(str(path), f"not valid JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise SpecError(str(path), f"not UTF-8 text (byte {e.start}): not a spec") from None
    except RecursionError:
        raise SpecError(str(path), "not a spec: JSON nested too deeply") from None
    return parse_spec(d)


def save_spec(spec: Spec, path: str | Path) -> None:
    Path(path).write_text(json.dumps(spec.to_dict(), indent=2) + "\n")


# -- float initial weights --


def init_float_weights(spec: Spec, seed: int | None = None
                       ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Uniform He init before relu / leaky_relu, Glorot before the others; zero biases.

    Weights act on normalised inputs (the declared input range mapped to [-1, 1]), shape
    (n_out, n_in), float64. Uniform rather than normal keeps max|w| bounded, which is what
    the weight format is chosen from.
    """
    rng = np.random.default_rng(spec.init_seed if seed is None else seed)
    Ws, Bs = [], []
    for l in range(spec.L):
        n_in, n_out = spec.sizes[l], spec.sizes[l + 1]
        if spec.activations[l] in ("relu", "leaky_relu"):
            lim = math.sqrt(6.0 / n_in)
        else:
            lim = math.sqrt(6.0 / (n_in + n_out))
        Ws.append(rng.uniform(-lim, lim, (n_out, n_in)))
        Bs.append(np.zeros(n_out))
    return Ws, Bs
