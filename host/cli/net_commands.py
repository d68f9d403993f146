"""`edgebp init`, `quantize` and `plan`: a net from a spec, its formats, its RAM.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from edgebp.host.cli import data as datafile
from edgebp.host.cli.data import DataError
from edgebp.host.cli.workload import (
    UserError,
    check_data,
    check_output,
    check_settings,
    check_suffix,
    n_targets,
    net_bytes,
    optimizer_args,
    quantize_spec,
    read_data,
    read_net,
    read_spec,
    warn,
    write_net,
)
from edgebp.host.nets import planner
from edgebp.host.nets.quantize import declared_input_range, formats_table, requantize
from edgebp.host.nets.ranges import check_ranges
from edgebp.host.nets.spec import SpecError, parse_spec, save_spec

if TYPE_CHECKING:
    pass



from edgebp.host.cli.common import (
    State,
    describe_board,
    describe_hyper,
    describe_net,
    end_session,
    open_session,
)

# -- init --


_OUTPUT_ACT = {"softmax_ce": "softmax", "bce": "sigmoid", "mse": "identity"}


def _init_task(args: argparse.Namespace, ds) -> tuple[str, str]:
    """(task, how it was decided) for init --data: --task, else what --loss implies, else
    inferred from the targets."""
    implied = None if args.loss is None else ("regression" if args.loss == "mse"
                                              else "classification")
    if args.task and implied and args.task != implied:
        raise UserError(f"--task {args.task} and --loss {args.loss} disagree: a regression "
                        "trains with mse, a classification with softmax_ce or bce")
    if args.task:
        return args.task, "as --task says"
    if implied:
        return implied, f"as --loss {args.loss} says"
    task, why = datafile.infer_task(ds)
    other = "classification" if task == "regression" else "regression"
    return task, f"inferred from the targets: {why}; --task {other} says otherwise"


def do_init(state: State, args: argparse.Namespace) -> int:
    path = Path(args.spec)
    if path.exists() and not args.force:
        raise UserError(f"{path} exists: --force overwrites it")
    check_output(str(path))
    ds = task = None
    if args.data:
        ds = read_data(args.data, args)
        task, how = _init_task(args, ds)
        try:
            d = datafile.infer_spec(ds, args.hidden, task)
        except DataError as e:
            raise UserError(str(e)) from None
        origin = f"from {args.data}"
    elif args.sizes:
        if args.task:
            raise UserError("--task is for --data (the targets it describes)")
        d = {"input_range": {"min": 0, "max": 1}, "optimizer": {"lr": 0.05}}
        origin = "input range 0..1 unless given"
    else:
        if args.task:
            raise UserError("--task is for --data (the targets it describes)")
        d = json.loads(json.dumps(datafile.XOR_SPEC))
        origin = "the built-in XOR example"
    regression = task == "regression"
    if args.sizes:
        if regression and args.sizes[-1] != 1:
            raise UserError(f"a regression on the one target column of {args.data} needs 1 "
                            f"output, not {args.sizes[-1]} (--sizes)")
        d["sizes"] = args.sizes
    if args.loss or args.sizes:
        d["loss"] = args.loss or ("mse" if regression else
                                  "softmax_ce" if d["sizes"][-1] > 1 else "bce")
        if d["loss"] != "mse":
            d.pop("target_range", None)
            d.pop("normalise_targets", None)
    if args.activations:
        d["activations"] = args.activations
    elif args.sizes or args.loss:
        hidden = "tanh" if regression else "relu"
        d["activations"] = [hidden] * (len(d["sizes"]) - 2) + [_OUTPUT_ACT[d["loss"]]]
    if d.get("normalise_targets") and d["activations"][-1:] != ["identity"]:
        d.pop("normalise_targets")  # mapped back linearly: only for an identity output
    for end in ("min", "max"):
        value = getattr(args, f"input_{end}")
        if value is not None:
            d["input_range"][end] = value[0] if len(value) == 1 else value
    if args.integer_inputs:
        # raw integers on the board: the declared range widened to whole numbers
        for end, fn in (("min", math.floor), ("max", math.ceil)):
            v = d["input_range"][end]
            d["input_range"][end] = [int(fn(e)) for e in v] if isinstance(v, list) \
                else int(fn(v))
        d["integer_inputs"] = True
    opt = d.setdefault("optimizer", {})
    for key in ("lr", "batch", "momentum"):
        if getattr(args, key) is not None:
            opt[key] = getattr(args, key)
    chosen = optimizer_args(args)
    name = chosen.get("name", opt.get("name", "sgd"))
    if name != opt.get("name", "sgd"):
        if args.lr is None:
            opt.pop("lr", None)  # the other optimiser's rate: the spec's default for this one
        for key in ("beta1", "beta2", "mu", "gamma"):
            opt.pop(key, None)  # the other optimiser's settings
    check_settings(name, chosen)
    opt.update(chosen)
    if "batch" in opt:
        d["batch_max"] = max(d.get("batch_max", 1), opt["batch"])
    if args.weight_growth is not None:
        d["weight_growth"] = args.weight_growth
    try:
        spec = parse_spec(d)
    except SpecError as e:
        raise UserError(f"the spec would be wrong: {e}") from None
    if ds is not None:
        check_data(ds, spec.sizes, spec.loss_code, None)
    try:  # what quantising it would warn of (a learning rate too large), said now
        quantize_spec(spec, calib=ds, context=f"{path}: ")
    except UserError as e:
        warn(f"as it stands the net cannot be quantised: {e}")
    if ds is not None:
        print(f"task      {task}, {how}")
        if spec.target_min is not None and spec.target_max is not None:
            span = ", ".join(f"{a:g} to {b:g}" for a, b in
                             sorted(set(zip(spec.target_min, spec.target_max, strict=True))))
            inside = (", mapped to [-1, 1] inside the net; outputs, RMSE and R^2 in the "
                      "targets' units" if spec.normalise_targets else "")
            print(f"targets   {span}{inside}")
    try:
        save_spec(spec, path)
    except OSError as e:
        raise UserError(f"{path}: {e.strerror or e}") from None
    acts = "/".join(spec.activations)
    print(f"wrote {path}: {'-'.join(map(str, spec.sizes))} {acts}, {spec.loss} loss, "
          f"{describe_hyper(spec.hyper(), spec.adam, spec.sdlm)} ({origin})")
    print(f"next: edgebp quantize {path} -o net.ebp" + (f" --calib {args.data}" if args.data
                                                       else ""))
    return 0


# -- quantize --


def range_summary(report) -> str:
    return (f"range analysis: {len(report.bounds)} intermediates of the core bounded for any "
            "int16 weights and inputs in the declared range; none leaves int16 or the 31-bit "
            "small ints (--table lists them)")


def do_quantize(state: State, args: argparse.Namespace) -> int:
    check_suffix(args.output, (".ebp",), "the quantised net")
    if args.spec.lower().endswith(".ebp"):
        return quantize_into(args)
    spec = read_spec(args.spec)
    calib = None
    if args.calib:
        calib = read_data(args.calib, args, n_targets(spec.loss, spec.sizes[-1]), spec.classes)
        check_data(calib, spec.sizes, spec.loss_code, None)
    Ws = Bs = None
    if args.weights:
        try:
            Ws, Bs = datafile.load_weights(args.weights, spec.sizes)
        except DataError as e:
            raise UserError(str(e)) from None
    qnet = quantize_spec(spec, Ws, Bs, calib, context=f"{args.spec}: ")
    report = check_ranges(qnet, spec.hyper(), x_range=declared_input_range(qnet, spec))
    net_bytes(qnet, spec.hyper())  # refuse before printing what would not be written
    print(formats_table(qnet))
    print(report.table() if args.table else range_summary(report))
    write_net(args.output, qnet, spec.hyper())
    print(f"wrote {args.output}: {describe_net(qnet)}, "
          f"{describe_hyper(spec.hyper(), spec.adam, qnet.sdlm)}")
    return 0


def quantize_into(args: argparse.Namespace) -> int:
    """Float weights into the formats of a net file: what a board trained, pulled as floats,
    comes back to the same int16 weights."""
    if not args.weights:
        raise UserError(f"quantize {args.spec} needs --weights FLOAT.npz: a net file gives "
                        "the formats, the weights come from the .npz")
    if args.calib:
        raise UserError("--calib sets new formats: with a net file its own formats are kept")
    like, hyper = read_net(args.spec)
    try:
        Ws, Bs = datafile.load_weights(args.weights, like.sizes)
    except DataError as e:
        raise UserError(str(e)) from None
    try:
        qnet = requantize(like, Ws, Bs, raw_inputs=True)
    except ValueError as e:
        raise UserError(f"{args.weights}: {e} (the formats of {args.spec})") from None
    net_bytes(qnet, hyper)
    write_net(args.output, qnet, hyper)
    print(f"wrote {args.output}: {describe_net(qnet)}, the formats of {args.spec}")
    return 0




def do_plan(state: State, args: argparse.Namespace) -> int:
    qnet = read_net(args.net)[0] if args.net else None
    if qnet is None and args.sizes is None:
        raise UserError("give a net (--net NET.ebp or --spec SPEC.json) or --sizes 64,32,10")
    if qnet is None and args.spec:
        qnet = quantize_spec(read_spec(args.spec))
    if args.port or args.sim:
        if qnet is None:
            raise UserError("a plan against a board needs the net: --net or --spec")
        session = open_session(state, args)
        p = planner.plan_for(qnet, session.info)
        print(f"board     {describe_board(state)}")
        end_session(state, args)
    elif qnet is not None:
        p = planner.plan(qnet.sizes, momentum=qnet.momentum, loss=qnet.loss, word=args.word,
                         adam=qnet.adam is not None, sdlm=qnet.sdlm is not None)
    else:
        if args.momentum and args.adam:
            raise UserError("--momentum and --adam: Adam takes the place of momentum")
        if args.momentum and args.sdlm:
            raise UserError("--momentum and --sdlm: SDLM takes the place of momentum")
        if args.adam and args.sdlm:
            raise UserError("--adam and --sdlm: a net has one optimiser")
        p = planner.plan(args.sizes, momentum=args.momentum, word=args.word, adam=args.adam,
                         sdlm=args.sdlm)
    print(p.table())
    if p.free is not None and not p.fits(p.free):
        return 1
    return 0
