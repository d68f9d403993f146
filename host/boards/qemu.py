"""Emulated microcontrollers: MicroPython boards under qemu, reached over a pty like USB.

The boards come from a directory named by $EDGEBP_QEMU_BOARDS holding the launcher
`qemu-board` (with the firmware images beside it): `cortex-m3` (armv7m, soft float) and `rv32`
(rv32imc). Each has a littlefs flash in a file that survives a kill of qemu, which is how a
power cut is made: `kill()` then `boot()` on the same flash. With `icount=True` qemu counts
instructions (`-icount shift=0`), and the board's `time.ticks_us()` advances by one per 1000
guest instructions: a deterministic cost measure.

An idle board keeps a host core busy (its REPL polls the UART), so start one where it is
needed and stop it when done.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

ENV = "EDGEBP_QEMU_BOARDS"
KINDS = ("cortex-m3", "rv32")
LAUNCHER = "qemu-board"
# what each board's qemu binary is called, for the reason a board cannot start
QEMU = {"cortex-m3": "qemu-system-arm", "rv32": "qemu-system-riscv32"}


class QemuError(Exception):
    """An emulated board would not start or answer."""


def launcher() -> Path | None:
    d = os.environ.get(ENV)
    if not d:
        return None
    path = Path(d) / LAUNCHER
    return path if os.access(path, os.X_OK) else None


def find(kind: str) -> str | None:
    """None if emulated board `kind` can start here, else a one-line reason why not."""
    if kind not in KINDS:
        raise ValueError(f"unknown emulated board {kind!r}, expected one of {KINDS}")
    if not os.environ.get(ENV):
        return f"${ENV} is not set (a directory holding the {LAUNCHER} launcher)"
    if launcher() is None:
        return f"${ENV}={os.environ[ENV]} holds no executable {LAUNCHER}"
    from shutil import which

    if which(QEMU[kind]) is None:
        return f"{QEMU[kind]} is not installed"
    return None


class QemuBoard:
    """One emulated board: `boot()` powers it on, `kill()` cuts the power (the flash stays),
    `close()` stops it and deletes a flash file it made itself."""

    def __init__(self, kind: str, *, icount: bool = False, flash: str | Path | None = None):
        reason = find(kind)
        if reason is not None:
            raise QemuError(f"{kind}: {reason}")
        self.kind = kind
        self.icount = icount
        self._own_flash = flash is None
        if flash is None:
            fd, name = tempfile.mkstemp(prefix=f"edgebp-{kind}-", suffix=".flash")
            os.close(fd)
            os.unlink(name)  # the launcher creates it (sparse) on first boot
            flash = name
        self.flash = Path(flash)
        self.port = ""
        self.pid = 0

    def __enter__(self) -> QemuBoard:
        return self.boot()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def running(self) -> bool:
        if not self.pid:
            return False
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a killed qemu not yet reaped

    def boot(self, timeout: float = 30, prompt: bool = True) -> QemuBoard:
        """Power the board on (on its flash) and wait for its REPL prompt; with prompt=False
        leave it alone, running its main.py with no host attached (the pty unread: what the
        board prints is lost)."""
        if self.running:
            raise QemuError(f"{self.kind} is already running (pid {self.pid})")
        cmd = [str(launcher()), "start", self.kind, "--flash", str(self.flash)]
        if self.icount:
            cmd.append("--icount")
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        words = done.stdout.split()
        if done.returncode != 0 or len(words) < 2:
            raise QemuError(f"{self.kind} did not start (exit {done.returncode}): "
                            f"{(done.stderr or done.stdout).strip()}")
        self.port, self.pid = words[0], int(words[1])
        self._watch()
        if prompt:
            self._wait_for_prompt(timeout)
        return self

    def _watch(self) -> None:
        # qemu outlives the process that started it (the launcher detaches it): a watchdog
        # stops it once this process is gone, however it ended
        script = (f"while kill -0 {os.getpid()} 2>/dev/null && kill -0 {self.pid} 2>/dev/null;"
                  f" do sleep 1; done; kill -9 {self.pid} 2>/dev/null")
        subprocess.Popen(["sh", "-c", script], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)

    def _wait_for_prompt(self, timeout: float) -> None:
        # The board answers once it has mounted its flash: ask for the raw REPL (Ctrl-C,
        # Ctrl-A, as mpremote does) until it does, then leave it at the friendly prompt.
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport

        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not self.running:
                raise QemuError(f"{self.kind}: qemu exited while booting")
            try:
                t = SerialTransport(self.port, baudrate=115200)
            except TransportError as e:
                last = str(e)
                time.sleep(0.2)
                continue
            try:
                t.enter_raw_repl(soft_reset=False, timeout_overall=5)
                t.exit_raw_repl()
                return
            except (TransportError, OSError) as e:
                last = str(e)
            finally:
                t.close()
        raise QemuError(f"{self.kind}: no REPL within {timeout:g} s on {self.port} ({last})")

    def kill(self) -> None:
        """Cut the power: qemu dies at once, the flash file keeps what was written."""
        if self.running:
            os.kill(self.pid, signal.SIGKILL)
            for _ in range(100):
                if not self.running:
                    break
                time.sleep(0.02)
        self.pid = 0
        self.port = ""

    def close(self) -> None:
        self.kill()
        if self._own_flash:
            self.flash.unlink(missing_ok=True)
            _written.pop(str(self.flash), None)


_shared: dict[str, QemuBoard] = {}
# Per kind, for the life of this process: the flash of the shared board and what the runner
# wrote there (path -> sha256), so that a board stopped and started again keeps its files.
_flashes: dict[str, Path] = {}
_written: dict[str, dict[str, str]] = {}


def shared(kind: str) -> QemuBoard:
    """The running board of `kind` that callers share (started on first use, on the same
    flash each time)."""
    board = _shared.get(kind)
    if board is not None and board.running:
        return board
    if board is not None:
        board.kill()
    if kind not in _flashes:
        fd, name = tempfile.mkstemp(prefix=f"edgebp-{kind}-", suffix=".flash")
        os.close(fd)
        os.unlink(name)
        _flashes[kind] = Path(name)
        atexit.register(_flashes[kind].unlink, missing_ok=True)
    board = _shared[kind] = QemuBoard(kind, flash=_flashes[kind])
    try:
        board.boot()
    except QemuError:
        forget(kind)
        raise
    return board


def forget(kind: str) -> None:
    """Stop the shared board of `kind` and wipe its flash: the next one starts blank."""
    board = _shared.pop(kind, None)
    if board is not None:
        board.kill()
    flash = _flashes.pop(kind, None)
    if flash is not None:
        flash.unlink(missing_ok=True)
        _written.pop(str(flash), None)


def stop_shared() -> None:
    """Stop every shared board (each keeps a host core busy while it runs); their flash
    stays for the next start."""
    for board in _shared.values():
        board.kill()
    _shared.clear()


# -- running device-side code on a board, for host/boards/mprun.py --

# The script runs as a module (compiled for the board, so big scripts need no RAM to
# compile); its exit status comes back after a marker, since SystemExit in the raw REPL
# would soft-reset the board instead. A board has one output stream: stderr is stdout.
_MAIN = "_edgebp_main"
_EXIT = "\x1eEDGEBP-EXIT "
_WRAPPER = f"""
import sys
try:
    import {_MAIN}
    _c = 0
