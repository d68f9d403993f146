"""`edgebp fleet`: federated training over a fleet of boards, simulated through Flower.

The net and data come as for `edgebp train` (--net or --spec, --data, --val; checked by the
same readers); host/fleet does the rest. Boards named with --board serve the first
partitions (a port, a pty, sim://micropython), every other partition gets a simulated board.
"""

from __future__ import annotations

import argparse
import math

from edgebp.host.cli.common import describe_hyper, describe_net, need_micropython
from edgebp.host.cli.workload import UserError, check_output, check_suffix, prepare, targets
from edgebp.host.fleet import partition as part, server
from edgebp.host.fleet.config import Settings
from edgebp.host.fleet.workload import FleetError, Workload


def do_fleet(state, args: argparse.Namespace) -> int:
    try:
        return _fleet(args)
    except FleetError as e:
        raise UserError(str(e)) from None


def _fleet(args: argparse.Namespace) -> int:
    from edgebp.host.fleet.central import central
    from edgebp.host.fleet.report import need_matplotlib, write_outputs
    from edgebp.host.fleet.run import need_flower, simulate

    need_flower()
    if args.data is None:
        raise UserError("fleet needs --data TRAIN.csv|.npz (split across the clients)")
    if args.out:
        check_suffix(args.out, (".ebp",), "--out")
        check_output(args.out, "--out")
    for path, allowed, what in ((args.curves, (".csv",), "--curves"),
                                (args.plot, (".png",), "--plot")):
        if path:
            check_suffix(path, allowed, what)
            check_output(path, what)
    if args.plot:
        need_matplotlib(args.plot)
    overrides = {k: getattr(args, k) for k in ("lr", "batch", "seed")
                 if getattr(args, k) is not None}
    p = prepare(args, overrides, args.hidden, args.val)
    qnet, hyper = p.qnet, p.hyper
    wl = Workload(qnet, hyper, qnet.quantize_inputs(p.data.X), targets(qnet, p.data),
                  None if p.val is None else qnet.quantize_inputs(p.val.X),
                  None if p.val is None else targets(qnet, p.val),
                  labels=p.data.y[:, 0])
    if len(args.board) > args.clients:
        raise UserError(f"{len(args.board)} boards named for {args.clients} clients")
    for p, r in args.fault:
        if not (0 <= p < args.clients and 1 <= r <= args.rounds):
            raise UserError(f"--fault {p}@{r}: partitions are 0..{args.clients - 1}, rounds "
                            f"1..{args.rounds}")
    if args.min_clients > args.clients:
        raise UserError(f"--min-clients {args.min_clients} is more than the {args.clients} "
                        "clients")
    kind = {"inprocess": "sim", "micropython": "sim://micropython"}[args.sim]
    boards = list(args.board) + [kind] * (args.clients - len(args.board))
    if "sim://micropython" in boards:
        need_micropython("a simulated fleet of MicroPython boards")
    settings = Settings(rounds=args.rounds, local_epochs=args.local_epochs,
                        clients=args.clients, partition=args.partition,
                        per=args.classes_per_client,
                        dominant=args.dominant, seed=hyper.seed, boards=boards,
                        min_clients=args.min_clients, faults=list(args.fault))
    parts = part.split(wl.labels, args.clients, settings.partition, settings.seed,
                       settings.per, settings.dominant)
    named = ", ".join(f"{i}: {b}" for i, b in enumerate(args.board))
    simulated = "in the clients' processes" if kind == "sim" else "in unix MicroPython"
    print(f"net       {describe_net(qnet)} ({p.net_from})")
    print(f"data      {len(p.data)} samples ({p.data.name})"
          + (f", held out: {len(p.val)} ({p.val.name})" if p.val is not None else ""))
    print(f"fleet     {args.clients} clients, {settings.partition} split (seed "
          f"{settings.seed}), {args.rounds} rounds of {args.local_epochs} local epoch"
          f"{'s' if args.local_epochs > 1 else ''}, {describe_hyper(hyper, qnet.adam, qnet.sdlm)}; "
          "boards: "
          + (f"{named}, the rest simulated {simulated}" if named
             else f"all simulated {simulated}"))
    if args.partition != "iid" or args.show_split:
        for text in part.describe(wl.labels, parts):
            print(f"          {text}")
    base = central(wl, args.rounds, args.local_epochs) if args.central and p.val is not None \
        else None
    print(server.head(base is not None), flush=True)

    def report(row: server.Row) -> None:
        print(server.line(row, args.clients, base[row.round][1] if base else None),
              flush=True)

    history = simulate(wl, settings, report, workers=args.workers, verbose=args.verbose)
    last = history.rows[-1]
    if p.val is not None:
        print(f"global net after round {last.round}: held-out loss {last.loss:.4f}"
              + ("" if math.isnan(last.accuracy) else f", accuracy {100 * last.accuracy:.2f}%"))
    central_acc = [b[1] for b in base] if base else None
    for said in write_outputs(history, wl, args.out or "", args.curves or "", central_acc):
        print(said)
    if args.plot:
        write_outputs(history, wl, "", args.plot, central_acc)
        print(f"wrote {args.plot} (plot)")
    return 0
