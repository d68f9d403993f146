"""The net and the data an `edgebp` command works on, read and checked against each other.

A command names a net (--net NET.ebp, or --spec SPEC.json quantised on the spot with its
formats calibrated on the data, or neither: a net inferred from the data) and data (--data,
--val; or neither: the built-in XOR example). `prepare(args)` reads them, checks every sample
against the net (input width, class indices, target formats, the declared input range) and
proves the core's ranges for the inputs and settings at hand. Every problem becomes a
`UserError`: one line for the terminal, naming the file and where in it.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgebp import fixed
from edgebp.ebp import EbpError
from edgebp.host.cli import data as datafile
from edgebp.host.cli.data import DataError, Dataset
from edgebp.host.nets import ebpfile
from edgebp.host.nets.qnet import Hyper, QuantNet, adam_q, sdlm_q
from edgebp.host.nets.quantize import IN_SHIFT, fit_mu, needed_formats, quantize, sdlm_settings
from edgebp.host.nets.ranges import RangeError, check_ranges, lr_fits, max_lr
from edgebp.host.nets.reference import from_qnet
from edgebp.host.nets.spec import (
    DEFAULT_LR,
    Spec,
    SpecError,
    init_float_weights,
    load_spec,
    parse_spec,
)


class UserError(Exception):
    """A problem the user can fix: reported as `edgebp: message`, exit code 2, no traceback."""


def warn(text: str) -> None:
    print(f"edgebp: warning: {text}", file=sys.stderr, flush=True)


def check_suffix(path: str, allowed: tuple[str, ...], what: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in allowed:
        raise UserError(f"{path}: {what} must end in {' or '.join(allowed)}")
    return suffix


def check_output(path: str, what: str = "") -> None:
    """Refuse now an output file that could not be written later (a missing or read-only
    directory, a directory in its place): a typo must not cost a training run."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    label = f"{path}{f' ({what})' if what else ''}"
    if p.is_dir():
        raise UserError(f"{label}: is a directory, not a file to write")
    if not parent.is_dir():
        missing = parent
        while not missing.parent.is_dir() and missing.parent != missing:
            missing = missing.parent
        raise UserError(f"{label}: no directory {missing} to write it in")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UserError(f"{label}: not writable here (permission denied)")


# -- reading --


def read_spec(path: str) -> Spec:
    try:
        return load_spec(path)
    except SpecError as e:
        raise UserError(f"{path}: {e}") from None
    except OSError as e:
        raise UserError(f"{path}: {e.strerror or e}") from None


def read_net(path: str) -> tuple[QuantNet, Hyper | None]:
    try:
        return ebpfile.read(path)
    except EbpError as e:
        raise UserError(f"{path}: {e}") from None
    except OSError as e:
        raise UserError(f"{path}: {e.strerror or e}") from None
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, struct.error) as e:
        # the parsers name what they check; anything else a damaged file trips over
        raise UserError(f"{path}: not a readable net file ({type(e).__name__}: {e})") from None


def read_data(path: str, args: argparse.Namespace, n_targets: int = 1,
              classes: list[str] | None = None) -> Dataset:
    try:
        return datafile.read(path, args.label_column, n_targets, classes or None)
    except DataError as e:
        raise UserError(str(e)) from None


# -- quantising --


def range_refusal(e: RangeError, context: str = "") -> UserError:
    more = len(e.problems) - 1
    return UserError(f"{context}{e}" + (f" (and {more} more problem{'s' if more > 1 else ''})"
                                        if more else ""))


