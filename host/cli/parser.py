"""The `edgebp` command.

    edgebp init SPEC.json [--data D | --sizes 4,16,3 ...]   write a net spec
    edgebp quantize SPEC.json -o NET.ebp [--calib D]         float init or weights -> .ebp
    edgebp train [BOARD] [--net NET.ebp | --spec SPEC.json] [--data D] [--val D] ...
    edgebp eval [BOARD] --net NET.ebp --data D               loss and accuracy (or RMSE, R^2)
    edgebp check [BOARD] [--net | --spec] [--data D]         board gradients vs float64
    edgebp pull [BOARD] --net NET.ebp -o W.npz               the board's weights, as floats
    edgebp deploy [--port PORT] [--dry-run] [--net NET.ebp]   edgebp onto a board, verified
    edgebp flash --firmware IMAGE [--port PORT] [--dry-run]  MicroPython onto a board, then deploy
    edgebp data push DATA --net NET.ebp [--port PORT] [--name N] [--append]   data onto the flash
    edgebp plan (--net NET.ebp | --sizes 64,32,10) [BOARD]    training RAM, and if it fits
    edgebp bench [--port PORT]                                speed, allocation, RAM, link
    edgebp sim [inprocess | micropython | socket | stock]    serve a simulated board
    edgebp fleet [--net | --spec] --data D [--val D] --clients 8 --rounds 10 ...
                                                              federated training, one board a client
    BOARD: --port PORT (a serial port, pyserial URL or `auto`) or --sim [KIND]; the default is
    the in-process simulated board. `edgebp train` alone trains XOR on it.

Commands come from one table, `COMMANDS = {"name": (do_name, argparse_name, help)}`:
`argparse_name` (here) adds the command's arguments to its subparser, `do_name(state, args)`
(host/cli/*_commands.py) runs it. Handlers raise `UserError` for anything the user can fix; a
failing board or link raises `SessionError`; only `main()` prints either, as one line.
Exit codes: 0 done, 1 the board or link failed or a check found disagreeing gradients, 2 a
problem the user can fix, 130 interrupted.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import edgebp
from edgebp import fixed
from edgebp.host.boards.board import MPY_ARCHS, BoardError
from edgebp.host.boards.flash import BOARDS, DEFAULT_BAUD, ESP_CHIPS, INFO_FILE, FlashError
from edgebp.host.boards.mprun import RUNTIMES
from edgebp.host.boards.session import SessionError
from edgebp.host.cli.board_commands import do_bench, do_deploy, do_flash, do_runtimes, do_sim
from edgebp.host.cli.check_command import do_check
from edgebp.host.cli.common import SIMS, State, UserError
from edgebp.host.cli.data import MAX_INFERRED_CLASSES, TASKS
from edgebp.host.cli.data_commands import do_data
from edgebp.host.cli.fleet_command import do_fleet
from edgebp.host.cli.net_commands import do_init, do_plan, do_quantize
from edgebp.host.cli.train_commands import do_eval, do_pull, do_train
from edgebp.host.nets.spec import DEFAULT_LR, OPTIMIZERS
from edgebp.net import MAX_BATCH

if TYPE_CHECKING:
    from argparse import _ArgumentGroup as ArgumentGroup

__all__ = ["COMMANDS", "State", "UserError", "main", "make_parser"]


# -- argument types --


def _count(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} outside {lo}..{hi}")
        return v

    return parse


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return v


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 4,16,3") from None


def _numbers(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a list like "
                                         "0,0,1.5") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} holds a value that is not finite")
    return values


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",")]


# -- option sets shared by commands --


def add_board(parser: argparse.ArgumentParser, default: str = "the in-process simulated board"
              ) -> None:
    g = parser.add_argument_group("board")
    one = g.add_mutually_exclusive_group()
    one.add_argument("--port", metavar="PORT",
                     help="serial port, pyserial URL (socket://...) or `auto` for the one USB "
                     f"board; default: {default}")
    one.add_argument("--sim", nargs="?", const="inprocess", choices=list(SIMS),
                     help="a simulated board: inprocess (the default kind: the firmware in "
                     "this process), micropython (the firmware in a unix MicroPython "
                     "process), socket")
    g.add_argument("--keep", action="store_true",
                   help="leave the board serving its net (for a later edgebp pull) instead of "
                   "returning it to its REPL")


def add_net(parser: argparse.ArgumentParser, required: bool = False) -> ArgumentGroup:
    g = parser.add_argument_group("net")
    one = g.add_mutually_exclusive_group(required=required)
    one.add_argument("--net", metavar="NET.ebp", help="a quantised net (edgebp quantize, or "
                     "train --out)")
    one.add_argument("--spec", metavar="SPEC.json", help="a spec (edgebp init): quantised "
                     "from its float initial weights, the formats calibrated on --data")
    return g


def add_data(parser: argparse.ArgumentParser, what: str, required: bool = False
             ) -> ArgumentGroup:
    g = parser.add_argument_group("data")
    g.add_argument("--data", metavar="DATA", help=what, required=required)
    g.add_argument("--label-column", metavar="COL",
                   help="the (first) target column of a CSV: a header name, a column number "
                   "from 1, or negative from the end (default: the last column(s))")
    g.add_argument("--out-of-range", choices=("warn", "clip", "error"), default="warn",
                   help="inputs outside the net's declared input range: keep them with a "
                   "warning (default), clip them to the range, or refuse the data")
    return g


def add_task(parser) -> None:
    parser.add_argument("--task", choices=TASKS,
                        help="what the target is: class labels (classification) or a "
                        "continuous quantity (regression: an mse net whose output is mapped "
                        "to the targets' range); default: inferred from the targets, and "
                        "said (names or whole numbers 0..K-1, K <= "
                        f"{MAX_INFERRED_CLASSES}: classification; else regression)")


def add_optimizer(g: ArgumentGroup | argparse.ArgumentParser, default: str) -> None:
    g.add_argument("--optimizer", choices=OPTIMIZERS,
                   help="sgd, adam or sdlm: Adam in fixed point, on the board too (M and V, "
                   "int32, per parameter: 8 bytes more of RAM), or stochastic diagonal "
                   "Levenberg-Marquardt (its curvature, int16, per parameter: 2 bytes more; "
                   "a net file switched to it takes its curvature formats from --data); "
                   f"default {default}. Switching "
                   "without --lr takes the optimiser's default learning rate "
                   f"({', '.join(f'{k} {v:g}' for k, v in DEFAULT_LR.items())})")
    g.add_argument("--beta1", type=float, help="Adam: decay of the first moment, 0 to 0.999 "
                   "(default 0.9)")
    g.add_argument("--beta2", type=float, help="Adam: decay of the second moment, 0 to 1 "
                   "(default 0.999)")
    g.add_argument("--mu", type=float, help="SDLM: damping added to each curvature, above 0 "
                   "(default 0.1): the step is at most lr / mu times the gradient")
    g.add_argument("--gamma", type=float, help="SDLM: weight of each new sample in the "
                   "running curvature, above 0 to 1 (default 0.05)")


def add_hyper(parser: argparse.ArgumentParser) -> ArgumentGroup:
    g = parser.add_argument_group("training")
    g.add_argument("--lr", type=_positive, help="learning rate (default: the net's)")
    add_optimizer(g, "the net's")
    g.add_argument("--batch", type=_count(1, MAX_BATCH),
                   help="samples per update (default: the net's)")
    g.add_argument("--seed", type=_count(0, 2**62),
                   help="seed of the sample order and of stochastic rounding (default: the "
                   "net's)")
    return g


# -- each command's arguments --


def argparse_init(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC.json", help="the file to write")
    parser.add_argument("--data", metavar="DATA", help="take the input width, input range and "
                        "targets (class labels, or a continuous target and its range) from a "
                        "dataset (.csv or .npz)")
    parser.add_argument("--label-column", metavar="COL", help="the target column of --data")
    add_task(parser)
    parser.add_argument("--sizes", type=_ints, help="layer widths, input first: 4,16,3")
    parser.add_argument("--hidden", type=_ints, default=[16],
                        help="hidden widths with --data (default 16)")
    parser.add_argument("--activations", type=_names,
                        help="one per layer: identity, relu, leaky_relu, sigmoid, tanh, softmax, "
                        "swish, mish (default: relu, then what the loss needs)")
    parser.add_argument("--loss", choices=fixed.LOSS_NAMES,
                        help="default: mse for a regression; for a classification softmax_ce "
                        "with more than one output, else bce")
    parser.add_argument("--input-min", type=_numbers, help="one number or one per input")
    parser.add_argument("--input-max", type=_numbers, help="one number or one per input")
    parser.add_argument("--integer-inputs", action="store_true",
                        help="the inputs are a board program's raw integers (edgebp.learner): "
                        "the net file gets the input map that normalises them on the board")
    parser.add_argument("--lr", type=_positive,
                        help="learning rate of SGD (default 0.05; 0.5 for the built-in XOR)")
    parser.add_argument("--batch", type=_count(1, MAX_BATCH),
                        help="samples per weight update (default 8 with --data, else 1); "
                        f"the net is built for batches up to it, 1..{MAX_BATCH}")
    parser.add_argument("--momentum", type=float,
                        help="SGD momentum, 0 to 0.996 in steps of 1/256 (default 0: plain "
                        "SGD)")
    add_optimizer(parser, "sgd")
    parser.add_argument("--weight-growth", type=float, metavar="G",
                        help="room in the weight formats for weights G times the largest "
                        "initial one (default 4; more for long training whose weights grow, "
                        "at log2(G) bits of resolution)")
    parser.add_argument("--force", action="store_true", help="overwrite SPEC.json")


def argparse_quantize(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC.json", help="the net's spec (edgebp init); or "
                        "a net file (.ebp) whose formats --weights are quantised into, as "
                        "when pulled float weights go back to the board's int16 ones")
    parser.add_argument("-o", "--output", metavar="NET.ebp", required=True)
    parser.add_argument("--calib", metavar="DATA", help="samples (.csv or .npz) that set the "
                        "activation and delta formats (default: drawn from the declared ranges)")
    parser.add_argument("--label-column", metavar="COL", help="the label column of --calib")
    parser.add_argument("--weights", metavar="FLOAT.npz", help="float weights W0, B0, ... on "
                        "raw inputs (edgebp pull writes them) instead of the spec's initial ones")
    parser.add_argument("--table", action="store_true",
                        help="print the whole range analysis, one line per bound")


def argparse_train(parser: argparse.ArgumentParser) -> None:
    add_board(parser)
    net = add_net(parser)
    net.add_argument("--hidden", type=_ints, help="with neither --net nor --spec: the hidden "
                     "widths of the net inferred from --data (default 16)")
    add_task(net)
    data = add_data(parser, "training samples, .csv or .npz (default with no net: the "
                    "built-in XOR)")
    data.add_argument("--val", metavar="DATA", help="held-out samples, evaluated after each "
                      "epoch")
    data.add_argument("--on-board", metavar="NAME", help="train from the dataset NAME kept on "
                      "the board's flash (edgebp data push) instead of streaming --data: the "
                      "board shuffles it itself each epoch, and the link carries no samples")
    data.add_argument("--on-board-val", metavar="NAME", help="with --on-board: held-out data "
                      "on the board, evaluated there after each epoch")
    g = add_hyper(parser)
    g.add_argument("--epochs", type=_count(1, 10**6),
                   help="passes over the data (default 20; 200 for the built-in XOR); Ctrl-C "
                   "stops early and, with --out, writes the net as trained so far")
    g.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=True,
                   help="visit the samples in a fresh seeded order each epoch (default) or "
                   "in file order")
    c = parser.add_argument_group("checkpoints (on the board's filesystem)")
    c.add_argument("--checkpoint-every", type=_count(0, 65535), metavar="N",
                   help="save the training state every N weight updates, and go on from the "
                   "last one by itself if the board resets during the run")
    c.add_argument("--resume", action="store_true",
                   help="go on from the board's last checkpoint (after a reset or a power "
                   "cut) instead of loading the net: same net, data, epochs and seed as the "
                   "interrupted run")
    o = parser.add_argument_group("output")
    o.add_argument("--out", "-o", metavar="FILE", action="append", default=[],
                   help="write the trained net: .ebp (quantised) or .npz (float weights on "
                   "raw inputs); may be given twice")
    o.add_argument("--curves", metavar="FILE", help="per-epoch loss and accuracy (for a "
                   "regression: RMSE and R^2): .csv, or .png (a plot, needs matplotlib: the "
                   "plot extra)")
    o.add_argument("--plot", action="store_true", help="with --curves FILE.csv, also write "
                   "FILE.png")


def argparse_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("push", "list"),
                        help="push: write DATA to the board's flash in the net's input format "
                        "(for train --on-board); list: the datasets on the board")
    parser.add_argument("file", metavar="DATA", nargs="?", help="samples, .csv or .npz")
    parser.add_argument("--net", metavar="NET.ebp", help="the net the samples are for: its "
                        "input and target maps quantise them, as train --data does")
    parser.add_argument("--port", metavar="PORT", help="the board (default: auto, the one USB "
                        "board); edgebp deployed")
    parser.add_argument("--name", metavar="NAME", help="the dataset's name on the board "
                        "(default: the file's stem)")
    parser.add_argument("--append", action="store_true", help="add the samples after those "
                        "already in the board's dataset NAME")
    parser.add_argument("--label-column", metavar="COL", help="the (first) target column of "
                        "a CSV (default: the last column(s))")
    parser.add_argument("--out-of-range", choices=("clip", "error"), default="error",
                        help="inputs outside the net's declared input range: refuse the data "
                        "(default: training from the board proves its ranges for that range) "
                        "or clip them to it")


def argparse_eval(parser: argparse.ArgumentParser) -> None:
    add_board(parser)
    add_net(parser, required=True)
    add_data(parser, "samples to evaluate, .csv or .npz", required=True)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def argparse_check(parser: argparse.ArgumentParser) -> None:
    add_board(parser)
    add_net(parser)
    add_data(parser, "samples to take the gradients on (default: random inputs in the net's "
             "declared range with random targets)")
    parser.add_argument("--samples", type=_count(1, 4096), default=32,
                        help="how many samples (default 32)")
    parser.add_argument("--seed", type=_count(0, 2**62), default=1,
                        help="which samples: the seed of their order, or of the random ones")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def argparse_pull(parser: argparse.ArgumentParser) -> None:
    add_board(parser, default="auto (the one USB board)")
    parser.add_argument("--net", metavar="NET.ebp", required=True,
                        help="the net the board holds (it gives the formats)")
    parser.add_argument("-o", "--output", metavar="FILE", required=True,
                        help=".npz (float weights on raw inputs) or .ebp (the quantised net)")


def argparse_sim(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", nargs="?", choices=[*SIMS, "stock"], default="inprocess",
                        help="inprocess (default): the firmware in this process, behind a "
                        "pseudo-terminal with a MicroPython-like REPL; micropython: in a unix "
                        "MicroPython process (it ends after a session says BYE: use --keep); "
                        "socket: in-process on 127.0.0.1; stock: a unix MicroPython with its "
                        "REPL and an empty filesystem, like a freshly flashed board (edgebp "
                        "deploy, then train)")


def argparse_deploy(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", metavar="PORT", help="the board's serial port or pyserial URL "
                        "(default: auto, the one USB board)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list what would be copied and removed; change nothing")
    parser.add_argument("--arch", choices=[a for a in MPY_ARCHS if a] + ["none"],
                        help="with --dry-run and no board: compile for this architecture")
    parser.add_argument("--source", action="store_true",
                        help="copy the .py sources instead of .mpy (a board whose MicroPython "
                        "is older than 1.23; imports then compile on the board, using RAM)")
    parser.add_argument("--force", action="store_true",
                        help="write every file, even those already there with the same hash")
    parser.add_argument("--net", metavar="NET.ebp",
                        help="then start the server and check this net fits the board's RAM")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--learner", action="store_true",
                      help="only what a program of your own needs to learn on the board "
                      "(edgebp.learner and checkpoints): no training server, no wire codec")
    only.add_argument("--infer", action="store_true",
                      help="only what edgebp.learner's predict needs: no training, no "
                      "checkpoints, no server")
    parser.add_argument("--put", metavar="NET.ebp",
                        help="also copy this net file (the part a board reads) to the board's "
                        "working directory, under its own name")


def argparse_plan(parser: argparse.ArgumentParser) -> None:
    net = add_net(parser)
    net.add_argument("--sizes", type=_ints, help="layer widths without a net file: 64,32,10")
    net.add_argument("--momentum", action="store_true", help="with --sizes: SGD with momentum")
    net.add_argument("--adam", action="store_true", help="with --sizes: Adam in place of SGD")
    net.add_argument("--sdlm", action="store_true", help="with --sizes: SDLM in place of SGD")
    parser.add_argument("--word", type=int, choices=(4, 8), default=4,
                        help="bytes per machine word of the board, without one: 4 (32-bit "
                        "MCUs, the default) or 8 (the unix port on x64)")
    g = parser.add_argument_group("board")
    one = g.add_mutually_exclusive_group()
    one.add_argument("--port", metavar="PORT", help="compare with this board's free RAM")
    one.add_argument("--sim", nargs="?", const="inprocess", choices=list(SIMS),
                     help="compare with a simulated board's")
    parser.set_defaults(keep=False)


def argparse_bench(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", help="also bench the board on this port (edgebp deployed)")
    parser.add_argument("--runtime", action="append", choices=RUNTIMES,
                        help="bench only these runtimes (repeatable; default: all reachable)")
    parser.add_argument("--steps", type=_count(1, 10**6), default=200,
                        help="training steps per timed loop (default 200)")
    parser.add_argument("--samples", type=_count(1, 10**6), default=300,
                        help="samples streamed over the simulated link (default 300)")


def argparse_flash(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--firmware", metavar="IMAGE", required=True,
                        help="a MicroPython image from micropython.org/download: .uf2 (rp2) "
                        "or .bin (esp32, esp8266)")
    parser.add_argument("--port", metavar="PORT", default="auto",
                        help="the board's serial port, to flash (esp) and to deploy to "
                        "afterwards (default: auto, the one USB board)")
    parser.add_argument("--board", metavar="KIND",
                        help=f"what the board is: {', '.join(BOARDS)} (default: from the image)")
    parser.add_argument("--chip", choices=list(ESP_CHIPS),
                        help="esp chip (default: read from the image)")
    parser.add_argument("--drive", metavar="PATH",
                        help="the UF2 bootloader drive (default: the one mounted drive holding "
                        f"{INFO_FILE})")
    parser.add_argument("--baud", type=int, default=DEFAULT_BAUD,
                        help=f"esptool's baud rate (default {DEFAULT_BAUD})")
    parser.add_argument("--erase", action="store_true",
                        help="esp: erase the whole flash first, as for a board's first "
                        "MicroPython (its filesystem goes too)")
    parser.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                        help="how long to wait for the board's serial port after flashing "
                        "(default 30)")
    parser.add_argument("--no-deploy", action="store_true",
                        help="flash only: do not deploy edgebp afterwards (a firmware with "
                        "edgebp frozen in needs none)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the steps and the exact command; touch nothing")



def _fault(text: str) -> tuple[int, int]:
    try:
        p, r = (int(v) for v in text.split("@"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not PARTITION@ROUND, like 1@2") from None
    return p, r


def argparse_fleet(parser: argparse.ArgumentParser) -> None:
    net = add_net(parser)
    net.add_argument("--hidden", type=_ints, help="with neither --net nor --spec: the hidden "
                     "widths of the net inferred from --data (default 16)")
    add_task(net)
    data = add_data(parser, "training samples, .csv or .npz, split across the clients")
    data.add_argument("--val", metavar="DATA", help="held-out samples: the server measures "
                      "the global net on them after every round")
    g = add_hyper(parser)
    f = parser.add_argument_group("fleet")
    f.add_argument("--clients", type=_count(1, 4096), default=4,
                   help="clients, one board each (default 4)")
    f.add_argument("--rounds", type=_count(1, 10**5), default=5,
                   help="federated rounds (default 5)")
    f.add_argument("--local-epochs", type=_count(1, 10**4), default=1, metavar="E",
                   help="epochs each client trains its board per round (default 1)")
    f.add_argument("--partition", choices=("iid", "noniid"), default="iid",
                   help="how the training samples are split: iid (shuffled, equal parts; "
                   "the default) or noniid (equal parts, each mostly a few classes)")
    f.add_argument("--classes-per-client", type=_count(1, 1000), default=2, metavar="K",
                   help="noniid: the classes each client mostly holds (default 2)")
    f.add_argument("--dominant", type=_count(0, 100), default=80, metavar="PERCENT",
                   help="noniid: the share of each client's samples drawn from its classes "
                   "(default 80)")
    f.add_argument("--show-split", action="store_true",
                   help="list each client's samples by class (always shown for noniid)")
    f.add_argument("--board", action="append", default=[], metavar="PORT",
                   help="a board for the next partition (repeatable, from partition 0): a "
                   "serial port, a pty or pyserial URL of a board with edgebp deployed, "
                   "sim://micropython; the partitions left get a simulated board of --sim's "
                   "kind")
    f.add_argument("--sim", choices=("inprocess", "micropython"), default="inprocess",
                   help="the simulated boards: inprocess (the firmware in the client's "
                   "process, the default) or micropython (in a unix MicroPython process each, "
                   "about 3.5x faster: the sim extra)")
    f.add_argument("--min-clients", type=_count(1, 4096), default=0,
                   help="a round needs this many connected clients (default: all of them)")
    f.add_argument("--fault", action="append", type=_fault, default=[], metavar="P@R",
                   help="reset partition P's simulated board in the middle of round R "
                   "(repeatable): the round goes on without it, it rejoins the next")
    f.add_argument("--central", action="store_true",
                   help="with --val: also train one net on all the training samples (the "
                   "integer twin, as a board would) and show its accuracy after each round's "
                   "worth of epochs")
    f.add_argument("--workers", type=_count(1, 256),
                   help="clients that train at once (default: the CPUs, at most --clients)")
    f.add_argument("--verbose", action="store_true", help="show Flower's and Ray's log")
    o = parser.add_argument_group("output")
    o.add_argument("--out", "-o", metavar="NET.ebp", help="write the final global net")
    o.add_argument("--curves", metavar="FILE.csv", help="the per-round table as CSV")
    o.add_argument("--plot", metavar="FILE.png", help="plot held-out loss and accuracy per "
                   "round (needs matplotlib: the plot extra)")
    del g


def argparse_runtimes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--install-wasm",
        action="store_true",
        help="install the pinned WebAssembly MicroPython (npm) into the user cache",
    )


Handler = Callable[[State, argparse.Namespace], int]
Configure = Callable[[argparse.ArgumentParser], None]

# name: (handler, argument set-up, one-line help). Add commands here.
COMMANDS: dict[str, tuple[Handler, Configure, str]] = {
    "init": (do_init, argparse_init, "write a net spec (JSON)"),
    "quantize": (do_quantize, argparse_quantize,
                 "quantise a spec's float weights into a net file (.ebp), proving its ranges"),
    "train": (do_train, argparse_train,
              "train on a board (default: the simulated one; no arguments: XOR)"),
    "eval": (do_eval, argparse_eval,
             "loss and accuracy (for a regression: RMSE and R^2) of a net on a board"),
    "check": (do_check, argparse_check,
              "validate a board's integer gradients against the float64 reference"),
    "pull": (do_pull, argparse_pull, "read the weights of the net a board holds"),
    "deploy": (do_deploy, argparse_deploy,
               "compile edgebp for a board's MicroPython and copy it there, verified"),
    "flash": (do_flash, argparse_flash,
              "write a stock MicroPython image to a board (.uf2: rp2; .bin: esp32, esp8266), "
              "then deploy edgebp"),
    "plan": (do_plan, argparse_plan,
             "the RAM a net's training takes on a board, and whether it fits"),
    "bench": (do_bench, argparse_bench,
              "training speed, allocation, RAM and link efficiency per runtime"),
    "data": (do_data, argparse_data,
             "keep training data on a board's flash (push, list), for train --on-board"),
    "sim": (do_sim, argparse_sim, "serve a simulated board until Ctrl-C; prints its port"),
    "fleet": (do_fleet, argparse_fleet,
              "federated training on Flower: one client per board, exact averaging of "
              "their int16 weights"),
    "runtimes": (do_runtimes, argparse_runtimes, "list the MicroPython runtimes for device tests"),
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgebp",
        description="Train neural networks on microcontrollers in fixed-point MicroPython.",
    )
    parser.add_argument("--version", action="version", version=f"edgebp {edgebp.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, configure, help_text) in COMMANDS.items():
        configure(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handler = COMMANDS[args.command][0]
    state = State()
    try:
        return handler(state, args)
    except (UserError, FlashError) as e:
        print(f"edgebp: {e}", file=sys.stderr)
        return 2
    except (SessionError, BoardError) as e:
        print(f"edgebp: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edgebp: interrupted", file=sys.stderr)
        if not getattr(args, "keep", False):
            state.release()
        return 130
    except BrokenPipeError:
        # stdout went away (`edgebp ... | head`): quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        state.close()


if __name__ == "__main__":
    sys.exit(main())
