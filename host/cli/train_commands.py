"""`edgebp train`, `eval` and `pull`: a net trained on a board, measured, read back.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from array import array
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgebp import fixed, wire
from edgebp.ebp import EbpError
from edgebp.host.boards import ondata
from edgebp.host.boards.session import Session, SessionError
from edgebp.host.cli.data import Dataset
from edgebp.host.cli.progress import Bar
from edgebp.host.cli.workload import (
    UserError,
    check_lr,
    check_output,
    check_suffix,
    optimizer_args,
    prepare,
    prove_safe,
    read_net,
    targets,
    with_optimizer,
    write_net,
)
from edgebp.host.nets import ebpfile
from edgebp.host.nets.qnet import Hyper, QuantNet
from edgebp.host.nets.reference import epoch_order, epoch_state
from edgebp.host.nets.train import Fit, fit_from_loss

if TYPE_CHECKING:
    from edgebp.host.boards.session import Result


from edgebp.host.cli.common import (
    State,
    describe_board,
    describe_hyper,
    describe_net,
    end_session,
    open_session,
)

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
    for path in (csv_path, png_path):
        if path:
            check_output(path, "--curves" if path == args.curves else "--plot")
    if png_path:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UserError(f'{png_path}: a plot needs matplotlib: pip install "edgebp[plot]"'
                            ) from None
    return csv_path, png_path


def write_curves(rows: list[dict], csv_path: str | None, png_path: str | None) -> None:
    """Per-epoch rows as CSV and/or a plot: loss and accuracy, or for a regression loss,
    RMSE and R^2 (in the targets' units)."""
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

            panels: list[tuple[str, str, tuple[float, float] | None]] = [
                ("loss", "loss (mean per sample)", None)]
            if "rmse" in keys:
                panels += [("rmse", "RMSE (the targets' units)", None), ("r2", "R$^2$", None)]
            else:
                panels += [("accuracy", "accuracy", (0, 1.02))]
            fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5))
            epochs = [r["epoch"] for r in rows]
            for ax, (key, ylabel, ylim) in zip(axes, panels, strict=True):
                for prefix, label in (("", "training"), ("val_", "held-out")):
                    if f"{prefix}{key}" in keys:
                        ax.plot(epochs, [r[f"{prefix}{key}"] for r in rows], label=label)
                ax.set(xlabel="epoch", ylabel=ylabel)
                if ylim:
                    ax.set_ylim(*ylim)
            axes[-1].legend(loc="best")
            fig.tight_layout()
            fig.savefig(png_path, dpi=100)
            plt.close(fig)
    except OSError as e:
        raise UserError(f"{e.filename}: {e.strerror or e}") from None


class Measure:
    """What a training run reports per epoch: loss and accuracy for a classifier; loss,
    RMSE and R^2 in the targets' units for a regression (mse), from the board's loss."""

    def __init__(self, qnet: QuantNet):
        self.qnet = qnet
        self.regression = qnet.loss == fixed.MSE

    def heads(self, prefix: str = "") -> list[tuple[str, str]]:
        if self.regression:
            return [(f"{prefix}loss", "loss"), (f"{prefix}rmse", "RMSE"), (f"{prefix}r2", "R^2")]
        return [(f"{prefix}loss", "loss"), (f"{prefix}accuracy", "accuracy")]

    def head(self, val: bool) -> str:
        text = f"{'epoch':>6}  {'loss':>8}  "
        text += f"{'RMSE':>9}  {'R^2':>7}" if self.regression else f"{'accuracy':>8}"
        if val:
            text += f"  {'val loss':>8}  "
            text += f"{'val RMSE':>9}  {'val R^2':>7}" if self.regression else f"{'val acc':>8}"
        return text

    def fit(self, r: Result, T) -> Fit:
        return fit_from_loss(r.loss, self.qnet, T)

    def values(self, r: Result, T, prefix: str = "") -> dict:
        if self.regression:
            f = self.fit(r, T)
            return {f"{prefix}loss": round(r.loss, 6), f"{prefix}rmse": round(f.rmse, 6),
                    f"{prefix}r2": round(f.r2, 6)}
        return {f"{prefix}loss": round(r.loss, 6), f"{prefix}accuracy": round(r.accuracy, 6)}

    def cells(self, r: Result, T) -> str:
        if self.regression:
            f = self.fit(r, T)
            return f"{r.loss:8.4f}  {f.rmse:#9.4g}  {f.r2:7.4f}"
        return f"{r.loss:8.4f}  {100 * r.accuracy:7.1f}%"

    def summary(self, r: Result, T) -> str:
        if self.regression:
            f = self.fit(r, T)
            return f"loss {r.loss:.4f}, RMSE {f.rmse:#.4g}, R^2 {f.r2:.4f}"
        return f"loss {r.loss:.4f}, accuracy {100 * r.accuracy:.1f}%"


