"""What each `edgebp` command does: `do_x(state, args)`, from the table in host/cli.py.

A handler opens what it needs through `state` (a session with a board, a simulated board),
prints its report on stdout (warnings and the progress bar on stderr) and returns the exit
code; it raises `UserError` for a problem the user can fix, while a failing board or link
raises `SessionError` from host/session.py. `main()` closes `state` whatever happens.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from array import array
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgebp import fixed

from . import data as datafile, planner
from .data import DataError, Dataset
from .progress import Bar
from .qnet import Hyper, QuantNet
from .quantize import declared_input_range, formats_table, requantize
from .ranges import check_ranges
from .reference import epoch_order
from .session import Session, SessionError
from .spec import SpecError, parse_spec, save_spec
from .validate import compare_gradients, core_gradients
from .workload import (
    UserError,
    check_data,
    check_suffix,
    declared_range,
    n_targets,
    net_bytes,
    prepare,
    quantize_spec,
    read_data,
    read_net,
    read_spec,
    targets,
    write_net,
)

if TYPE_CHECKING:
    from .sim import InProcessBoard, MicroPythonBoard

__all__ = ["UserError", "State"]


class State:
    """What a command opened (a session with a board, a simulated board); `main()` always
    closes it."""

    def __init__(self) -> None:
        self.session: Session | None = None
        self.where = ""  # the port, or which simulator
        self.board: InProcessBoard | MicroPythonBoard | None = None

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
        if self.board is not None:
            if hasattr(self.board, "kill"):
                self.board.kill()
            self.board.close()
            self.board = None


# -- boards --


SIMS = {"inprocess": "sim://", "micropython": "sim://micropython", "socket": "sim://socket"}
SIM_NAMES = {"sim://": "simulated in this process", "sim://cpython": "simulated in this process",
             "sim://micropython": "simulated: MicroPython unix port",
             "sim://socket": "simulated in this process, over TCP"}


def open_session(state: State, args: argparse.Namespace) -> Session:
    if args.port:
        port = args.port
    else:
        port = SIMS[args.sim or "inprocess"]
    simulated = port.startswith("sim://")
    if args.keep and simulated:
        raise UserError("--keep needs --port: a simulated board this command starts ends "
                        "with it (`edgebp sim` starts one that stays)")
    state.session = Session(port, start=not simulated)
    state.where = SIM_NAMES.get(port, port)
    return state.session


def end_session(state: State, args: argparse.Namespace) -> None:
    if state.session is not None and not getattr(args, "keep", False):
        state.session.bye()
    state.close()


def describe_board(state: State) -> str:
    assert state.session is not None
    i = state.session.info
    return f"{i.board}, {i.runtime}, firmware {i.firmware} ({state.where})"


def describe_net(qnet: QuantNet) -> str:
    params = sum(qnet.sizes[l] * qnet.sizes[l + 1] + qnet.sizes[l + 1] for l in range(qnet.L))
    acts = "/".join(fixed.ACT_NAMES[a] for a in qnet.acts)
    return (f"{'-'.join(map(str, qnet.sizes))} {acts}, {fixed.LOSS_NAMES[qnet.loss]} loss, "
            f"{params} parameters")


def describe_hyper(h: Hyper) -> str:
    text = f"lr {h.lr:g}, batch {h.batch}"
    if h.momentum:
        text += f", momentum {h.momentum:g}"
    if h.weight_decay:
        text += f", weight decay {h.weight_decay:g}"
    if h.rounding != "nearest":
        text += f", {h.rounding} rounding"
    return text


# -- init --


_OUTPUT_ACT = {"softmax_ce": "softmax", "bce": "sigmoid", "mse": "identity"}


def do_init(state: State, args: argparse.Namespace) -> int:
    path = Path(args.spec)
    if path.exists() and not args.force:
        raise UserError(f"{path} exists: --force overwrites it")
    if args.data:
        ds = read_data(args.data, args)
        d = datafile.infer_spec(ds, args.hidden)
        origin = f"from {args.data}"
    elif args.sizes:
        d = {"input_range": {"min": 0, "max": 1}, "optimizer": {"lr": 0.05}}
        origin = "input range 0..1 unless given"
    else:
        d = json.loads(json.dumps(datafile.XOR_SPEC))
        origin = "the built-in XOR example"
    if args.sizes:
        d["sizes"] = args.sizes
    if args.loss or args.sizes:
        d["loss"] = args.loss or ("softmax_ce" if d["sizes"][-1] > 1 else "bce")
        d.pop("target_range", None)
    if args.activations:
        d["activations"] = args.activations
    elif args.sizes or args.loss:
        d["activations"] = ["relu"] * (len(d["sizes"]) - 2) + [_OUTPUT_ACT[d["loss"]]]
    for end in ("min", "max"):
        value = getattr(args, f"input_{end}")
        if value is not None:
            d["input_range"][end] = value[0] if len(value) == 1 else value
    opt = d.setdefault("optimizer", {})
    for key in ("lr", "batch", "momentum"):
        if getattr(args, key) is not None:
            opt[key] = getattr(args, key)
    if "batch" in opt:
        d["batch_max"] = max(d.get("batch_max", 1), opt["batch"])
    if args.weight_growth is not None:
        d["weight_growth"] = args.weight_growth
    try:
        spec = parse_spec(d)
    except SpecError as e:
        raise UserError(f"the spec would be wrong: {e}") from None
    try:
        save_spec(spec, path)
    except OSError as e:
        raise UserError(f"{path}: {e.strerror or e}") from None
    acts = "/".join(spec.activations)
    print(f"wrote {path}: {'-'.join(map(str, spec.sizes))} {acts}, {spec.loss} loss, "
          f"{describe_hyper(spec.hyper())} ({origin})")
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
    print(f"wrote {args.output}: {describe_net(qnet)}, {describe_hyper(spec.hyper())}")
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


# -- train --


def _shown(epoch: int, epochs: int) -> bool:
    step = max(1, epochs // 10)
    return epoch == 0 or (epoch + 1) % step == 0 or epoch == epochs - 1


def _curve_files(args: argparse.Namespace) -> tuple[str | None, str | None]:
    if not args.curves:
        if args.plot:
            raise UserError("--plot needs --curves FILE.csv")
        return None, None
    suffix = check_suffix(args.curves, (".csv", ".png"), "--curves")
    csv_path = args.curves if suffix == ".csv" else None
    png_path = args.curves if suffix == ".png" else None
    if args.plot and csv_path:
        png_path = str(Path(csv_path).with_suffix(".png"))
    if png_path:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UserError(f"{png_path}: a plot needs matplotlib (pip install matplotlib)"
                            ) from None
    return csv_path, png_path


def write_curves(rows: list[dict], csv_path: str | None, png_path: str | None) -> None:
    keys = list(rows[0])
    try:
        if csv_path:
            with open(csv_path, "w") as f:
                f.write(",".join(keys) + "\n")
                for r in rows:
                    f.write(",".join(str(r[k]) for k in keys) + "\n")
        if png_path:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
            epochs = [r["epoch"] for r in rows]
            for prefix, label in (("", "training"), ("val_", "held-out")):
                if f"{prefix}loss" in keys:
                    ax_loss.plot(epochs, [r[f"{prefix}loss"] for r in rows], label=label)
                    ax_acc.plot(epochs, [r[f"{prefix}accuracy"] for r in rows], label=label)
            ax_loss.set(xlabel="epoch", ylabel="loss (mean per sample)")
            ax_acc.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
            ax_acc.legend(loc="lower right")
            fig.tight_layout()
            fig.savefig(png_path, dpi=100)
            plt.close(fig)
    except OSError as e:
        raise UserError(f"{e.filename}: {e.strerror or e}") from None


def xor_table(qnet: QuantNet, ds: Dataset) -> list[str]:
    """The trained net's outputs on the XOR samples, computed by the core under CPython (the
    board's arithmetic, bit for bit)."""
    net = qnet.build()
    rows = ["  x1  x2  target  output"]
    for x, xq, t in zip(ds.X, qnet.quantize_inputs(ds.X), ds.y[:, 0], strict=True):
        net.forward(array("h", xq.astype("<i2").tobytes()))
        out = net.A[qnet.L][0] / (1 << fixed.A_SHIFT_SQUASH)
        rows.append(f"  {x[0]:2g}  {x[1]:2g}  {t:6g}  {out:6.3f}")
    return rows