def quantize_spec(spec: Spec, Ws=None, Bs=None, calib: Dataset | None = None,
                  context: str = "") -> QuantNet:
    raw = Ws is not None
    if Ws is None:
        Ws, Bs = init_float_weights(spec)
    X = T = None
    if calib is not None:
        X = calib.X
        T = calib.y[:, 0] if spec.loss == "softmax_ce" else calib.y
    try:
        qnet = quantize(spec, Ws, Bs, X, T, raw_inputs=raw)
    except RangeError as e:
        raise range_refusal(e, context) from None
    try:
        free = needed_formats(spec, Ws, Bs, X, T, raw_inputs=raw)
    except RangeError:
        return qnet  # (without the learning rate's constraint nothing new can be refused)
    limit = max_lr(free)
    if spec.lr > limit:
        coarser = [f"layer {l + 1} Q{a} instead of Q{b}" for l, (a, b)
                   in enumerate(zip(qnet.shift_w, free.shift_w, strict=True)) if a < b]
        warn(f"{context}learning rate {spec.lr:g} is above {limit:.4g}, the largest learning "
             "rate this net allows at the weight formats its weights need: its weights are "
             f"stored coarser to take it ({', '.join(coarser)}); a rate this large usually "
             "diverges")
    return qnet


def check_lr(qnet: QuantNet, hyper: Hyper, what: str) -> None:
    """Refuse a learning rate the net's formats cannot apply, saying the largest they can.
    (SGD's step is the gradient times the rate in the weights' format; Adam's is the rate
    itself, at most 8 times it, whatever the formats: the board takes any rate for it.)"""
    if qnet.adam is None and not lr_fits(qnet, hyper.lr):
        raise UserError(f"learning rate {hyper.lr:g} is too large for {what}: the largest "
                        f"learning rate this net allows is {max_lr(qnet):.4g} (its weight "
                        "formats; quantise its spec with the larger rate for coarser ones)")