class SoftInterrupt:
    """The first Ctrl-C of a training run stops it at the next acknowledged frame, where
    the link is in step with the board, so the net trained so far can still be read back
    and written; a second Ctrl-C interrupts at once, as usual."""

    def __init__(self) -> None:
        self.hit = False
        self._old: Any = None

    def __enter__(self) -> SoftInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.hit = True
        signal.signal(signal.SIGINT, self._old or signal.default_int_handler)

    def check(self) -> None:
        if self.hit:
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


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
    if getattr(args, "on_board", None):
        return do_train_on_board(state, args)
    if getattr(args, "on_board_val", None):
        raise UserError("--on-board-val goes with --on-board NAME (held-out data on the board "
                        "beside training data there)")
    for path in args.out:
        check_suffix(path, (".ebp", ".npz"), "--out")
        check_output(path, "--out")
    csv_path, png_path = _curve_files(args)
    overrides = {k: getattr(args, k) for k in ("lr", "batch", "seed")
                 if getattr(args, k) is not None}
    p = prepare(args, overrides, args.hidden, args.val)
    qnet, hyper, ds = p.qnet, p.hyper, p.data
    epochs = args.epochs or (200 if p.demo else 20)
    seed = hyper.seed
    Xq, Tq = qnet.quantize_inputs(ds.X), targets(qnet, ds)
    measure = Measure(qnet)

    session = open_session(state, args)
    print(f"board     {describe_board(state)}")
    print(f"net       {describe_net(qnet)} ({p.net_from})")
    print(f"data      {len(ds)} samples ({ds.name})"
          + (f", held out: {len(p.val)} ({p.val.name})" if p.val is not None else ""))
    order_text = f"shuffled with seed {seed}" if args.shuffle else "in file order"
    print(f"training  {epochs} epoch{'s' if epochs > 1 else ''}, "
          f"{describe_hyper(hyper, qnet.adam, qnet.sdlm)}, "
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
    if p.val is not None:
        Xv, Tv = qnet.quantize_inputs(p.val.X), targets(qnet, p.val)
    print(measure.head(p.val is not None), flush=True)

    bar = Bar(epochs)
    rows: list[dict] = []
    elapsed = 0.0  # training only, evaluation aside
    samples = 0
    epoch = first
    with SoftInterrupt() as stop:

        def tick(done: int, total: int) -> None:
            stop.check()
            bar.update(done, total)

        try:
            for epoch in range(first, epochs):
                stop.check()
                bar.begin_epoch(epoch)
                order = epoch_order(len(ds), seed, epoch) if args.shuffle else np.arange(len(ds))
                if epoch == first and skip:
                    order = order[skip:]  # learned before the board's reset
                start = time.monotonic()
                try:
                    r = session.train(Xq, Tq, order, update=True, progress=tick,
                                      resume=checkpoints)
                except SessionError as e:
                    if not checkpoints:
                        raise
                    if e.code == wire.E_CKPT:
                        raise SessionError(f"{e}: free room on the board's filesystem, then "
                                           "run the same command with --resume to go on from "
                                           "its last checkpoint") from e
                    raise SessionError(f"{e}; the board keeps its last checkpoint: run the "
                                       "same command with --resume to go on from it") from e
                elapsed += time.monotonic() - start
                samples += len(order)
                bar.end_epoch(r.samples, r.loss, None if measure.regression else r.accuracy)
                row = {"epoch": epoch + 1, **measure.values(r, ds.y[order])}
                line = f"{epoch + 1:6}  {measure.cells(r, ds.y[order])}"
                if p.val is not None:
                    v = session.evaluate(Xv, Tv, progress=lambda d, t: stop.check())
                    row.update(measure.values(v, p.val.y, "val_"))
                    line += f"  {measure.cells(v, p.val.y)}"
                    row["_held"] = measure.summary(v, p.val.y)
                rows.append(row)
                if _shown(epoch, epochs):
                    bar.message(line)
        except KeyboardInterrupt:
            bar.clear()
            return _interrupted(state, args, session, epoch, hyper, rows, csv_path, png_path)
    bar.clear()
    trained = session.pull()
    end_session(state, args)

    print(f"trained on {samples} samples in {elapsed:.2f} s ({samples / max(elapsed, 1e-9):,.0f} "
          "samples/s through the link)")
    if p.val is not None and rows:
        print(f"held out  {len(p.val)} samples: {rows[-1]['_held']}")
    if p.demo:
        print("the board's trained net on XOR:")
        print("\n".join(xor_table(trained, ds)))
    _write_outputs(args, trained, hyper, rows, csv_path, png_path)
    return 0


def _write_outputs(args: argparse.Namespace, trained: QuantNet | None, hyper, rows: list[dict],
                   csv_path: str | None, png_path: str | None, note: str = "") -> None:
    if trained is not None:
        for path in args.out:
            write_net(path, trained, hyper)
            kind = "float weights" if path.lower().endswith(".npz") else "quantised net"
            print(f"wrote {path} ({kind}{note})")
    rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    if (csv_path or png_path) and rows:
        write_curves(rows, csv_path, png_path)
        print(f"wrote {', '.join(f for f in (csv_path, png_path) if f)} (training curves)")


def _interrupted(state: State, args: argparse.Namespace, session: Session, epoch: int,
                 hyper, rows: list[dict], csv_path: str | None, png_path: str | None) -> int:
    """Ctrl-C during training: with -o, the net as trained so far is read back from the
    board and written (and the curves of the finished epochs); without, nothing is."""
    where = f"during epoch {epoch + 1} ({epoch} finished)"
    if not args.out:
        if rows and (csv_path or png_path):
            _write_outputs(args, session.qnet, hyper, rows, csv_path, png_path)
        if not args.keep:
            state.release()  # the board back at its REPL, as after a finished run
        print(f"edgebp: interrupted {where}; no net written (with -o FILE, Ctrl-C writes "
              "the net as trained so far)", file=sys.stderr)
        return 130
    try:
        trained = session.pull()
        end_session(state, args)
    except SessionError as e:
        print(f"edgebp: interrupted {where}; could not read the net back from the board "
              f"({e}): nothing written", file=sys.stderr)
        return 130
    print(f"interrupted {where}: writing the net as trained so far")
    _write_outputs(args, trained, hyper, rows, csv_path, png_path, ", as trained so far")
    print(f"edgebp: interrupted {where}; kept the net trained so far", file=sys.stderr)
    return 130


# -- train from a dataset on the board --


def _on_board_net(args: argparse.Namespace) -> tuple[QuantNet, Hyper]:
    if not args.net:
        raise UserError("--on-board needs --net NET.ebp: the net its data were pushed for")
    for flag, value in (("--data", args.data), ("--val", args.val), ("--spec", args.spec),
                        ("--hidden", args.hidden)):
        if value is not None:
            raise UserError(f"--on-board trains from the board's own data: no {flag}")
    overrides = {k: getattr(args, k) for k in ("lr", "batch", "seed")
                 if getattr(args, k) is not None}
    qnet, file_hyper = read_net(args.net)
    hyper = replace(file_hyper or Hyper(), **overrides)
    qnet, hyper = with_optimizer(qnet, hyper, optimizer_args(args), "lr" in overrides, args.net)
    try:
        ebpfile.hyper_block(hyper)
    except EbpError as e:
        raise UserError(f"a board cannot take these settings: {e}") from None
    check_lr(qnet, hyper, args.net)
    # data pushed inside the declared input range (edgebp data push refuses others)
    prove_safe(qnet, hyper, [])
    return qnet, hyper


def _on_board_data(session: Session, qnet: QuantNet, name: str) -> int:
    # the dataset's records, checked whole by the board, quantised for this net's maps
    on = session.dataset(name)
    if on.tag != ondata.tag_of(qnet):
        raise UserError(f"the board's dataset {name} was quantised for another net's input "
                        "or target map: push it again with this --net")
    if on.records == 0:
        raise UserError(f"the board's dataset {name} holds no samples")
    return on.records


class _Unknown:
    # targets the host does not hold (they stay on the board): as many as the samples, for
    # the RMSE; R^2 needs their spread, so it reads nan
    def __init__(self, n_out: int):
        self.n_out = n_out

    def __getitem__(self, n) -> np.ndarray:
        return np.zeros((n, self.n_out))


def do_train_on_board(state: State, args: argparse.Namespace) -> int:
    for path in args.out:
        check_suffix(path, (".ebp", ".npz"), "--out")
        check_output(path, "--out")
    csv_path, png_path = _curve_files(args)
    qnet, hyper = _on_board_net(args)
    name, val_name = args.on_board, args.on_board_val
    epochs = args.epochs or 20
    seed = hyper.seed
    measure = Measure(qnet)
    session = open_session(state, args)
    print(f"board     {describe_board(state)}")
    print(f"net       {describe_net(qnet)} ({args.net})")
    first, skip = 0, 0
    ck = None
    if args.resume:
        ck = session.resume()
        info = session.info
        if list(info.sizes or []) != list(qnet.sizes) or info.loss != qnet.loss:
            held = "-".join(map(str, info.sizes or []))
            raise UserError(f"the board's checkpoint holds a {held} net, not the "
                            f"{'-'.join(map(str, qnet.sizes))} net given: give the net it was "
                            "trained from")
        session.qnet = qnet
    else:
        session.load(qnet, hyper)
    n = _on_board_data(session, qnet, name)
    n_val = _on_board_data(session, qnet, val_name) if val_name else 0
    if ck is not None:
        if ck.samples > epochs * n:
            raise UserError(f"the board's checkpoint is at sample {ck.samples}, past the "
                            f"{epochs} x {n} samples asked for: same --on-board and --epochs "
                            "as the run it resumes")
        first, skip = divmod(ck.samples, n)
        print(f"resumed   checkpoint {ck.gen} of the board: {ck.samples} samples learned, "
              f"going on at epoch {first + 1}, sample {skip + 1}")
    print(f"data      {n} samples on the board ({name})"
          + (f", held out: {n_val} ({val_name})" if val_name else ""))
    order_text = (f"shuffled on the board with seed {seed}" if args.shuffle
                  else "in file order")
    print(f"training  {epochs} epoch{'s' if epochs > 1 else ''}, "
          f"{describe_hyper(hyper, qnet.adam, qnet.sdlm)}, "
          f"{order_text}")
    checkpoints = args.resume or args.checkpoint_every is not None
    if args.checkpoint_every is not None:
        session.checkpoint(every=args.checkpoint_every, now=False)
        print(f"checkpoints every {args.checkpoint_every} weight update"
              f"{'s' if args.checkpoint_every != 1 else ''} on the board's filesystem")
    print(measure.head(bool(val_name)), flush=True)
    targets_of = _Unknown(qnet.sizes[-1])
    bar = Bar(epochs)
    rows: list[dict] = []
    elapsed = 0.0
    samples = 0
    epoch = first
    with SoftInterrupt() as stop:

        def tick(done: int, total: int) -> None:
            stop.check()
            bar.update(done, total)

        try:
            for epoch in range(first, epochs):
                stop.check()
                bar.begin_epoch(epoch)
                start_at = skip if epoch == first else 0
                order_state = epoch_state(seed, epoch) if args.shuffle else 0
                start = time.monotonic()
                try:
                    r = session.train_on_board(name, order_state, n, start_at, update=True,
                                               progress=tick, resume=checkpoints)
                except SessionError as e:
                    if not checkpoints:
                        raise
                    if e.code == wire.E_CKPT:
                        raise SessionError(f"{e}: free room on the board's filesystem, then "
                                           "run the same command with --resume to go on from "
                                           "its last checkpoint") from e
                    raise SessionError(f"{e}; the board keeps its last checkpoint: run the "
                                       "same command with --resume to go on from it") from e
                elapsed += time.monotonic() - start
                samples += n - start_at
                bar.end_epoch(r.samples, r.loss, None if measure.regression else r.accuracy)
                T = targets_of[r.samples]
                row = {"epoch": epoch + 1, **measure.values(r, T)}
                line = f"{epoch + 1:6}  {measure.cells(r, T)}"
                if val_name:
                    v = session.evaluate_on_board(val_name, n_val,
                                                  progress=lambda d, t: stop.check())
                    Tv = targets_of[n_val]
                    row.update(measure.values(v, Tv, "val_"))
                    line += f"  {measure.cells(v, Tv)}"
                    row["_held"] = measure.summary(v, Tv)
                rows.append(row)
                if _shown(epoch, epochs):
                    bar.message(line)
        except KeyboardInterrupt:
            bar.clear()
            return _interrupted(state, args, session, epoch, hyper, rows, csv_path, png_path)
    bar.clear()
    trained = session.pull()
    end_session(state, args)
    print(f"trained on {samples} samples in {elapsed:.2f} s ({samples / max(elapsed, 1e-9):,.0f} "
          "samples/s from the board's own data)")
    if val_name and rows:
        print(f"held out  {n_val} samples: {rows[-1]['_held']}")
    _write_outputs(args, trained, hyper, rows, csv_path, png_path)
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
    measure = Measure(qnet)
    if measure.regression:
        fit = measure.fit(r, ds.y)
        result = {"rmse": fit.rmse, "r2": fit.r2}
        text = f"{measure.summary(r, ds.y)} ({r.samples} samples; RMSE in the targets' units)"
    else:
        correct = round(r.accuracy * r.samples)
        result = {"accuracy": r.accuracy, "correct": correct}
        text = f"{measure.summary(r, ds.y)} ({correct} of {r.samples})"
    if args.json:
        print(json.dumps({"board": board, "net": p.net_from, "data": ds.name,
                          "samples": r.samples, "loss": r.loss, **result}))
        return 0
    print(f"board     {board}")
    print(f"net       {describe_net(qnet)} ({p.net_from})")
    print(f"data      {len(ds)} samples ({ds.name})")
    print(text)
    return 0


# -- pull --


def do_pull(state: State, args: argparse.Namespace) -> int:
    check_suffix(args.output, (".npz", ".ebp"), "the output")
    check_output(args.output, "-o")
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