except SystemExit as e:
    _c = e.args[0] if e.args else 0
    _c = 0 if _c is None else _c if isinstance(_c, int) else 1
except BaseException as e:
    sys.print_exception(e)
    _c = 1
print({_EXIT!r} + str(_c))
"""
# the board's .mpy architecture (sys.implementation._mpy) for mpy-cross
MARCH = {"cortex-m3": "armv7em", "rv32": "rv32imc"}


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _compiled(rel: str, content: str | bytes, arch: str) -> tuple[str, bytes]:
    """(path on the board, bytes): a .py compiled to .mpy for `arch`, anything else as is."""
    data = content if isinstance(content, bytes) else content.encode("utf-8")
    if not rel.endswith(".py") or isinstance(content, bytes):
        return rel, data
    from edgebp.host.boards.board import compile_mpy

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, Path(rel).name)
        src.write_bytes(data)
        return rel[:-3] + ".mpy", compile_mpy(src, rel, arch)


def run_script(kind: str, script: str, files: Mapping[str, str | bytes], timeout: float,
               stream=None):
    """Run `script` on the shared board of `kind` after a soft reset, with `files` on its
    filesystem (compiled to .mpy; unchanged ones are not sent again). Returns
    (returncode, stdout, timed_out)."""
    return run_on(shared(kind), script, files, timeout, stream)


def run_on(board: QemuBoard, script: str, files: Mapping[str, str | bytes], timeout: float,
           stream=None):
    """run_script on a board of the caller's (one started with icount=True, say)."""
    from mpremote.transport import TransportError

    from edgebp.host.boards.board import Board, BoardError

    kind = board.kind
    arch = MARCH[kind]
    written = _written.setdefault(str(board.flash), {})
    out: list[str] = []
    pending = [""]

    def consume(data: bytes) -> None:
        data = data.replace(b"\x04", b"")  # the raw REPL's end of output
        # the board ends lines with CR LF, and the bytes come one at a time
        text = pending[0] + data.replace(b"\r", b"").decode("utf-8", "replace")
        *lines, pending[0] = text.split("\n")
        for line in lines:
            out.append(line + "\n")
            shown = line.split(_EXIT)[0]
            if stream is None or (shown != line and not shown):
                continue
            if callable(stream):
                stream(shown)
            else:
                stream.write(shown + "\n")
                stream.flush()

    try:
        with Board(board.port) as b:
            b.t.enter_raw_repl(soft_reset=True)  # a fresh heap, no module left imported
            wrote = False
            for rel, content in {**files, f"{_MAIN}.py": script}.items():
                dest, data = _compiled(rel, content, arch)
                if written.get(dest) == _sha(data):
                    continue
                parts = dest.split("/")[:-1]
                for i in range(len(parts)):
                    b.mkdir("/".join(parts[: i + 1]))
                b.write(dest, data)
                written[dest] = _sha(data)
                wrote = True
            if wrote:
                # the transfers leave the heap in pieces (each chunk a Python bytes literal
                # compiled and dropped): the script starts on a fresh one, as after a reset
                b.t.enter_raw_repl(soft_reset=True)
            b.t.exec_raw_no_follow(_WRAPPER)
            b.t.serial.timeout = 0.1  # on a pty mpremote reads byte by byte: never block
            done = b.t.read_until(1, b"\x04", timeout=None, timeout_overall=timeout,
                                  data_consumer=consume)
            if not done.endswith(b"\x04"):
                raise TimeoutError
            b.t.read_until(1, b"\x04", timeout=5)  # the (empty) error part
    except TimeoutError:
        board.kill()  # a board that overran may hold its heap locked: power it off
        return 1, "".join(out) + pending[0], True
    except (BoardError, TransportError, OSError) as e:
        _written.pop(str(board.flash), None)  # what it holds is unknown now
        if _shared.get(kind) is board:
            forget(kind)
        else:
            board.kill()
        return 1, "".join(out) + pending[0] + f"\n{kind}: {e}\n", False
    text = "".join(out) + pending[0]
    code = 1
    if _EXIT in text:
        text, _, tail = text.rpartition(_EXIT)
        words = tail.split()
        code = int(words[0]) if words and words[0].lstrip("-").isdigit() else 1
    return code, text, False