def do_train(state: State, args: argparse.Namespace) -> int:
    for path in args.out:
        check_suffix(path, (".ebp", ".npz"), "--out")
    csv_path, png_path = _curve_files(args)
    overrides = {k: getattr(args, k) for k in ("lr", "batch", "seed")
                 if getattr(args, k) is not None}
    p = prepare(args, overrides, args.hidden, args.val)
    qnet, hyper, ds = p.qnet, p.hyper, p.data
    epochs = args.epochs or (200 if p.demo else 20)
    seed = hyper.seed
    Xq, Tq = qnet.quantize_inputs(ds.X), targets(qnet, ds)

    session = open_session(state, args)
    print(f"board     {describe_board(state)}")
    print(f"net       {describe_net(qnet)} ({p.net_from})")
    print(f"data      {len(ds)} samples ({ds.name})"
          + (f", held out: {len(p.val)} ({p.val.name})" if p.val is not None else ""))
    order_text = f"shuffled with seed {seed}" if args.shuffle else "in file order"
    print(f"training  {epochs} epoch{'s' if epochs > 1 else ''}, {describe_hyper(hyper)}, "
          f"{order_text}")
    first, skip = 0, 0
    if args.resume:
        first, skip = resume_training(session, qnet, len(ds), epochs)
    else:
        session.load(qnet, hyper)
    checkpoints = args.resume or args.checkpoint_every is not None
    if args.checkpoint_every is not None:
        session.checkpoint(every=args.checkpoint_every, now=False)
        print(f"checkpoints every {args.checkpoint_every} weight update"
              f"{'s' if args.checkpoint_every != 1 else ''} on the board's filesystem")
    head = f"{'epoch':>6}  {'loss':>8}  {'accuracy':>8}"
    if p.val is not None:
        head += f"  {'val loss':>8}  {'val acc':>8}"
        Xv, Tv = qnet.quantize_inputs(p.val.X), targets(qnet, p.val)
    print(head, flush=True)

    bar = Bar(epochs)
    rows = []
    elapsed = 0.0  # training only, evaluation aside
    samples = 0
    for epoch in range(first, epochs):
        bar.begin_epoch(epoch)
        order = epoch_order(len(ds), seed, epoch) if args.shuffle else np.arange(len(ds))
        if epoch == first and skip:
            order = order[skip:]  # learned before the board's reset
        start = time.monotonic()
        try:
            r = session.train(Xq, Tq, order, update=True, progress=bar.update,
                              resume=checkpoints)
        except SessionError as e:
            if not checkpoints:
                raise
            raise SessionError(f"{e}; the board keeps its last checkpoint: run the same "
                               "command with --resume to go on from it") from e
        elapsed += time.monotonic() - start
        samples += len(order)
        bar.end_epoch(r.samples, r.loss, r.accuracy)
        row = {"epoch": epoch + 1, "loss": round(r.loss, 6), "accuracy": round(r.accuracy, 6)}
        line = f"{epoch + 1:6}  {r.loss:8.4f}  {100 * r.accuracy:7.1f}%"
        if p.val is not None:
            v = session.evaluate(Xv, Tv)
            row.update(val_loss=round(v.loss, 6), val_accuracy=round(v.accuracy, 6))
            line += f"  {v.loss:8.4f}  {100 * v.accuracy:7.1f}%"
        rows.append(row)
        if _shown(epoch, epochs):
            bar.message(line)
    bar.clear()
    trained = session.pull()
    end_session(state, args)

    print(f"trained on {samples} samples in {elapsed:.2f} s ({samples / max(elapsed, 1e-9):,.0f} "
          "samples/s through the link)")
    if p.val is not None and rows:
        last = rows[-1]
        print(f"held out  {len(p.val)} samples: loss {last['val_loss']:.4f}, accuracy "
              f"{100 * last['val_accuracy']:.1f}%")
    if p.demo:
        print("the board's trained net on XOR:")
        print("\n".join(xor_table(trained, ds)))
    for path in args.out:
        write_net(path, trained, hyper)
        kind = "float weights" if path.lower().endswith(".npz") else "quantised net"
        print(f"wrote {path} ({kind})")
    if csv_path or png_path:
        write_curves(rows, csv_path, png_path)
        print(f"wrote {', '.join(f for f in (csv_path, png_path) if f)} (training curves)")
    return 0


