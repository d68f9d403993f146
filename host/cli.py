"""The `edgebp` command.

Commands come from one table, `COMMANDS = {"name": (do_name, argparse_name)}`: `argparse_name`
adds the command's arguments to its subparser, `do_name(state, args)` runs it. Handlers raise
`UserError` for anything the user can fix; only `main()` prints it, as one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import edgebp


class UserError(Exception):
    """A problem the user can fix: reported as `edgebp: message`, exit code 2, no traceback."""


class State:
    """What a command may open (a serial link, a simulated board); `main()` always closes it."""

    def __init__(self) -> None:
        self.link = None

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None


def argparse_runtimes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--install-wasm",
        action="store_true",
        help="install the pinned WebAssembly MicroPython (npm) into the user cache",
    )


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


Handler = Callable[[State, argparse.Namespace], int]
Configure = Callable[[argparse.ArgumentParser], None]

# name: (handler, argument set-up, one-line help). Add commands here.
COMMANDS: dict[str, tuple[Handler, Configure, str]] = {
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
    except UserError as e:
        print(f"edgebp: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgebp: interrupted", file=sys.stderr)
        return 130
    finally:
        state.close()


if __name__ == "__main__":
    sys.exit(main())