def declared_range(qnet: QuantNet, held: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The raw input range the net was quantised for (the input normalisation maps it to
    [-1, 1]), or with held=True the range its input format holds; without a normalisation
    both are what the input format holds."""
    n = qnet.sizes[0]
    lim = fixed.Q_MAX * 2.0 ** -qnet.shift_a[0]
    if qnet.in_offset is None or qnet.in_scale is None:
        return np.full(n, -lim), np.full(n, lim)
    half = 1 / np.broadcast_to(qnet.in_scale, (n,)) * (lim if held else 1.0)
    centre = np.broadcast_to(qnet.in_offset, (n,))
    return centre - half, centre + half


# -- the optimiser --


_SETTINGS = {"adam": ("beta1", "beta2"), "sdlm": ("mu", "gamma")}
_LABEL = {"sgd": "SGD", "adam": "Adam", "sdlm": "SDLM"}


def optimizer_args(args: argparse.Namespace) -> dict:
    """--optimizer, --beta1, --beta2, --mu, --gamma as given (the spec's optimizer fields),
    {} if none."""
    return {k: v for k, v in ((k, getattr(args, "optimizer" if k == "name" else k, None))
                              for k in ("name", "beta1", "beta2", "mu", "gamma"))
            if v is not None}


def check_settings(name: str, opt: dict) -> None:
    """Refuse a setting of another optimiser than `name` (--beta1 with SGD, --mu with Adam)."""
    for other, keys in _SETTINGS.items():
        for key in keys:
            if other != name and key in opt:
                raise UserError(f"--{key} is a setting of {_LABEL[other]}: it goes with "
                                f"--optimizer {other}")


def optimizer_of(qnet: QuantNet) -> str:
    return "adam" if qnet.adam is not None else "sdlm" if qnet.sdlm is not None else "sgd"


def _betas(adam: tuple[int, int]) -> tuple[float, float]:
    return 1 - adam[0] / 32768, 1 - adam[1] / 32768


def sdlm_floats(sdlm) -> tuple[float, float]:
    """mu and gamma of QuantNet.sdlm as the board applies them."""
    return sdlm[0] * 2.0 ** -sdlm[1], sdlm[2] / 16384


def with_optimizer(qnet: QuantNet, hyper: Hyper, opt: dict, lr_given: bool,
                   what: str, data: Dataset | None = None) -> tuple[QuantNet, Hyper]:
    """A net file's net and settings with the optimiser `opt` (optimizer_args) in place of
    its own. Adam and SDLM take the place of momentum (a net file's momentum buffers hold
    nothing: they start at zero); switching without --lr takes the new optimiser's default
    rate. A net switched to SDLM takes its curvature formats from `data`, as the quantiser
    takes them from its calibration samples (a net file's own SDLM keeps its formats)."""
    if not opt:
        return qnet, hyper
    old = optimizer_of(qnet)
    name = opt.get("name", old)
    check_settings(name, opt)
    if name == "sgd":
        qnet = replace(qnet, adam=None, sdlm=None)
    else:
        if hyper.momentum:
            if name == old:
                raise UserError(f"{what}: momentum {hyper.momentum:g} with {_LABEL[name]}")
            hyper = replace(hyper, momentum=0.0)
    if name == "adam":
        b1, b2 = _betas(qnet.adam) if qnet.adam is not None else (0.9, 0.999)
        try:
            adam = adam_q(opt.get("beta1", b1), opt.get("beta2", b2))
        except ValueError as e:
            raise UserError(f"{what}: {e}") from None
        qnet = replace(qnet, adam=adam, sdlm=None, momentum=False)
    elif name == "sdlm":
        mu, gamma = sdlm_floats(qnet.sdlm) if qnet.sdlm is not None else (Spec.mu, Spec.gamma)
        mu, gamma = opt.get("mu", mu), opt.get("gamma", gamma)
        try:
            if qnet.sdlm is not None:
                mu_m, mu_e, g, fc, fh = sdlm_q(mu, gamma, qnet.sdlm[3], qnet.sdlm[4])
                sdlm = (mu_m, mu_e, g, fc, fit_mu(mu_m, mu_e, fh))
            elif data is None:
                raise UserError(f"{what}: SDLM's curvature formats come from data: switch "
                                "with --data, or quantise a spec with \"optimizer\": "
                                "\"sdlm\"")
            else:
                sdlm = sdlm_settings(from_qnet(qnet), _normalised_inputs(qnet, data.X),
                                     _float_targets(qnet, data), mu, gamma)
        except (ValueError, RangeError) as e:
            raise UserError(f"{what}: {e}") from None
        qnet = replace(qnet, sdlm=sdlm, adam=None, momentum=False)
    if name != old and not lr_given:
        hyper = replace(hyper, lr=DEFAULT_LR[name])
    return qnet, hyper


def _normalised_inputs(qnet: QuantNet, X) -> np.ndarray:
    # the inputs as the net's float reference takes them: the board's, unquantised
    return qnet.quantize_inputs(X).astype(np.float64) * 2.0 ** -qnet.shift_a[0]


def _float_targets(qnet: QuantNet, ds: Dataset) -> np.ndarray:
    return qnet.net_targets(ds.y[:, 0].astype(np.int64) if qnet.loss == fixed.SOFTMAX_CE
                            else ds.y)


# -- a command's net and data --


@dataclass
class Prepared:
    qnet: QuantNet
    hyper: Hyper
    net_from: str  # where the net came from, for the report
    data: Dataset
    val: Dataset | None = None
    demo: bool = False


def n_targets(loss: int | str, n_out: int) -> int:
    return 1 if loss in (fixed.SOFTMAX_CE, "softmax_ce") else n_out


def prepare(args: argparse.Namespace, overrides: dict | None = None,
            hidden: list[int] | None = None, val_path: str | None = None) -> Prepared:
    """The net and the data of a command, checked against each other: from --net (a .ebp),
    --spec (quantised, calibrated on the data), or a spec inferred from the data; with no
    net and no data, the built-in XOR example. `overrides`: Hyper fields to replace."""
    overrides = overrides or {}
    demo = args.data is None and args.net is None and args.spec is None
    if args.data is None and not demo:
        raise UserError(f"{'--net' if args.net else '--spec'} needs --data DATA.csv|.npz "
                        "(the built-in XOR data fits only the built-in net)")
    if args.net:
        qnet, hyper, data = _net_from_file(args, overrides)
        net_from = args.net
    else:
        qnet, hyper, data, net_from = _net_from_spec(args, overrides, hidden, demo)
    val = None
    if val_path:
        val = read_data(val_path, args, n_targets(qnet.loss, qnet.sizes[-1]),
                        qnet.classes or data.classes)
        check_net_data(val, qnet, qnet.classes or data.classes, net_from)
        check_inputs(val, *declared_range(qnet), args.out_of_range, declared_range(qnet, True))
    if data.classes and not qnet.classes:
        qnet = replace(qnet, classes=list(data.classes))
    try:
        ebpfile.hyper_block(hyper)
    except EbpError as e:
        raise UserError(f"a board cannot take these settings: {e}") from None
    check_lr(qnet, hyper, net_from)
    prove_safe(qnet, hyper, [d for d in (data, val) if d is not None])
    return Prepared(qnet, hyper, net_from, data, val, demo)


def _net_from_file(args: argparse.Namespace, overrides: dict) -> tuple[QuantNet, Hyper,
                                                                       Dataset]:
    qnet, file_hyper = read_net(args.net)
    hyper = replace(file_hyper or Hyper(), **overrides)
    data = read_data(args.data, args, n_targets(qnet.loss, qnet.sizes[-1]), qnet.classes)
    check_net_data(data, qnet, qnet.classes, args.net)
    check_inputs(data, *declared_range(qnet), args.out_of_range, declared_range(qnet, True))
    qnet, hyper = with_optimizer(qnet, hyper, optimizer_args(args), "lr" in overrides, args.net,
                                 data)
    return qnet, hyper, data


def _net_from_spec(args: argparse.Namespace, overrides: dict, hidden: list[int] | None,
                   demo: bool) -> tuple[QuantNet, Hyper, Dataset, str]:
    if args.spec:
        spec = read_spec(args.spec)
        data = read_data(args.data, args, n_targets(spec.loss, spec.sizes[-1]), spec.classes)
        d, net_from = spec.to_dict(), args.spec
    elif demo:
        data, d, net_from = datafile.xor(), dict(datafile.XOR_SPEC), "built-in XOR"
    else:
        data = read_data(args.data, args)
        task = getattr(args, "task", None)
        try:
            d = datafile.infer_spec(data, hidden or [16], task)
        except DataError as e:
            raise UserError(str(e)) from None
        why = "as --task says" if task else "inferred: " + datafile.infer_task(data)[1]
        kind = "regression" if d["loss"] == "mse" else "classification"
        net_from = f"{kind}, {why}; edgebp init --data writes it as a spec to edit"
    spec_opt = d.get("optimizer", {})
    spec_opt = dict({"name": spec_opt} if isinstance(spec_opt, str) else spec_opt)
    opt = optimizer_args(args)
    if opt:
        old = spec_opt.get("name", "sgd")
        name = opt.get("name", old)
        if name != old:
            # the spec's rate and momentum are the other optimiser's
            if "lr" not in overrides:
                spec_opt.pop("lr", None)
            for key in ("momentum", "beta1", "beta2", "mu", "gamma"):
                spec_opt.pop(key, None)
        check_settings(str(name), opt)
        spec_opt.update(opt)
    d["optimizer"] = {**spec_opt, **overrides}
    if "batch" in overrides:
        d["batch_max"] = max(d.get("batch_max", 1), overrides["batch"])
    try:
        spec = parse_spec(d)
    except SpecError as e:
        raise UserError(f"{net_from}: {e}") from None
    check_data(data, spec.sizes, spec.loss_code, None)
    lo, hi = np.array(spec.input_min), np.array(spec.input_max)
    # the quantiser maps the declared range to [-1, 1] in Q(IN_SHIFT): int16 holds +-2
    reach = fixed.Q_MAX * 2.0**-IN_SHIFT * (hi - lo) / 2
    check_inputs(data, lo, hi, args.out_of_range, ((lo + hi) / 2 - reach, (lo + hi) / 2 + reach))
    qnet = quantize_spec(spec, calib=data, context=f"{net_from}: ")
    check_net_data(data, qnet, qnet.classes or data.classes, net_from)
    return qnet, spec.hyper(), data, net_from


def check_inputs(ds: Dataset, lo: np.ndarray, hi: np.ndarray, mode: str,
                 held: tuple[np.ndarray, np.ndarray] | None) -> None:
    try:
        note = datafile.check_inputs(ds, lo, hi, mode, held)
    except DataError as e:
        raise UserError(str(e)) from None
    if note:
        warn(note)


def check_data(ds: Dataset, sizes: list[int], loss: int, out_shift: int | None,
               out_norm: tuple | None = None) -> None:
    try:
        datafile.check_width(ds, sizes[0])
        datafile.check_targets(ds, loss, sizes[-1], out_shift if loss == fixed.MSE else None,
                               out_norm)
    except DataError as e:
        raise UserError(str(e)) from None


def check_net_data(ds: Dataset, qnet: QuantNet, classes: list[str], what: str) -> None:
    """A dataset against a quantised net: input width, label kind, targets in range."""
    check_labels(ds, classes, qnet.loss, qnet.sizes[-1], what)
    out_norm = (qnet.out_offset, qnet.out_scale) if qnet.scales_targets else None
    check_data(ds, qnet.sizes, qnet.loss, qnet.shift_a[-1], out_norm)


def check_labels(ds: Dataset, classes: list[str], loss: int, n_out: int, what: str) -> None:
    """Class names for a net that knows classes by name, numbers for one that does not:
    taking one for the other would map the labels to the wrong classes without a word."""
    if ds.classes and not classes:
        takes = (f"class indices 0..{n_out - 1}" if loss == fixed.SOFTMAX_CE else
                 "numbers (targets 0 or 1)" if loss == fixed.BCE else "numbers")
        raise UserError(f"{ds.name}: the labels are class names ({_some(ds.classes)}), but "
                        f"{what} has none: it takes {takes}; give the labels as numbers, or "
                        "train a net whose spec names the classes (\"classes\")")
    if classes and not ds.classes and loss == fixed.SOFTMAX_CE:
        raise UserError(f"{ds.name}: the labels are numbers, but {what} knows its classes by "
                        f"name ({_some(classes)}): give the labels by name, as in the data "
                        "it was trained on")


def _some(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def prove_safe(qnet: QuantNet, hyper: Hyper, sets: list[Dataset]) -> None:
    """The range analysis for these hyper-parameters and the inputs these data sets hold
    (with --out-of-range warn they may lie beyond the range the net was quantised for)."""
    lo, hi = declared_range(qnet)
    q = qnet.quantize_inputs(np.array([lo, hi]))
    x_lo, x_hi = int(q.min()), int(q.max())
    for ds in sets:
        xq = qnet.quantize_inputs(ds.X)
        x_lo, x_hi = min(x_lo, int(xq.min())), max(x_hi, int(xq.max()))
    try:
        check_ranges(qnet, hyper, x_range=(x_lo, x_hi))
    except RangeError as e:
        raise range_refusal(e, "the net refuses these settings or inputs: ") from None


def targets(qnet: QuantNet, ds: Dataset) -> np.ndarray:
    return qnet.quantize_targets(ds.y[:, 0] if qnet.loss == fixed.SOFTMAX_CE else ds.y)


# -- writing --


def net_bytes(qnet: QuantNet, hyper: Hyper | None) -> bytes:
    try:
        return ebpfile.to_bytes(qnet, hyper)
    except EbpError as e:
        raise UserError(f"a net file cannot hold this net: {e}") from None


def write_net(path: str, qnet: QuantNet, hyper: Hyper | None) -> None:
    """A .ebp file (the quantised net) or an .npz (its float weights on raw inputs)."""
    try:
        if Path(path).suffix.lower() == ".npz":
            datafile.save_weights(path, qnet)
        else:
            Path(path).write_bytes(net_bytes(qnet, hyper))
    except DataError as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"{path}: {e.strerror or e}") from None