# -- eval --


def resume_training(session: Session, qnet: QuantNet, n: int, epochs: int) -> tuple[int, int]:
    """Bring the board's newest checkpoint back; (epoch, sample within it) to go on from."""
    ck = session.resume()
    info = session.info
    if list(info.sizes or []) != list(qnet.sizes) or info.loss != qnet.loss:
        held = "-".join(map(str, info.sizes or []))
        raise UserError(f"the board's checkpoint holds a {held} net, not the "
                        f"{'-'.join(map(str, qnet.sizes))} net given: give the net it was "
                        "trained from")
    if ck.samples > epochs * n:
        raise UserError(f"the board's checkpoint is at sample {ck.samples}, past the "
                        f"{epochs} x {n} samples asked for: same --data and --epochs as the "
                        "run it resumes")
    session.qnet = qnet
    epoch, skip = divmod(ck.samples, n)
    print(f"resumed   checkpoint {ck.gen} of the board: {ck.samples} samples learned, going "
          f"on at epoch {epoch + 1}, sample {skip + 1}")
    return epoch, skip


def do_eval(state: State, args: argparse.Namespace) -> int:
    if args.data is None:
        raise UserError("eval needs --data DATA.csv|.npz")
    p = prepare(args)
    qnet, ds = p.qnet, p.data
    session = open_session(state, args)
    board = describe_board(state)
    session.load(qnet, p.hyper)
    r = session.evaluate(qnet.quantize_inputs(ds.X), targets(qnet, ds))
    end_session(state, args)
    correct = round(r.accuracy * r.samples)
    if args.json:
        print(json.dumps({"board": board, "net": p.net_from, "data": ds.name,
                          "samples": r.samples, "loss": r.loss, "accuracy": r.accuracy,
                          "correct": correct}))
        return 0
    print(f"board     {board}")
    print(f"net       {describe_net(qnet)} ({p.net_from})")
    print(f"data      {len(ds)} samples ({ds.name})")
    print(f"loss {r.loss:.4f}, accuracy {100 * r.accuracy:.1f}% ({correct} of {r.samples})")
    return 0


