"""`edgebp deploy`, `bench`, `sim`, `runtimes` and `flash`: boards themselves.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import TYPE_CHECKING

from edgebp.host.boards import flash as flashing
from edgebp.host.boards.session import Session
from edgebp.host.cli.workload import (
    UserError,
    read_net,
)
from edgebp.host.nets import planner

if TYPE_CHECKING:
    from edgebp.host.boards.sim import InProcessBoard, MicroPythonBoard



from edgebp.host.cli.common import (
    State,
    end_session,
    need_micropython,
)

# -- deploy, plan, bench --


def do_deploy(state: State, args: argparse.Namespace) -> int:
    from edgebp.host.boards import board as mb

    qnet = read_net(args.net)[0] if args.net else None
    only = mb.PREDICT if args.infer else mb.LEARN if args.learner else None
    if only is not None and args.net:
        raise UserError("--net checks the net against the training server, which --infer and "
                        "--learner leave off: use --put to copy the net file")
    put = _put_item(args.put) if args.put else None
    if args.arch is not None:
        if not args.dry_run:
            raise UserError("--arch is for --dry-run without a board: a deploy compiles for "
                            "the architecture the board reports")
        arch = None if args.arch == "none" else args.arch
        plan = mb.plan_deploy(arch, compiled=not args.source, only=only)
        if put is not None:
            plan.items.append(put)
        print(f"files for {args.arch}"
              + ("" if args.source else f", compiled by {mb.mpy_cross_version()}") + ":")
        for item in plan.items:
            print(f"  {item.dest:<28}  {len(item.data):>6} B")
        for note in plan.skipped:
            print(f"  left off: {note}")
        print(f"{len(plan.items)} files, {sum(len(i.data) for i in plan.items):,} bytes")
        print(f"kernels   {plan.kernels}")
        return 0
    with mb.Board(args.port or "auto") as board:
        before = board.facts()
        print(f"board     {before.describe()} on {board.port}")
        if not args.source:
            mb.check_mpy(before)
        plan = mb.plan_deploy(before.arch, compiled=not args.source, only=only)
        if put is not None:
            plan.items.append(put)
        what = "sources" if args.source else f"compiled by {mb.mpy_cross_version()}"
        print(f"files     {len(plan.items)} for {before.arch or 'bytecode only'}, {what}, into "
              f"{before.cwd.rstrip('/')}/edgebp" + (" (dry run: nothing changes)"
                                                    if args.dry_run else ""))
        report = mb.deploy(board, plan, dry_run=args.dry_run, force=args.force)
        for note in plan.skipped:
            print(f"  left off: {note}")
        print(f"kernels   {plan.kernels}")
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
    if only is not None:
        print("next      copy your program (mpremote cp main.py :): edgebp.learner opens "
              + (f"{put.dest}" if put is not None else "its net file"))
        return 0
    print(f"next      edgebp train --port {board.port} --data DATA ...")
    return 0


def _put_item(path: str):
    """The board part of the net file at `path`, as a deploy item named as the file."""
    from pathlib import Path

    from edgebp.host.boards import board as mb
    from edgebp.host.nets import ebpfile

    qnet, hyper = read_net(path)
    return mb.Item(Path(path).name, ebpfile.board_part(qnet, hyper), path)




def do_bench(state: State, args: argparse.Namespace) -> int:
    from edgebp.host.bench import step as bench
    from edgebp.host.boards import qemu

    try:
        bench.run(args.runtime, args.port, args.steps, args.samples)
    finally:
        # the emulated boards benched as runtimes run in qemu processes of their own, which
        # would outlive the command, each keeping a host core busy
        qemu.stop_shared()
    return 0


# -- sim --


def _stop(signum, frame):
    raise KeyboardInterrupt


def do_sim(state: State, args: argparse.Namespace) -> int:
    from edgebp.host.boards import sim

    board: InProcessBoard | MicroPythonBoard
    if args.kind in ("micropython", "stock"):
        need_micropython(f"edgebp sim {args.kind}")
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
    from edgebp.host.boards import mprun

    if args.install_wasm:
        try:
            mprun.install_wasm()
        except mprun.RunnerError as e:
            raise UserError(str(e)) from None
    for name in mprun.RUNTIMES:
        reason = mprun.find_runtime(name)
        print(f"{name:8} {'ok' if reason is None else 'missing: ' + reason}")
    return 0


# -- flash --


def do_flash(state: State, args: argparse.Namespace) -> int:
    port = flashing.flash(args.port, args.firmware, board=args.board, chip=args.chip,
                          drive=args.drive, baud=args.baud, erase=args.erase, wait=args.wait,
                          dry_run=args.dry_run)
    if args.no_deploy:
        return 0
    if args.dry_run:
        where = "the one USB board" if port == "auto" else port
        print(f"then deploy edgebp to {where} (edgebp deploy)")
        return 0
    return _deploy(port, args)


def _deploy(port: str, args: argparse.Namespace) -> int:
    from edgebp.host.cli.parser import make_parser

    state = State()
    try:
        return do_deploy(state, make_parser().parse_args(["deploy", "--port", port]))
    finally:
        state.close()
