"""`edgebp data push|list`: training data kept on a board's flash (edgebp/dataset.py), for
`edgebp train --on-board NAME`, which then carries no samples over the link.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from edgebp import dataset
from edgebp.host.boards import ondata
from edgebp.host.boards.board import Board
from edgebp.host.cli.common import State
from edgebp.host.cli.workload import UserError, prepare, read_net, targets


def _name(args: argparse.Namespace) -> str:
    if args.name:
        return args.name
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(args.file).stem).lstrip(".")
    return stem[:dataset.NAME_MAX] or "data"


def do_data(state: State, args: argparse.Namespace) -> int:
    if args.action == "list":
        if args.file is not None:
            raise UserError("data list takes no file")
        return _list(args)
    if args.file is None:
        raise UserError("data push needs a data file: edgebp data push DATA.csv --net NET.ebp")
    if args.net is None:
        raise UserError("data push needs --net NET.ebp: the samples are stored in its input "
                        "format")
    name = _name(args)
    if not dataset.check_name(name):
        raise UserError(f"dataset name {name!r}: 1 to {dataset.NAME_MAX} letters, digits, "
                        "'_', '-' or '.', not starting with '.'")
    file_net, _ = read_net(args.net)
    ns = argparse.Namespace(net=args.net, spec=None, data=args.file, hidden=None, task=None,
                            label_column=args.label_column, out_of_range=args.out_of_range)
    p = prepare(ns)
    # quantised exactly as `edgebp train --data` quantises the samples it streams
    Xq, Tq = p.qnet.quantize_inputs(p.data.X), targets(p.qnet, p.data)
    tag = ondata.tag_of(file_net)
    with Board(args.port or "auto") as b:
        plan = ondata.plan_push(b, name, Xq, Tq, tag, append=args.append)
        what = "appending" if plan.append else "writing"
        print(f"data      {len(Xq)} samples ({args.file}), {len(plan.data):,} bytes: {what} "
              f"{plan.path}; flash {plan.free:,} bytes free, this takes about {plan.need:,}")
        start = time.monotonic()
        ondata.push(b, plan)
        took = time.monotonic() - start
        got = ondata.check(b, plan.path, Xq.shape[1], Tq.reshape(len(Tq), -1).shape[1])
    if got != (plan.records, tag):
        raise UserError(f"{plan.path}: the board's reader found {got[0]} samples, "
                        f"{plan.records} expected")
    print(f"pushed    {name}: {plan.records} samples on the board, checked by its reader "
          f"({len(plan.data) / max(took, 1e-9) / 1024:,.1f} KiB/s); next: edgebp train --port "
          f"PORT --net {args.net} --on-board {name}")
    return 0


def _list(args: argparse.Namespace) -> int:
    with Board(args.port or "auto") as b:
        names = sorted(n for n in b.listdir(ondata.DIR) if n.endswith(dataset.SUFFIX))
        if not names:
            print(f"no datasets on the board (in {ondata.DIR}/)")
            return 0
        for n in names:
            size = ondata.size_of(b, f"{ondata.DIR}/{n}")
            print(f"{n[:-len(dataset.SUFFIX)]:<{dataset.NAME_MAX}}  {size:>10,} bytes")
    return 0