# -- check --


def random_samples(qnet: QuantNet, n: int, seed: int) -> Dataset:
    """Inputs uniform over the declared range and random targets: gradients far from any
    minimum, where their errors are measured best (host/validate.py)."""
    rng = np.random.default_rng(seed)
    lo, hi = declared_range(qnet)
    X = rng.uniform(lo, hi, (n, qnet.sizes[0]))
    n_out = qnet.sizes[-1]
    if qnet.loss == fixed.SOFTMAX_CE:
        y = rng.integers(0, n_out, (n, 1)).astype(np.float64)
    elif qnet.loss == fixed.BCE:
        y = rng.integers(0, 2, (n, n_out)).astype(np.float64)
    else:  # a quarter of what the output format holds: targets the net can reach
        lim = fixed.Q_MAX * 2.0 ** -qnet.shift_a[-1] / 4
        y = rng.uniform(-lim, lim, (n, n_out))
    return Dataset(X, y, f"random, in the declared input range, seed {seed}", [], [])


def board_gradients(session: Session, qnet: QuantNet, hyper: Hyper, Xq, Tq):
    """The board's gradient sums over all samples: accumulate-only TRAIN of batch_max samples
    at a time (what its sums are guarded for), read, then a fresh load to zero them."""
    GW = [np.zeros((qnet.sizes[l + 1], qnet.sizes[l]), np.int64) for l in range(qnet.L)]
    GB = [np.zeros(qnet.sizes[l + 1], np.int64) for l in range(qnet.L)]
    for i in range(0, len(Xq), qnet.batch_max):
        if i:
            session.load(qnet, hyper)
        session.train(Xq[i:i + qnet.batch_max], Tq[i:i + qnet.batch_max], accumulate=True)
        gw, gb = session.get_grads()
        for l in range(qnet.L):
            GW[l] += gw[l]
            GB[l] += gb[l]
    return GW, GB


