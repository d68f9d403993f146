"""`edgebp train`, `eval` and `pull`: a net trained on a board, measured, read back.
"""

from __future__ import annotations

import argparse
import json
import time
from array import array
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgebp import fixed
from edgebp.host.boards.session import Session, SessionError
from edgebp.host.cli.data import Dataset
from edgebp.host.cli.progress import Bar
from edgebp.host.cli.workload import (
    UserError,
    check_suffix,
    prepare,
    read_net,
    targets,
    write_net,
)
from edgebp.host.nets.qnet import QuantNet
from edgebp.host.nets.reference import epoch_order

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