def do_check(state: State, args: argparse.Namespace) -> int:
    p = prepare(args)
    qnet = p.qnet
    if args.data is None:
        ds = random_samples(qnet, args.samples, args.seed)
    else:
        ds = p.data.subset(epoch_order(len(p.data), args.seed, 0)[:args.samples])
        ds.name = f"{p.data.name}, chosen with seed {args.seed}"
    Xq, Tq = qnet.quantize_inputs(ds.X), targets(qnet, ds)

    session = open_session(state, args)
    board = describe_board(state)
    session.load(qnet, p.hyper)
    GW, GB = board_gradients(session, qnet, p.hyper, Xq, Tq)
    end_session(state, args)

    cw, cb, count, sides = core_gradients(qnet, Xq, Tq)
    differ = [l + 1 for l in range(qnet.L)
              if not (np.array_equal(GW[l], cw[l]) and np.array_equal(GB[l], cb[l]))]
    report = compare_gradients(qnet, GW, GB, count, Xq, Tq, sides)
    ok = report.ok and not differ
    if args.json:
        print(json.dumps({"board": board, "net": p.net_from, "data": ds.name,
                          "bit_identical_to_core": not differ, "layers_differing": differ,
                          "ok": ok, "validation": report.to_dict()}))
        return 0 if ok else 1
    print(f"board     {board}")
    print(f"net       {describe_net(qnet)} ({p.net_from})")
    print(f"data      {len(ds)} samples ({ds.name})")
    if differ:
        print(f"the board's gradient sums DIFFER from the core's (CPython) in layer "
              f"{', '.join(map(str, differ))}")
    else:
        print("the board's gradient sums equal the core's (CPython), bit for bit")
    print("against the float64 reference:")
    print(report.table())
    return 0 if ok else 1


# -- pull --


def do_pull(state: State, args: argparse.Namespace) -> int:
    check_suffix(args.output, (".npz", ".ebp"), "the output")
    qnet, hyper = read_net(args.net)
    if not args.port and not args.sim:
        args.port = "auto"
    session = open_session(state, args)
    info, port = session.info, session.port
    problem = None
    if not info.sizes:
        problem = (f"the board on {port} holds no net: a board forgets its net when a session "
                   "ends (edgebp train --keep leaves it serving)")
    elif list(info.sizes) != list(qnet.sizes) or info.loss != qnet.loss:
        board_net = f"{'-'.join(map(str, info.sizes))} {fixed.LOSS_NAMES[info.loss or 0]}"
        problem = (f"the board holds a {board_net} net, {args.net} is "
                   f"{'-'.join(map(str, qnet.sizes))} {fixed.LOSS_NAMES[qnet.loss]}")
    else:
        Ws, Bs = session.get_weights()
    end_session(state, args)  # the board back at its REPL (or left serving, with --keep)
    if problem:
        raise UserError(problem)
    write_net(args.output, replace(qnet, W=Ws, B=Bs), hyper)
    print(f"pulled the board's weights ({describe_net(qnet)}); wrote {args.output}")
    return 0


# -- deploy, plan, bench --


def do_deploy(state: State, args: argparse.Namespace) -> int:
    from . import board as mb

    qnet = read_net(args.net)[0] if args.net else None
    if args.arch is not None:
        if not args.dry_run:
            raise UserError("--arch is for --dry-run without a board: a deploy compiles for "
                            "the architecture the board reports")
        arch = None if args.arch == "none" else args.arch
        plan = mb.plan_deploy(arch, compiled=not args.source)
        print(f"files for {args.arch}"
              + ("" if args.source else f", compiled by {mb.mpy_cross_version()}") + ":")
        for item in plan.items:
            print(f"  {item.dest:<28}  {len(item.data):>6} B")
        for note in plan.skipped:
            print(f"  left off: {note}")
        print(f"{len(plan.items)} files, {sum(len(i.data) for i in plan.items):,} bytes")
        return 0
    with mb.Board(args.port or "auto") as board:
        before = board.facts()
        print(f"board     {before.describe()} on {board.port}")
        if not args.source:
            mb.check_mpy(before)
        plan = mb.plan_deploy(before.arch, compiled=not args.source)
        what = "sources" if args.source else f"compiled by {mb.mpy_cross_version()}"
        print(f"files     {len(plan.items)} for {before.arch or 'bytecode only'}, {what}, into "
              f"{before.cwd.rstrip('/')}/edgebp" + (" (dry run: nothing changes)"
                                                    if args.dry_run else ""))
        report = mb.deploy(board, plan, dry_run=args.dry_run, force=args.force)
        for note in plan.skipped:
            print(f"  left off: {note}")
        after = board.facts()
    counts = (f"{len(report.written)} {'to write' if args.dry_run else 'written'}, "
              f"{len(report.unchanged)} unchanged"
              + (f", {len(report.removed)} old removed" if report.removed else ""))
    flash = ""
    if after.total_flash:
        used = before.free_flash - after.free_flash
        flash = (f"; flash: {used:,} bytes used by this deploy, {after.free_flash:,} of "
                 f"{after.total_flash:,} free")
    verb = "would deploy" if args.dry_run else "deployed"
    print(f"{verb:<9} {len(plan.items)} files, {report.nbytes:,} bytes ({counts}){flash}")
    if args.dry_run:
        return 0
    if qnet is not None:
        session = Session(board.port, start=True)
        state.session = session
        p = planner.plan_for(qnet, session.info)
        print(p.table())
        end_session(state, args)
        if p.free is not None and not p.fits(p.free):
            raise UserError(f"{args.net} does not fit this board's RAM (see above)")
    print(f"next      edgebp train --port {board.port} --data DATA ...")
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
        p = planner.plan(qnet.sizes, momentum=qnet.momentum, loss=qnet.loss, word=args.word)
    else:
        p = planner.plan(args.sizes, momentum=args.momentum, word=args.word)
    print(p.table())
    if p.free is not None and not p.fits(p.free):
        return 1
    return 0


def do_bench(state: State, args: argparse.Namespace) -> int:
    from . import bench

    bench.run(args.runtime, args.port, args.steps, args.samples)
    return 0


# -- sim --


def _stop(signum, frame):
    raise KeyboardInterrupt


def do_sim(state: State, args: argparse.Namespace) -> int:
    from . import sim

    board: InProcessBoard | MicroPythonBoard
    try:
        if args.kind == "micropython":
            board = sim.MicroPythonBoard()
        elif args.kind == "stock":
            board = sim.MicroPythonBoard(stock=True)
        else:
            board = sim.InProcessBoard("socket" if args.kind == "socket" else "pty", repl=True)
    except OSError as e:
        raise UserError(f"cannot start the simulated board: {e}") from None
    state.board = board
    # a board started in the background has SIGINT ignored; stop on it (and SIGTERM) anyway
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        print(f"simulated board ({args.kind}) on {board.url}", flush=True)
        if args.kind == "stock":
            print(f"try: edgebp deploy --port {board.url}, then edgebp train --port "
                  f"{board.url}; its files are in {board.root}; Ctrl-C stops the board",
                  flush=True)
        else:
            keep = " --keep" if args.kind == "micropython" else ""  # it ends at BYE
            print(f"try: edgebp train --port {board.url}{keep}; Ctrl-C stops the board",
                  flush=True)
        while True:
            time.sleep(0.1)
            if (isinstance(board, sim.MicroPythonBoard) and not board.stock
                    and board.proc.poll() is not None):
                print(f"the MicroPython board ended (exit code {board.proc.returncode})",
                      flush=True)
                # the host may still wait for a REPL prompt after its BYE: closing the
                # terminal now would fail its read rather than let it time out
                time.sleep(3)
                return 0 if board.proc.returncode == 0 else 1
            if isinstance(board, sim.InProcessBoard) and board.error is not None:
                print(f"edgebp: the simulated board failed: {board.error!r}", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        print("board stopped")
        return 0


# -- runtimes --


def do_runtimes(state: State, args: argparse.Namespace) -> int:
    from edgebp.host import mprun

    if args.install_wasm:
        try:
            mprun.install_wasm()
        except mprun.RunnerError as e:
            raise UserError(str(e)) from None
    for name in mprun.RUNTIMES:
        reason = mprun.find_runtime(name)
        print(f"{name:8} {'ok' if reason is None else 'missing: ' + reason}")
    return 0
